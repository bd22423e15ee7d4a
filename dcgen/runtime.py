"""Process-level concerns shared by every command: seeds, devices, logging and the embedded local Ray.

Seeds follow one rule (STYLE): scene k of a job draws from a generator seeded by (job seed, k), so output never
depends on batch size, worker count or order. ``scene_seed`` is that derivation, used everywhere.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger("dcgen")


def scene_seed(job_seed: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of a job, independent of how items are batched."""
    ss = np.random.SeedSequence([int(job_seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFFFFFF])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def rng(job_seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(job_seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFFFFFF]))


def torch_generator(job_seed: int, index: int, device="cpu"):
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(scene_seed(job_seed, index))
    return g


def pick_device(requested: str | None = None):
    """``cuda`` when available unless told otherwise; an explicit request that cannot be met is an error."""
    import torch

    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} requested but CUDA is not available on this machine")
    return dev


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


LOCAL_RAY_ENV = {
    # Pins the embedded Ray to 127.0.0.1 (see PLATFORM-NOTES); never set when joining a real cluster.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Train's controller polls every 2 s by default, which makes each report cost ~1.8 s.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
}


# Ray Train starts a detached PlacementGroupCleaner per fit that asks the State API, served by the dashboard, every
# second whether the controller is alive. The embedded Ray runs without a dashboard (half the memory), so each ask
# fails and logs a warning: ~3,600 lines an hour drowning a run's progress. Its job, freeing the placement group of
# a controller that died, does not arise there: the embedded cluster dies with the driver.
TRAIN_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def quiet_embedded_worker() -> None:
    """``worker_process_setup_hook`` of the embedded Ray: run first in every worker process it starts."""
    logging.getLogger(TRAIN_CLEANER_LOGGER).setLevel(logging.ERROR)


def init_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True,
             quiet: bool = False):
    """Connect to ``address`` or start the embedded local Ray (loopback only). Idempotent.

    ``quiet`` keeps Ray's own chatter (worker log lines, Ray Data plans and progress, Train reports) out of the
    terminal; everything stays in the session's log files under ``/tmp/ray/session_latest/logs``.
    """
    if address is None:
        # Ray reads the loopback switch into a module constant when it is first imported; a command may have
        # imported Ray (through Ray Data, say) before this call, so the constant is set too, not only the
        # environment that the node's processes inherit.
        for k, v in LOCAL_RAY_ENV.items():
            os.environ.setdefault(k, v)
    import ray

    if quiet:
        log_to_driver = False
        for name in ("ray", "ray.data", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if ray.is_initialized():
        return ray
    level = {"logging_level": "WARNING"} if quiet else {}
    if address is None:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false")
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
                 runtime_env={"env_vars": {k: os.environ[k] for k in LOCAL_RAY_ENV},
                              "worker_process_setup_hook": f"{__name__}.quiet_embedded_worker"}, **level)
    else:
        ray.init(address=address, log_to_driver=log_to_driver, **level)
    if quiet:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # ray.init resets the library loggers
    return ray
