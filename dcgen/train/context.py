"""What a training loop may ask of the machinery around it, without knowing whether Ray is there.

Loops (``vae_loop``, ``dit_loop``, ``features_loop``) are plain PyTorch and talk only to a ``TrainContext``: batches
of their data shard, the device, model preparation (DDP when several workers), the latest checkpoint to resume from,
``report`` (per epoch) and ``progress`` (per step: what the user watches; the context decides where it shows).
``ray_trainer.RayContext`` implements it on Ray Train; ``LocalContext`` here runs a loop in-process on a scene store
(benchmarks, unit tests, a laptop without Ray).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch


class TrainContext(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def batches(self, split: str, batch_size: int, epoch: int, shuffle: bool) -> Iterator[dict[str, torch.Tensor]]:
        ...

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        ...

    def latest_checkpoint(self) -> Path | None:
        ...

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        ...

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        ...

    def progress(self, step: int, total: int, **fields) -> None:
        ...


@functools.cache
def cpu_runs_bf16() -> bool:
    """Whether this CPU has bf16 kernels (oneDNN's own test: AVX-512 or AMX on x86). Without them bf16 autocast is
    emulated element by element: a small-preset VAE step took 96 s on an AVX2-only CPU, 3.8 s in float32."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def check_cpu_bf16() -> None:
    """Refuse CPU bf16 autocast on a CPU without bf16 kernels, where it would run ~25× slower than float32."""
    if not cpu_runs_bf16():
        raise ValueError(f"--cpu-bf16: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 kernels "
                         "(expected AVX-512 or AMX), so bf16 autocast would run ~25× slower than float32; "
                         "leave --cpu-bf16 out here")


def autocast(device: torch.device, amp: bool, cpu_bf16: bool = False):
    """The training loops' mixed precision: bf16 autocast on CUDA when ``amp``, on CPU only when ``cpu_bf16`` (and
    only on a CPU with bf16 kernels: ``check_cpu_bf16``)."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu_bf16 and device.type == "cpu":
        check_cpu_bf16()
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16 and device.type == "cpu")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(model, "module", model)


def to_torch_batch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype == np.uint8 and k not in ("mask",):
            t = torch.from_numpy(v.astype(np.int64))
        else:  # Ray Data hands out read-only views of its Arrow blocks; torch wants memory it may write
            t = torch.from_numpy(np.ascontiguousarray(v) if v.flags.writeable else v.copy())
        out[k] = t.to(device, non_blocking=True)
    return out


class LocalContext:
    """A single-process context over in-memory or store-backed batches; checkpoints go to ``out_dir/ckpt-*``;
    ``progress`` goes to the given ``dcgen.progress.Progress`` (none by default), which its owner closes."""

    rank = 0
    world_size = 1

    def __init__(self, splits: dict[str, Callable[[], Iterator[dict[str, np.ndarray]]]] | None = None,
                 out_dir: str | Path | None = None, device: torch.device | str = "cpu",
                 store_path: str | None = None, arrays: tuple[str, ...] | None = None, seed: int = 0,
                 progress=None):
        self.device = torch.device(device)
        self._progress = progress
        self.out_dir = Path(out_dir) if out_dir else None
        self._splits = splits or {}
        self._store_path = store_path
        self._arrays = arrays
        self._seed = seed
        self.reports: list[dict] = []

    def batches(self, split: str, batch_size: int, epoch: int, shuffle: bool = False):
        if split in self._splits:
            for b in self._splits[split]():
                yield to_torch_batch(b, self.device)
            return
        if self._store_path is None:
            raise ValueError(f"no data for split {split!r}")
        from dcgen.data.store import SceneStore

        store = SceneStore.open(self._store_path)
        idx = store.indices(split)
        if shuffle:
            idx = np.random.default_rng([self._seed, epoch]).permutation(idx)
        for a in range(0, idx.size, batch_size):
            yield to_torch_batch(store.read(np.sort(idx[a:a + batch_size]), self._arrays), self.device)

    def prepare(self, model):
        return model.to(self.device)

    def latest_checkpoint(self):
        if self.out_dir is None:
            return None
        ckpts = sorted(self.out_dir.glob("ckpt-*"), key=lambda p: int(p.name.split("-")[1]))
        return ckpts[-1] if ckpts else None

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir is not None and self.out_dir is not None:
            import shutil

            dest = self.out_dir / f"ckpt-{int(metrics.get('step', len(self.reports))):09d}"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(checkpoint_dir, dest)

    def all_reduce(self, t):
        return t

    def progress(self, step: int, total: int, **fields) -> None:
        if self._progress is not None:
            self._progress.update(step, total=total, **fields)


class MetricsLog:
    """Appends metric rows to ``metrics.jsonl`` and TensorBoard under a run directory (rank 0 only). On a URI the
    files are kept in a local staging directory and copied whole to the run directory after every epoch's row
    (the one with validation numbers), not after every step's."""

    def __init__(self, run_dir: str | Path | None, enabled: bool = True):
        from dcgen import storage

        self.enabled = enabled and run_dir is not None
        self._tb = None
        self.remote = str(run_dir) if self.enabled and storage.is_uri(run_dir) else None
        if self.enabled:
            if self.remote is None:
                self.dir = Path(run_dir)
                self.dir.mkdir(parents=True, exist_ok=True)
            else:
                import tempfile

                self.dir = Path(tempfile.mkdtemp(prefix="dcgen-metrics-"))
                remote_rows = storage.join(self.remote, "metrics.jsonl")
                if storage.exists(remote_rows):  # a resumed run keeps the rows written before
                    (self.dir / "metrics.jsonl").write_text(storage.read_text(remote_rows))

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:  # tensorboard is an install dependency; stay usable without it
                self._tb = False
        if self._tb:
            step = int(row.get("step", 0))
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()
        if self.remote is not None and any(k.startswith("val_") for k in row):
            from dcgen import storage

            storage.write_text(storage.join(self.remote, "metrics.jsonl"), (self.dir / "metrics.jsonl").read_text())
            if (self.dir / "tensorboard").is_dir():
                storage.upload_dir(self.dir / "tensorboard", storage.join(self.remote, "tensorboard"))
