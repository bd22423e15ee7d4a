"""Process-level concerns shared by every command: seeds, devices, logging, the embedded local Ray, and the errors
raised inside Ray workers brought back to the driver as the user's own exceptions.

Seeds follow one rule (STYLE): scene k of a job draws from a generator seeded by (job seed, k), so output never
depends on batch size, worker count or order. ``scene_seed`` is that derivation, used everywhere.
"""

from __future__ import annotations

import logging
import os
import re
import sys

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


VERBOSE_ENV = "DCGEN_VERBOSE"  # set by ``dcgen --verbose``: every command shows Ray's own log lines


def verbose_requested() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _Muted(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


_MUTED = _Muted()


def mute_ray_console(muted: bool = True) -> None:
    """Keep Ray's own log lines (the driver's ``ray`` and ``ray.data`` loggers: INFO banners, warnings, Ray Data's
    ERROR tracebacks printed before the exception that dcgen turns into a one-line error) off the terminal, or let
    them through again. Only console handlers are muted: Ray Data's log files under the session directory
    (``/tmp/ray/session_latest/logs``) keep every record."""
    names = ["ray", *(n for n in logging.root.manager.loggerDict if n.startswith("ray."))]
    for name in names:
        for handler in logging.getLogger(name).handlers:
            if not isinstance(handler, logging.StreamHandler) or isinstance(handler, logging.FileHandler):
                continue
            if muted:
                handler.addFilter(_MUTED)  # a no-op when already there
            else:
                handler.removeFilter(_MUTED)


def init_ray(address: str | None = None, num_cpus: int | None = None, log_to_driver: bool = True,
             quiet: bool | None = None):
    """Connect to ``address`` or start the embedded local Ray (loopback only). Idempotent.

    ``quiet`` (default: as chosen when Ray was started here, else unless ``dcgen --verbose`` set ``DCGEN_VERBOSE``)
    keeps Ray's own chatter (worker log lines, Ray Data plans, Train reports, the driver's Ray log lines) out of the
    terminal; everything stays in the session's log files under ``/tmp/ray/session_latest/logs``. Ray Data's
    progress bars are off either way: each stage draws its own (``dcgen.progress``), one bar per stage rather than
    one per Ray Data operator.
    """
    if address is None:
        # Ray reads the loopback switch into a module constant when it is first imported; a command may have
        # imported Ray (through Ray Data, say) before this call, so the constant is set too, not only the
        # environment that the node's processes inherit.
        for k, v in LOCAL_RAY_ENV.items():
            os.environ.setdefault(k, v)
    import ray

    if quiet is None:
        if ray.is_initialized():  # keep what the call that started Ray chose (the quickstart's --verbose, say)
            return ray
        quiet = not verbose_requested()
    mute_ray_console(quiet)  # before ray.init, whose own warnings (token authentication) come first
    if not ray.is_initialized():
        if quiet:
            log_to_driver = False
        if address is None:
            from ray._private import ray_constants

            ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false")
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
                     runtime_env={"env_vars": {k: os.environ[k] for k in LOCAL_RAY_ENV},
                                  "worker_process_setup_hook": f"{__name__}.quiet_embedded_worker"})
        else:
            ray.init(address=address, log_to_driver=log_to_driver)
    from ray.data import DataContext  # importing Ray Data configures its loggers: mute them after

    DataContext.get_current().enable_progress_bars = False
    mute_ray_console(quiet)
    return ray


# ---- errors raised inside Ray tasks, actors and Serve replicas ---------------------------------------------------
# A worker's ValueError names the bad input (STYLE), but Ray hands the driver a wrapper: RayTaskError(ValueError)
# whose str() is the worker's whole traceback, or, where Ray pickles only text, no exception object at all: an actor
# whose constructor raised becomes an ActorDiedError whose message holds the constructor's traceback, Ray Data wraps
# a UDF's exception in a UserCodeException (and pickling drops its __cause__), and Serve reports a replica that
# failed to start as "Failed to update the deployments", the traceback left in the deployment's status message.

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# an exception line of a formatted traceback: a (dotted) class name at column 0, then ": message" or nothing
_EXCEPTION_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Z]\w*)(?:: (.*))?$")
# what may precede an exception line: a frame or source line (indented), the banner, or a line holding Ray's
# "ray::task()" header (an ActorDiedError opens with "The actor died because of an error raised in ..., ray::A()")
_BEFORE_EXCEPTION = (" ", "\t", "Traceback (most recent call last):")


