"""Session-wide fixtures: one embedded Ray on loopback for the whole test session, never one per test."""

from __future__ import annotations

import os

import pytest

from dcgen.runtime import LOCAL_RAY_ENV

for _k, _v in LOCAL_RAY_ENV.items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("TYPER_USE_RICH", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 4 logical CPUs (2-core CI deadlocks with 2 train workers + Ray Data at num_cpus=2)."""
    import ray

    from dcgen.runtime import init_ray

    init_ray(num_cpus=4, log_to_driver=False)
    yield ray
    ray.shutdown()
