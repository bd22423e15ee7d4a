"""The embedded local Ray that every command and test starts."""

from __future__ import annotations

import logging


def test_embedded_ray_workers_silence_the_train_cleaners_futile_warnings(ray_local):
    from dcgen.runtime import TRAIN_CLEANER_LOGGER

    def levels() -> tuple[int, int]:
        return logging.getLogger(TRAIN_CLEANER_LOGGER).getEffectiveLevel(), logging.getLogger("dcgen").level

    @ray_local.remote(num_cpus=0)
    class Probe:  # detached like Ray Train's PlacementGroupCleaner, so it must not lose the hook
        def levels(self):
            return levels()

    cleaner, ours = ray_local.get(ray_local.remote(num_cpus=0)(levels).remote())
    assert cleaner == logging.ERROR  # its State API queries cannot succeed without a dashboard
    assert ours != logging.ERROR  # nothing else is silenced
    probe = Probe.options(lifetime="detached").remote()
    try:
        assert ray_local.get(probe.levels.remote())[0] == logging.ERROR
    finally:
        ray_local.kill(probe)