class WorkerError(RuntimeError):
    """An exception a Ray worker raised whose type the driver cannot rebuild: its type name and message."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message


def exception_from_traceback(text: str) -> BaseException | None:
    """The exception a worker raised, from the formatted traceback Ray passed on as text (``None`` if none is found).

    That is the last exception of the chain that is not one of Ray's wrappers (``ray.*``): Python prints the raised
    exception after the ones that caused it. Its message is the first line only (Ray Data appends notes to it). A
    ValueError (or a subclass the driver knows) comes back as ValueError, anything else as ``WorkerError``.
    """
    lines = _ANSI.sub("", text).splitlines()
    found = None
    for prev, line in zip(lines, lines[1:]):
        m = _EXCEPTION_LINE.match(line)
        if m and (prev.startswith(_BEFORE_EXCEPTION) or "ray::" in prev) and not m.group(1).startswith("ray."):
            found = m
    if found is None:
        return None
    type_name, message = found.group(1), (found.group(2) or "").strip()
    module, _, name = type_name.rpartition(".")
    cls = getattr(sys.modules.get(module or "builtins"), name, None)  # only modules loaded here: no import
    if isinstance(cls, type) and issubclass(cls, ValueError):
        return ValueError(message)
    return WorkerError(type_name, message)


def unwrap_ray_error(e: BaseException) -> BaseException:
    """The exception user code raised behind Ray's wrappers (``RayTaskError``, an ``ActorDiedError`` of a failed
    constructor, Ray Data's ``UserCodeException``); ``e`` itself when it is no such wrapper or holds nothing better."""
    from ray.exceptions import RayActorError, RayError, RayTaskError, UserCodeException

    for _ in range(16):  # wrappers nest a few deep at most; the bound only guards against a cycle
        if isinstance(e, RayTaskError):
            cause = e.cause
            if isinstance(cause, UserCodeException) or type(cause) is RayError:  # the original survives as text
                return exception_from_traceback(str(e)) or e
            if not isinstance(cause, BaseException):
                return e
            e = cause
        elif isinstance(e, RayActorError):
            return (exception_from_traceback(str(e)) if e.actor_init_failed else None) or e
        elif not isinstance(e, RayError) and isinstance(e.__cause__, (RayTaskError, RayActorError)):
            e = e.__cause__
        else:
            return e
    return e


def error_summary(e: BaseException) -> str:
    """``"Type: first line of the message"`` of an exception (a ``WorkerError`` gives the worker's type)."""
    type_name = getattr(e, "type_name", type(e).__name__)
    text = str(getattr(e, "message", e)).strip()
    return f"{type_name}: {text.splitlines()[0]}" if text else type_name


def ray_get_or_raise(ray, refs):
    """``ray.get`` that re-raises a task's or actor's ValueError as itself (its message names the bad input) rather
    than as Ray's wrapper, whose message is the worker's traceback; any other failure propagates unchanged."""
    try:
        return ray.get(refs)
    except Exception as e:  # Ray raises RayTaskError subclasses, RayActorError, ...
        root = unwrap_ray_error(e)
        if isinstance(root, ValueError) and root is not e:
            raise root.with_traceback(None) from None
        raise


def run_tasks(fn, args: list[tuple], *, limit: int, num_cpus: float | None = None,
              on_done=None, address: str | None = None) -> list:
    """Run ``fn(*a)`` for every ``a`` in ``args`` as Ray tasks, at most ``limit`` in flight, in order of ``args``;
    results in that order. ``on_done(result)`` is called as each finishes. A task's ValueError is re-raised as
    itself once the tasks already running have finished (their work is valid); any other error cancels them.

    The one bounded-task loop of the project (synthetic city, importers): Ray stays in this file.
    """
    ray = init_ray(address)
    task = ray.remote(fn) if num_cpus is None else ray.remote(num_cpus=num_cpus)(fn)
    todo = list(enumerate(args))
    results: list = [None] * len(args)
    pending: dict = {}
    try:
        while todo or pending:
            while todo and len(pending) < max(1, limit):
                i, a = todo.pop(0)
                pending[task.remote(*a)] = i
            ready, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ready[0])
            results[i] = ray_get_or_raise(ray, ready[0])
            if on_done is not None:
                on_done(results[i])
    except ValueError:
        if pending:
            ray.wait(list(pending), num_returns=len(pending))
        raise
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    return results


def cluster_cpus(address: str | None = None) -> int:
    """Logical CPUs of the connected (or embedded) Ray cluster, at least 1."""
    return max(1, int(init_ray(address).cluster_resources().get("CPU", 1)))
