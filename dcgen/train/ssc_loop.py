"""The downstream benchmark's training loop: semantic scene completion from one LiDAR sweep (CarlaSC's task), plain
PyTorch against a ``TrainContext``, for a whole sweep of small runs.

A run trains a fresh ``SSCNet`` on a list of clips (real, flip/rotate-augmented real, generated, or any mix) for a
fixed number of optimizer steps at a fixed batch size, then scores it on the held-out real clips. A mixed run (real
clips plus added ones: augmented copies or generated clips) draws every sample uniformly from all its frames, or, with
``added_share`` s, a fixed share s of every batch from the added clips' frames (``MixedBatchOrder``). Every frame of
every clip is a sample: the input is the voxels a roof LiDAR hits in that frame (``data.lidar_input``, the same
function for every source), the target the frame's full semantic grid. The loss is class-weighted cross-entropy on
every voxel (weights ``(max_k p_k / p_c)^(1/3)`` from the run's own training targets as its batches draw them, as
the VAE's); LMSCNet trains
with Adam at 1e-3; here AdamW with a short warm-up and a cosine decay, both closed-form in (step, steps). The score
is the confusion matrix on the evaluation clips, once inside the store's observed mask (SPEC §1: unobserved voxels
are excluded from mIoU) and once over every voxel.

Runs are small and independent, so workers split the sweep's runs between them instead of the batches of one run,
and one Ray Train fit runs the whole sweep: a fit costs ~5-20 s to start on a 2-core machine, more than a debug
run's training. Every worker reads the evaluation split whole (an unsplit Ray Dataset) and the training clips of
its runs through ``SceneDataset``. A run's numbers depend only on its spec and seed: the network is initialised
under ``torch.manual_seed(seed)`` in a forked RNG state and batches come from the run's own generator, so neither
the worker, the order of runs nor the other runs change them (bitwise on one machine at one thread count). Each
finished run's result is written to ``OUT/runs/<run_id>.json``; a restarted sweep skips the runs already there.
Legend: N samples (clip frames), B batch, T time, X/Y/Z space, K classes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dcgen import storage
from dcgen.data.grid import Grid
from dcgen.data.lidar_input import lidar_hits
from dcgen.data.synth_lidar import LidarConfig
from dcgen.runtime import scene_seed
from dcgen.train.context import TrainContext
from dcgen.train.features_loop import lr_factor

RUNS_DIR = "runs"


def num_transforms(size: tuple[int, ...]) -> int:
    """Symmetries of the grid's XY square (4 for a rectangle: identity, two mirrors, half turn; 8 for a square)."""
    return 8 if size[0] == size[1] else 4


def augment(occ_TXYZ: np.ndarray, k: int) -> np.ndarray:
    """Clip ``occ_TXYZ`` under symmetry ``k`` of the XY plane around the ego (0 identity, 1 mirror Y, 2 mirror X,
    3 half turn, 4 and 7 the two diagonal mirrors, 5 and 6 the quarter turns; 4-7 need a square grid)."""
    if not 0 <= k < num_transforms(occ_TXYZ.shape[1:]):
        raise ValueError(f"transform {k} for a {occ_TXYZ.shape[1]}x{occ_TXYZ.shape[2]} grid, expected 0.."
                         f"{num_transforms(occ_TXYZ.shape[1:]) - 1}")
    if k >= 4:
        occ_TXYZ = np.swapaxes(occ_TXYZ, 1, 2)  # a diagonal mirror, then one of the four below
        k -= 4
    if k & 1:
        occ_TXYZ = occ_TXYZ[:, :, ::-1]
    if k & 2:
        occ_TXYZ = occ_TXYZ[:, ::-1]
    return np.ascontiguousarray(occ_TXYZ)


@dataclass(frozen=True)
class SSCRun:
    """One run: its clips (per store: indices and the symmetry applied to each) and its seed.

    ``shuffle_targets`` pairs every input with another sample's target (a control: what the harness scores when
    the input carries no information about the target). ``added_share``: the share of every batch drawn from the
    clips after the first ``base_clips`` (in source order: the real clips come first); None draws every frame
    alike."""

    run_id: str
    seed: int
    sources: tuple[dict, ...]  # {"path": store, "indices": [...], "transforms": [...] (0 = as stored)}
    shuffle_targets: bool = False
    labels: dict = field(default_factory=dict)  # arm, pool, counts: carried into the result
    base_clips: int | None = None
    added_share: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "sources", tuple(dict(s) for s in self.sources))
        if not self.sources or not any(len(s["indices"]) for s in self.sources):
            raise ValueError(f"run {self.run_id}: no training clips")
        if self.added_share is not None:
            if not (isinstance(self.added_share, (int, float)) and 0.0 < self.added_share < 1.0):
                raise ValueError(f"run {self.run_id}: added share {self.added_share}: expected a number in (0, 1)")
            if self.base_clips is None or not 1 <= self.base_clips < self.num_clips:
                raise ValueError(f"run {self.run_id}: base clips {self.base_clips}: a mixed run needs 1 to "
                                 f"{self.num_clips - 1} base clips before its added ones")
        for s in self.sources:
            if len(s.get("transforms", ())) not in (0, len(s["indices"])):
                raise ValueError(f"run {self.run_id}: {s['path']} lists {len(s['indices'])} clips but "
                                 f"{len(s['transforms'])} transforms")

    @property
    def num_clips(self) -> int:
        return sum(len(s["indices"]) for s in self.sources)


