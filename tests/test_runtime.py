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


def test_ray_get_or_raise_gives_a_workers_value_error_its_own_message(ray_local):
    import pytest
    from ray.exceptions import RayTaskError

    from dcgen.runtime import WorkerError, error_summary, ray_get_or_raise, unwrap_ray_error

    @ray_local.remote(num_cpus=0)
    def check(value):
        if value < 0:
            raise ValueError(f"value {value}: expected >= 0")
        return {}[value]  # a KeyError: not the user's input, so not a ValueError

    @ray_local.remote(num_cpus=0)
    class Reader:
        def __init__(self, path):
            raise ValueError(f"{path}: not a scene store")  # Ray keeps only the traceback text of this one

        def read(self):
            return 1

    with pytest.raises(ValueError) as e:
        ray_get_or_raise(ray_local, check.remote(-1))
    assert str(e.value) == "value -1: expected >= 0" and not isinstance(e.value, RayTaskError)
    with pytest.raises(ValueError) as e:
        ray_get_or_raise(ray_local, Reader.remote("/data/x.zarr").read.remote())
    assert str(e.value) == "/data/x.zarr: not a scene store"
    with pytest.raises(RayTaskError) as e:  # anything else propagates as Ray raised it
        ray_get_or_raise(ray_local, check.remote(3))
    root = unwrap_ray_error(e.value)
    assert isinstance(root, KeyError) and error_summary(root) == "KeyError: 3"
    assert error_summary(WorkerError("zarr.errors.GroupNotFoundError", "no group\nat /x")) == \
        "zarr.errors.GroupNotFoundError: no group"


def test_quiet_mutes_only_rays_console_handlers_and_verbose_lets_them_through():
    """Without --verbose Ray's own log lines stay off the terminal (Ray Data's ERROR tracebacks included, printed
    before the one-line error dcgen gives), while Ray Data's log files keep every record."""
    import ray.data  # noqa: F401 (importing Ray Data installs its console and file handlers)

    from dcgen.runtime import _MUTED, mute_ray_console

    handlers = [h for name in ("ray", "ray.data") for h in logging.getLogger(name).handlers]
    consoles = [h for h in handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    files = [h for h in handlers if h not in consoles]
    assert consoles and files
    record = logging.LogRecord("ray.data", logging.ERROR, __file__, 1, "Exception raised in a UDF", None, None)
    was_muted = {h: _MUTED in h.filters for h in consoles}
    try:
        mute_ray_console(True)
        assert not any(h.filter(record) for h in consoles)
        assert all(h.filter(record) for h in files)
        mute_ray_console(False)
        assert all(h.filter(record) for h in consoles)
    finally:  # the session's Ray keeps the state it was started with
        for h, muted in was_muted.items():
            (h.addFilter if muted else h.removeFilter)(_MUTED)
