"""The only Ray Train file: runs a plain-torch loop on a ``TorchTrainer`` with data shards from Ray Data.

``fit`` builds the trainer (workers, GPUs, failure restarts, checkpoint retention, storage) and ``RayContext``
gives the loop its shard, device, DDP wrapping, latest checkpoint and ``report``. Restarting a run with the same
``(storage_path, name)`` resumes from its latest checkpoint (Ray Train V2 has no ``resume_from_checkpoint``).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from dcgen.train.context import to_torch_batch


class RayContext:
    """``TrainContext`` on Ray Train: this worker's rank, device and dataset shards."""

    def __init__(self, shuffle_buffer: int = 32):
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        # Ray pins OMP_NUM_THREADS to the worker's (often fractional, so 1) CPU share; on CPU the loop is
        # compute-bound, so the workers of a node split its cores instead.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, ctx.get_local_world_size())))
        self._shuffle_buffer = shuffle_buffer
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


def _worker_entry(config: dict):
    module, func = config["loop"].split(":")
    loop = getattr(importlib.import_module(module), func)
    return loop(RayContext(), config["run"])


def fit(loop: str, run: dict, *, datasets: dict, storage_path: str, name: str, num_workers: int = 1,
        gpus_per_worker: float = 0.0, cpus_per_worker: float | None = None, max_failures: int = 2,
        num_to_keep: int = 2, unsplit: tuple[str, ...] = ()):
    """Run ``loop`` (``"module:function"``) on Ray Train and return the ``ray.train.Result``. Every worker reads the
    datasets named in ``unsplit`` whole; the others are sharded between the workers."""
    if num_workers < 1:
        raise ValueError(f"--workers must be at least 1, got {num_workers}")
    storage = storage_path if "://" in storage_path else os.path.abspath(storage_path)
    resources = {"CPU": cpus_per_worker if cpus_per_worker is not None else 1.0}
    if gpus_per_worker:
        resources["GPU"] = gpus_per_worker
    trainer = TorchTrainer(
        _worker_entry,
        train_loop_config={"loop": loop, "run": run},
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
    return trainer.fit()


def run_dir_has_checkpoints(storage_path: str, name: str) -> bool:
    root = Path(storage_path) / name
    return root.is_dir() and any(p.is_dir() for p in root.glob("**/checkpoint_*"))