@dataclass(frozen=True)
class SSCTrainConfig:
    model: dict  # SSCNetConfig.to_dict()
    grid: dict  # Grid.to_dict() of every store
    runs: tuple[dict, ...]  # asdict(SSCRun) each
    steps: int = 200
    batch_size: int = 8
    # debug city, 32 clips, val mIoU: without batch norm after 300 steps 17 % at 2e-3, 29 % at 5e-3, 27 % at 1e-2;
    # with it (ssc_net) after 150 steps 19 %, 19-23 %, 21 %
    lr: float = 5e-3
    weight_decay: float = 0.0
    lidar: dict = field(default_factory=lambda: asdict(LidarConfig()))
    eval_batch: int = 8  # clips per read of the evaluation split
    report_every: int = 20  # steps between recorded training losses
    out_dir: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(dict(r) for r in self.runs))
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1 or self.eval_batch < 1 or self.report_every < 1:
            raise ValueError(f"batch size, eval batch and report_every must be >= 1, got {self.batch_size}, "
                             f"{self.eval_batch}, {self.report_every}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"learning rate must be positive and weight decay >= 0, got {self.lr}, "
                             f"{self.weight_decay}")
        ids = [r["run_id"] for r in self.runs]
        if len(set(ids)) != len(ids):
            raise ValueError("run ids must be unique")

    @classmethod
    def from_dict(cls, d: dict) -> "SSCTrainConfig":
        return cls(**d)


# ---- data -------------------------------------------------------------------------------------------------------

class ClipCache:
    """Occupancy and LiDAR hits of every clip a worker's runs use, read through ``SceneDataset`` once each."""

    def __init__(self, grid: Grid, lidar: LidarConfig):
        self.grid, self.lidar = grid, lidar
        self._datasets: dict = {}
        self._clips: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def clip(self, path: str, index: int, transform: int) -> tuple[np.ndarray, np.ndarray]:
        """``(occ [T, X, Y, Z] uint8, hits [T, X, Y, Z] bool)`` of store clip ``index`` under ``transform``."""
        key = (path, int(index), int(transform))
        if key not in self._clips:
            from dcgen.data.torch_dataset import SceneDataset

            if path not in self._datasets:
                self._datasets[path] = SceneDataset(path, split=None, arrays=("occupancy",))
            ds = self._datasets[path]
            pos = int(np.searchsorted(ds.indices, index))
            if pos >= len(ds) or int(ds.indices[pos]) != int(index):
                raise ValueError(f"{path}: clip {index} is not a complete clip of the store")
            occ_TXYZ = augment(ds[pos]["occupancy"], int(transform))
            self._clips[key] = (occ_TXYZ, lidar_hits(occ_TXYZ, self.grid, self.lidar))
        return self._clips[key]

    def samples(self, run: SSCRun) -> tuple[np.ndarray, np.ndarray, int]:
        """Every frame of the run's clips, in source order: ``(occ [N, X, Y, Z] uint8, hits [N, X, Y, Z] bool,
        frames of its first run.base_clips clips)`` (the last is N when the run is not mixed)."""
        occ, hits = [], []
        for s in run.sources:
            transforms = s.get("transforms") or [0] * len(s["indices"])
            for i, k in zip(s["indices"], transforms):
                o, h = self.clip(s["path"], i, k)
                occ.append(o)
                hits.append(h)
        base = len(occ) if run.added_share is None else run.base_clips
        return np.concatenate(occ), np.concatenate(hits), sum(o.shape[0] for o in occ[:base])


@dataclass
class EvalSet:
    """The evaluation clips, sorted by store index: occupancy, observed mask (None: every voxel counts), hits."""

    index: np.ndarray
    occ_CTXYZ: np.ndarray
    mask_CTXYZ: np.ndarray | None
    hits_CTXYZ: np.ndarray


