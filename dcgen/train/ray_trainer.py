"""The only Ray Train file: runs a plain-torch loop on a ``TorchTrainer`` with data shards from Ray Data.

``fit`` builds the trainer (workers, GPUs, failure restarts, checkpoint retention, storage) and ``RayContext``
gives the loop its shard, device, DDP wrapping, latest checkpoint, ``report`` and ``progress``. Restarting a run with
the same ``(storage_path, name)`` resumes from its latest checkpoint (Ray Train V2 has no ``resume_from_checkpoint``).

Progress: the workers' stdout reaches the driver only through Ray's log forwarding, prefixed per process and off
without ``--verbose``, so rank 0 posts its step and losses to a small actor (``ProgressBoard``) a few times a
second, and the driver, which owns the terminal, draws the run's one bar (``dcgen.progress``) from it.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from dcgen.train.context import to_torch_batch

POST_EVERY_S = 0.5  # how often rank 0 posts its progress: often enough for a live bar, cheap beside a step
POLL_EVERY_S = 0.5  # how often the driver reads it


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest progress rank 0 posted (step, total and the fields to show); the driver reads it."""

    def __init__(self):
        self.state: dict | None = None

    def post(self, state: dict) -> None:
        self.state = state

    def read(self) -> dict | None:
        return self.state


class RayContext:
    """``TrainContext`` on Ray Train: this worker's rank, device and dataset shards."""

    def __init__(self, shuffle_buffer: int = 32, board=None):
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        # Ray pins OMP_NUM_THREADS to the worker's (often fractional, so 1) CPU share; on CPU the loop is
        # compute-bound, so the workers of a node split its cores instead.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ctx.get_local_world_size())))
        self._shuffle_buffer = shuffle_buffer
        self._board = board if self.rank == 0 else None
        self._fields: dict = {}
        self._posted = float("-inf")
        self._latest: Path | None = None
        ckpt = ray.train.get_checkpoint()
        if ckpt is not None:
            # materialise once; the loop reads it as a local directory
            self._latest = Path(ckpt.to_directory(tempfile.mkdtemp(prefix="dcgen-resume-")))

    def batches(self, split: str, batch_size: int, epoch: int, shuffle: bool = False):
        shard = ray.train.get_dataset_shard(split)
        kwargs = {"local_shuffle_buffer_size": self._shuffle_buffer, "local_shuffle_seed": epoch} if shuffle else {}
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", **kwargs):
            yield to_torch_batch(batch, self.device)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    def latest_checkpoint(self) -> Path | None:
        return self._latest

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        # every rank reports (Ray Train synchronises on it); only rank 0 attaches the checkpoint
        ckpt = Checkpoint.from_directory(str(checkpoint_dir)) if (checkpoint_dir and self.rank == 0) else None
        ray.train.report(metrics, checkpoint=ckpt)

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1 and torch.distributed.is_initialized():
            t = t.clone()
            torch.distributed.all_reduce(t)
        return t

    def progress(self, step: int, total: int, **fields) -> None:
        if self._board is None:
            return
        self._fields.update(fields)  # a post skipped here is carried by the next one
        now = time.monotonic()
        if now - self._posted >= POST_EVERY_S or step >= total:
            self._board.post.remote({"step": step, "total": total, "fields": dict(self._fields)})  # no wait
            self._posted = now


def _worker_entry(config: dict):
    module, func = config["loop"].split(":")
    loop = getattr(importlib.import_module(module), func)
    return loop(RayContext(board=config.get("progress_board")), config["run"])


@contextmanager
def _progress_bar(board, name: str, total: int | None):
    """Draw ``board``'s progress on the driver while the block runs (a thread polls it), then close the bar."""
    from dcgen.progress import Progress

    bar = Progress(name, total=total)
    stop = threading.Event()

    def show() -> None:
        try:
            state = ray.get(board.read.remote(), timeout=10)
        except ray.exceptions.RayError:  # a busy machine (timeout), or Ray going down with a failed fit: the bar
            return                       # keeps its last state; the fit's own outcome is what the caller sees
        if state is None:  # workers, datasets and the first step still to come: say so, a hang shows here too
            bar.update(workers="starting")
        else:
            bar.update(state["step"], total=state["total"], workers=None, **state["fields"])

    def poll() -> None:
        while not stop.wait(POLL_EVERY_S):
            show()

    thread = threading.Thread(target=poll, name="dcgen-train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        show()
        bar.close()
        ray.kill(board)


def fit(loop: str, run: dict, *, datasets: dict, storage_path: str, name: str, num_workers: int = 1,
        gpus_per_worker: float = 0.0, cpus_per_worker: float | None = None, max_failures: int = 2,
        num_to_keep: int = 2, unsplit: tuple[str, ...] = (), progress: str | None = None,
        total_steps: int | None = None):
    """Run ``loop`` (``"module:function"``) on Ray Train and return the ``ray.train.Result``. Every worker reads the
    datasets named in ``unsplit`` whole; the others are sharded between the workers. With ``progress`` (the
    stage's name) the driver shows the loop's ``ctx.progress`` on stderr, out of ``total_steps`` until the loop
    says its own total."""
    if num_workers < 1:
        raise ValueError(f"--workers must be at least 1, got {num_workers}")
    storage = storage_path if "://" in storage_path else os.path.abspath(storage_path)
    resources = {"CPU": cpus_per_worker if cpus_per_worker is not None else 1.0}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    board = ProgressBoard.remote() if progress else None
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"loop": loop, "run": run, "progress_board": board},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
        ),
        datasets=datasets,
        dataset_config=(ray.train.DataConfig(datasets_to_split=[n for n in datasets if n not in unsplit])
                        if unsplit else None),
    )
    if board is None:
        return trainer.fit()
    with _progress_bar(board, progress, total_steps):
        return trainer.fit()


def run_dir_has_checkpoints(storage_path: str, name: str) -> bool:
    root = Path(storage_path) / name
    return root.is_dir() and any(p.is_dir() for p in root.glob("**/checkpoint_*"))
