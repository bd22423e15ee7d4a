"""Session-wide fixtures: one embedded Ray on loopback for the whole test session, never one per test."""

from __future__ import annotations

import os

import pytest

from dcgen.runtime import LOCAL_RAY_ENV

for _k, _v in LOCAL_RAY_ENV.items():
    os.environ.setdefault(_k, _v)
os.environ.setdefault("TYPER_USE_RICH", "0")


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: threads only slow debug-size models, and on a busy 2-core machine OpenMP threads
    spinning at their barriers made the VAE overfit test 6x slower (95 s against 16 s, measured under pytest).
    A module takes it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray with 4 logical CPUs (2-core CI deadlocks with 2 train workers + Ray Data at num_cpus=2)."""
    import ray

    from dcgen.runtime import init_ray

    init_ray(num_cpus=4, log_to_driver=False)
    yield ray
    ray.shutdown()


# ---- debug scene store, VAE, latents and DiT (shared by the encode, DiT-loop and pipeline tests) ---------------

from debug_models import train_debug_dit, train_debug_vae, write_city_store  # noqa: E402


@pytest.fixture(scope="session")
def debug_city(tmp_path_factory):
    """16 scenes x 2 consecutive clips of the debug grid (26 train clips, 6 val)."""
    return write_city_store(tmp_path_factory.mktemp("city") / "city.zarr", num_scenes=16)


@pytest.fixture(scope="session")
def debug_vae(tmp_path_factory, debug_city):
    """A debug VAE trained one epoch (a few steps) on ``debug_city``: its best checkpoint directory."""
    return train_debug_vae(debug_city, tmp_path_factory.mktemp("vae-run"))


@pytest.fixture(scope="session")
def debug_latents(tmp_path_factory, ray_local, debug_city, debug_vae):
    """``debug_city`` encoded with ``debug_vae`` by ``dcgen.train.encode`` on the local Ray."""
    from dcgen.train.encode import encode_store

    out = tmp_path_factory.mktemp("latents") / "latents.zarr"
    encode_store(debug_vae, debug_city, str(out), batch_size=4)
    return str(out)


@pytest.fixture(scope="session")
def debug_dit(tmp_path_factory, debug_latents):
    """A debug DiT with every condition, trained a few epochs on ``debug_latents``: its best checkpoint."""
    return train_debug_dit(debug_latents, tmp_path_factory.mktemp("dit-run"),
                           ("command", "trajectory", "layout", "bev", "prev_clip"), epochs=3)


@pytest.fixture(scope="session")
def debug_features(tmp_path_factory, debug_city):
    """Tiny metric feature networks (32-px renders; 64-D 2D and 12-D 3D features, narrow enough that a half of
    ``debug_city`` has more samples than features) trained two steps on ``debug_city``: their best checkpoint."""
    from dataclasses import asdict

    import torch

    from dcgen.data.grid import GRIDS
    from dcgen.metrics.feature_nets import FeatureNetsConfig
    from dcgen.metrics.proxy_task import ProxyTask
    from dcgen.train.context import LocalContext
    from dcgen.train.features_loop import FeaturesTrainConfig, train_features

    out = tmp_path_factory.mktemp("features-run")
    cfg = FeatureNetsConfig.for_grid(GRIDS["debug"], ProxyTask(), render_size=32, image={"width": 2, "groups": 2},
                                     voxel={"widths": (2, 4), "bottleneck_dim": 4, "groups": 2})
    run = FeaturesTrainConfig(nets=cfg.to_dict(), steps_per_epoch=2, epochs=1, batch_size=4, seed=0,
                              report_every=100, out_dir=str(out))
    torch.manual_seed(0)
    train_features(LocalContext(out_dir=out, store_path=debug_city, arrays=("occupancy", "command"), seed=0),
                   asdict(run))
    return str(out / "best")