def load_eval(ctx: TrainContext, batch_size: int, grid: Grid, lidar: LidarConfig) -> EvalSet:
    """The context's whole ``eval`` split in memory (any block order in, sorted by clip index out)."""
    index, occ, mask = [], [], []
    for batch in ctx.batches("eval", batch_size, epoch=0, shuffle=False):
        if "index" not in batch:
            raise ValueError("the eval batches carry no 'index' column; read them with read_scenes")
        index.append(batch["index"].cpu().numpy())
        occ.append(batch["occupancy"].cpu().numpy().astype(np.uint8))
        if "mask" in batch:
            mask.append(batch["mask"].cpu().numpy().astype(bool))
    if not index:
        raise ValueError("the evaluation split is empty on this worker")
    idx = np.concatenate(index)
    order = np.argsort(idx, kind="stable")
    occ_CTXYZ = np.concatenate(occ)[order]
    mask_CTXYZ = np.concatenate(mask)[order] if mask else None
    hits_CTXYZ = np.stack([lidar_hits(o, grid, lidar) for o in occ_CTXYZ])
    return EvalSet(idx[order], occ_CTXYZ, mask_CTXYZ, hits_CTXYZ)


# ---- one run ----------------------------------------------------------------------------------------------------

class BatchOrder:
    """Sample indices in epochs of fresh permutations from the run's own generator (any N, any batch size)."""

    def __init__(self, num_samples: int, seed: int):
        self._n = num_samples
        self._gen = torch.Generator().manual_seed(scene_seed(seed, 1))
        self._queue = torch.empty(0, dtype=torch.int64)

    def next(self, batch_size: int) -> np.ndarray:
        while self._queue.numel() < batch_size:
            self._queue = torch.cat([self._queue, torch.randperm(self._n, generator=self._gen)])
        out, self._queue = self._queue[:batch_size], self._queue[batch_size:]
        return out.numpy()


class MixedBatchOrder:
    """Batches of a mixed run: ``share`` of all samples drawn so far from the added part (samples ``base..N-1``), the
    rest from the base part (``0..base-1``), each part in epochs of its own permutations. The added count of step i is
    ``round(share B (i + 1)) - round(share B i)``, so every batch holds round(share B) or one more or less and the
    running share never strays from ``share`` by more than one sample."""

    def __init__(self, num_samples: int, base: int, share: float, seed: int):
        self._base, self._share, self._drawn = base, share, 0
        self._parts = (BatchOrder(base, seed), BatchOrder(num_samples - base, scene_seed(seed, 3)))

    def next(self, batch_size: int) -> np.ndarray:
        start = round(self._share * self._drawn)
        self._drawn += batch_size
        added = round(self._share * self._drawn) - start
        return np.concatenate([self._parts[0].next(batch_size - added), self._base + self._parts[1].next(added)])


def class_weights_of(occ_NXYZ: np.ndarray, num_classes: int, base: int | None = None,
                     share: float | None = None) -> torch.Tensor:
    """Class weights of the targets as the batches draw them: every sample alike, or (``share``) the added part
    ``occ_NXYZ[base:]`` at ``share`` of the mass and the base part at the rest."""
    from dcgen.train.vae_losses import class_weights

    def hist(occ):
        return np.bincount(occ.reshape(-1), minlength=num_classes)[:num_classes].astype(np.float64)

    if share is None:
        return class_weights(hist(occ_NXYZ))
    base_K, added_K = hist(occ_NXYZ[:base]), hist(occ_NXYZ[base:])
    return class_weights((1.0 - share) * base_K / base_K.sum() + share * added_K / added_K.sum())


def train_run(run: SSCRun, cfg: SSCTrainConfig, cache: ClipCache, eval_set: EvalSet,
              device: torch.device, on_step=None) -> dict:
    """Train one run's network for ``cfg.steps`` steps and score it on ``eval_set``: a JSON-able result.
    ``on_step(step, loss)`` hears of every recorded training loss."""
    from dcgen.metrics.recon_iou import IoUAccumulator
    from dcgen.models.ssc_net import SSCNet, SSCNetConfig

    t0 = time.perf_counter()
    net_cfg = SSCNetConfig.from_dict(cfg.model)
    occ_NXYZ, hits_NXYZ, base = cache.samples(run)
    target_NXYZ = occ_NXYZ
    if run.shuffle_targets:
        perm = np.random.default_rng(scene_seed(run.seed, 2)).permutation(occ_NXYZ.shape[0])
        target_NXYZ = occ_NXYZ[perm]
    weights_K = class_weights_of(target_NXYZ, net_cfg.num_classes, base, run.added_share).to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.seed)
        model = SSCNet(net_cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.steps))
    order = (BatchOrder(occ_NXYZ.shape[0], run.seed) if run.added_share is None
             else MixedBatchOrder(occ_NXYZ.shape[0], base, run.added_share, run.seed))
    losses = []
    model.train()
    for step in range(cfg.steps):
        pick = order.next(cfg.batch_size)
        hits_BXYZ = torch.from_numpy(hits_NXYZ[pick]).to(device)
        target_BXYZ = torch.from_numpy(target_NXYZ[pick].astype(np.int64)).to(device)
        loss = F.cross_entropy(model(hits_BXYZ), target_BXYZ, weight=weights_K)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % cfg.report_every == 0 or step == cfg.steps - 1:
            losses.append([step + 1, float(loss.detach())])
            if on_step is not None:
                on_step(step + 1, losses[-1][1])
    if not math.isfinite(losses[-1][1]):
        raise ValueError(f"run {run.run_id}: the training loss is {losses[-1][1]} after {cfg.steps} steps")
    train_seconds = time.perf_counter() - t0
    masked, every = IoUAccumulator(net_cfg.num_classes), IoUAccumulator(net_cfg.num_classes)
    model.eval()
    with torch.no_grad():
        for c in range(eval_set.index.size):  # one clip's frames per call: scores never depend on the batching
            logits_BKXYZ = model(torch.from_numpy(eval_set.hits_CTXYZ[c]).to(device))
            pred_BXYZ = logits_BKXYZ.argmax(1).cpu().numpy()
            every.update(pred_BXYZ, eval_set.occ_CTXYZ[c])
            masked.update(pred_BXYZ, eval_set.occ_CTXYZ[c],
                          None if eval_set.mask_CTXYZ is None else eval_set.mask_CTXYZ[c])
    return {
        "run_id": run.run_id, "seed": run.seed, **run.labels, "shuffle_targets": run.shuffle_targets,
        "train_clips": run.num_clips, "train_samples": int(occ_NXYZ.shape[0]), "added_share": run.added_share,
        "miou": masked.miou(), "completion_iou": masked.binary_iou(),
        "miou_all_voxels": every.miou(), "completion_iou_all_voxels": every.binary_iou(),
        "per_class_iou": masked.per_class_iou(),
        "confusion": masked.counts.tolist(), "confusion_all_voxels": every.counts.tolist(),
        "eval_clips": int(eval_set.index.size), "train_loss": losses, "class_weights": weights_K.cpu().tolist(),
        "train_seconds": train_seconds, "seconds": time.perf_counter() - t0,
    }


# ---- the sweep --------------------------------------------------------------------------------------------------

def result_path(out_dir: str, run_id: str) -> str:
    return storage.join(out_dir, RUNS_DIR, f"{run_id}.json")


def read_result(out_dir: str, run_id: str) -> dict | None:
    """A finished run's result, None when the run has not finished; an unreadable file is an error."""
    path = result_path(out_dir, run_id)
    if not storage.exists(path):
        return None
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable run result ({e}); delete it to train the run again") from e


def _write_result(out_dir: str, run_id: str, result: dict) -> None:
    path = result_path(out_dir, run_id)
    text = json.dumps(result, sort_keys=True)
    if storage.is_uri(path):  # an object is written whole or not at all
        storage.write_text(path, text)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    Path(tmp).write_text(text)
    os.replace(tmp, path)  # a worker killed mid-write leaves no half result


def train_ssc_runs(ctx: TrainContext, run: dict) -> dict:
    """Ray Train entry: rank r trains runs r, r + W, ... of the sweep (skipping finished ones); returns its results."""
    cfg = SSCTrainConfig.from_dict(run)
    grid, lidar = Grid.from_dict(cfg.grid), LidarConfig(**cfg.lidar)
    runs = [SSCRun(**r) for r in cfg.runs]
    mine = runs[ctx.rank::ctx.world_size]
    results: dict[str, dict] = {}
    todo = []
    for r in mine:
        done = read_result(cfg.out_dir, r.run_id) if cfg.out_dir else None
        if done is not None:
            results[r.run_id] = done
        else:
            todo.append(r)
    if todo:
        eval_set = load_eval(ctx, cfg.eval_batch, grid, lidar)
        cache = ClipCache(grid, lidar)
        for n, r in enumerate(todo):
            def on_step(step: int, loss: float, n: int = n) -> None:  # this rank's runs, one after the other
                ctx.progress(n * cfg.steps + step, len(todo) * cfg.steps, run=f"{n + 1}/{len(todo)}", loss=loss)

            results[r.run_id] = train_run(r, cfg, cache, eval_set, ctx.device, on_step)
            if cfg.out_dir:
                _write_result(cfg.out_dir, r.run_id, results[r.run_id])
    return {"rank": ctx.rank, "results": results}
