"""The latent store: every clip of a scene store as the VAE μ packed into the padded rollout, with the clip's
conditions, for DiT training (SPEC §3: "Latents are the VAE μ, unscaled"; conditions as in SPEC §1).

Layout of ``NAME.zarr/``::

    zarr.json                    group attributes under "dcgen": schema version, grid, latent dims, rollout side,
                                 the VAE checkpoint id, per-channel latent mean/std, splits, complete flag
    latent/      [N, C, S, S]    float32 rollout of the VAE μ (zeros outside the six planes), one clip per chunk
    clip_index/  [N]             int64 index of the clip in the source scene store
    split/       [N]             uint8 position in SPLITS (train, val, test)
    prev_index/  [N]             int64 row of the clip starting T frames earlier in the same scene, -1 if none
    command/     [N]             uint8;  trajectory/ [N, T, 3] float32;  layout/ [N, T, X/d, Y/d] uint8;
    bev/         [N, X, Y]       uint8 (copied from the scene store)

Like the scene store, data is committed before it is declared: the conditions are copied and the latents written
(any number of writers, each owning whole one-clip chunks), and only then does ``finalize`` set ``complete`` in the
attributes. A crashed encode leaves a store that ``open`` refuses unless asked for an incomplete one. Mean and std
are for reporting only; the latents stay unscaled.

Legend: N clips, C latent channels, S rollout side, T frames, X/Y/Z voxels.
"""

from __future__ import annotations

import datetime as _dt
from typing import Sequence

import numpy as np

from dcgen.data.grid import Grid, LatentDims

SCHEMA_VERSION = 1
KIND = "latent-store"
SPLITS: tuple[str, ...] = ("train", "val", "test")
CONDITION_ARRAYS: tuple[str, ...] = ("command", "trajectory", "layout", "bev")
ROWS_PER_CHUNK = 256  # small per-clip arrays: one chunk holds many clips (one writer: the driver)


def previous_clips(scenes: Sequence[str], frame_starts: Sequence[int], num_frames: int) -> np.ndarray:
    """``[N]`` int64: for each clip, the position of the clip of the same scene starting ``num_frames`` frames
    earlier, or -1 when there is none (temporal extension chains clips that follow one another exactly)."""
    where = {(s, int(f)): i for i, (s, f) in enumerate(zip(scenes, frame_starts))}
    return np.array([where.get((s, int(f) - num_frames), -1) for s, f in zip(scenes, frame_starts)],
                    dtype=np.int64)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class LatentStore:
    """A latent store on disk. ``create`` it (conditions first), write latents, ``finalize``; then ``open``."""

    def __init__(self, group, path: str, mode: str):
        meta = dict(group.attrs).get("dcgen")
        if not isinstance(meta, dict) or meta.get("kind") != KIND:
            raise ValueError(f"{path}: not a dcgen latent store (group attribute 'dcgen' with kind {KIND!r} missing)")
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path}: latent store schema version {meta.get('schema_version')!r}; this dcgen reads "
                             f"version {SCHEMA_VERSION}")
        self._group = group
        self.path = path
        self.mode = mode
        self.meta = meta
        self.grid = Grid.from_dict(meta["grid"])
        self.dims = LatentDims(**{k: int(v) for k, v in meta["latent_dims"].items()})
        self.size = int(meta["rollout_size"])
        self.patch = int(meta["rollout_patch"])

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str, *, grid: Grid, dims: LatentDims, rollout_size: int, rollout_patch: int,
               conditions: dict[str, np.ndarray], clip_index: np.ndarray, splits: Sequence[str],
               prev_index: np.ndarray, source: str, vae_checkpoint: str, vae_checkpoint_id: str,
               frame: dict | None = None, overwrite: bool = False) -> "LatentStore":
        """A new store holding the conditions of ``len(clip_index)`` clips; latents are written afterwards.
        ``frame`` describes the coordinates of the VAE's planes (``HexPlaneVAE.frame_info``)."""
        import zarr

        from dcgen.data.store import _compressor, _exists

        path = str(path)
        if _exists(path) and not overwrite:
            raise ValueError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
        n = int(len(clip_index))
        if n == 0:
            raise ValueError(f"{source}: no complete clips to encode")
        bad = sorted(set(splits) - set(SPLITS))
        if bad:
            raise ValueError(f"{source}: unknown split names {bad}; expected some of {list(SPLITS)}")
        t, (x, y, _) = grid.num_frames, grid.size
        lx, ly = grid.layout_size
        specs = {
            "latent": ((dims.channels, rollout_size, rollout_size), "float32", 1),
            "clip_index": ((), "int64", ROWS_PER_CHUNK), "split": ((), "uint8", ROWS_PER_CHUNK),
            "prev_index": ((), "int64", ROWS_PER_CHUNK), "command": ((), "uint8", ROWS_PER_CHUNK),
            "trajectory": ((t, 3), "float32", ROWS_PER_CHUNK), "layout": ((t, lx, ly), "uint8", ROWS_PER_CHUNK),
            "bev": ((x, y), "uint8", ROWS_PER_CHUNK // 4),
        }
        group = zarr.open_group(path, mode="w")
        for name, (shape, dtype, rows) in specs.items():
            group.create_array(name, shape=(n, *shape), dtype=dtype, chunks=(min(rows, n), *shape),
                               compressors=_compressor(), fill_value=0)
        values = {
            "clip_index": np.asarray(clip_index, dtype=np.int64),
            "split": np.array([SPLITS.index(s) for s in splits], dtype=np.uint8),
            "prev_index": np.asarray(prev_index, dtype=np.int64),
            **{k: np.asarray(conditions[k]) for k in CONDITION_ARRAYS},
        }
        for name, value in values.items():
            want = (n, *specs[name][0])
            if value.shape != want:
                raise ValueError(f"latent store array {name!r}: got shape {list(value.shape)}, expected {list(want)}")
            group[name][:] = value.astype(specs[name][1])
        from dcgen import __version__

        counts = np.bincount(values["split"], minlength=len(SPLITS))
        group.attrs["dcgen"] = {
            "schema_version": SCHEMA_VERSION,
            "kind": KIND,
            "created": _now(),
            "dcgen_version": __version__,
            "source": source,
            "grid": grid.to_dict(),
            "latent_dims": {"t": dims.t, "x": dims.x, "y": dims.y, "z": dims.z, "channels": dims.channels},
            "rollout_size": int(rollout_size),
            "rollout_patch": int(rollout_patch),
            "vae_checkpoint": str(vae_checkpoint),
            "vae_checkpoint_id": vae_checkpoint_id,
            "frame": dict(frame) if frame is not None else {"frame": "ego"},
            "num_clips": n,
            "splits": {s: int(c) for s, c in zip(SPLITS, counts) if c},
            "clips_with_previous": int((values["prev_index"] >= 0).sum()),
            "complete": False,
            "latent_mean": None,
            "latent_std": None,
            "description": "latent: VAE mu packed into the padded rollout (SPEC 3), unscaled; prev_index: row of "
                           "the clip starting T frames earlier in the same scene (-1: none)",
        }
        return cls(group, path, "a")

    @classmethod
    def open(cls, path: str, mode: str = "r", require_complete: bool = True) -> "LatentStore":
        import zarr

        from dcgen.data.store import _exists

        path = str(path)
        if not _exists(path):
            raise ValueError(f"{path}: no latent store there")
        try:
            group = zarr.open_group(path, mode="r" if mode == "r" else "r+")
        except Exception as e:  # zarr raises several types for a non-store directory
            raise ValueError(f"{path}: not a readable Zarr v3 group ({type(e).__name__}: {e})") from e
        store = cls(group, path, mode)
        if require_complete and not store.complete:
            raise ValueError(f"{path}: incomplete latent store (its encode did not finish); run 'dcgen encode' "
                             "again with --overwrite")
        return store

    # ---- facts --------------------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def num_clips(self) -> int:
        return int(self.meta["num_clips"])

    @property
    def vae_checkpoint_id(self) -> str:
        return str(self.meta["vae_checkpoint_id"])

    @property
    def has_previous(self) -> bool:
        return int(self.meta.get("clips_with_previous", 0)) > 0

    def rows(self, split: str | None = None) -> np.ndarray:
        """Sorted rows of one split (all rows for ``None``)."""
        if split is None:
            return np.arange(self.num_clips, dtype=np.int64)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
        return np.flatnonzero(np.asarray(self._group["split"][:]) == SPLITS.index(split)).astype(np.int64)

    # ---- writing ------------------------------------------------------------------------------------------

    def write_latents(self, rows: np.ndarray, latent_NCSS: np.ndarray) -> None:
        """Write latents at ``rows`` (any order); safe beside other writers of other rows (one clip per chunk)."""
        if self.mode == "r":
            raise ValueError(f"{self.path}: opened read-only")
        rows = np.asarray(rows, dtype=np.int64)
        want = (rows.size, self.dims.channels, self.size, self.size)
        if tuple(latent_NCSS.shape) != want:
            raise ValueError(f"latents have shape {list(latent_NCSS.shape)}, expected {list(want)}")
        if rows.size and (rows.min() < 0 or rows.max() >= self.num_clips):
            raise ValueError(f"latent rows {rows.min()}..{rows.max()} outside 0..{self.num_clips - 1}")
        arr = self._group["latent"]
        order = np.argsort(rows, kind="stable")
        rows, values = rows[order], np.asarray(latent_NCSS, dtype=np.float32)[order]
        from dcgen.data.ray_dataset import contiguous_runs

        done = 0
        for a, b in contiguous_runs(rows):
            arr[a:b] = values[done:done + b - a]
            done += b - a

    def finalize(self, mean_C: np.ndarray, std_C: np.ndarray, min_C: np.ndarray | None = None,
                 max_C: np.ndarray | None = None, plane_stats: dict | None = None) -> None:
        """Declare the store complete, with the per-channel latent statistics (over valid rollout pixels) and,
        given, the per-plane ones (``plane_statistics``)."""
        meta = dict(self._group.attrs["dcgen"])
        meta.update(complete=True, finalized=_now(), latent_mean=[float(v) for v in mean_C],
                    latent_std=[float(v) for v in std_C])
        if min_C is not None and max_C is not None:
            meta.update(latent_min=[float(v) for v in min_C], latent_max=[float(v) for v in max_C])
        if plane_stats is not None:
            meta.update(latent_plane_stats=plane_stats)
        self._group.attrs["dcgen"] = meta
        self.meta = meta

    # ---- reading ------------------------------------------------------------------------------------------

    def read(self, rows: np.ndarray | slice, arrays: Sequence[str]) -> dict[str, np.ndarray]:
        """``arrays`` at ``rows`` (a slice reads contiguously) with a leading N."""
        out = {}
        for name in arrays:
            if name not in self._group:
                raise ValueError(f"{self.path}: no array {name!r}")
            arr = self._group[name]
            if isinstance(rows, slice):
                out[name] = np.asarray(arr[rows])
            else:
                idx = np.asarray(rows, dtype=np.int64)
                out[name] = (np.asarray(arr.get_orthogonal_selection(idx)) if idx.size
                             else np.zeros((0, *arr.shape[1:]), arr.dtype))
        return out

    def training_batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Rows ``start..stop-1`` as DiT training columns: latent, the conditions, ``prev_latent`` (zeros where
        there is no previous clip) and ``has_prev``."""
        batch = self.read(slice(start, stop), ("latent", "prev_index", *CONDITION_ARRAYS))
        prev = batch.pop("prev_index")
        has_prev = prev >= 0
        prev_latent = np.zeros_like(batch["latent"])
        if has_prev.any():
            prev_latent[has_prev] = self.read(prev[has_prev], ("latent",))["latent"]
        batch.update(prev_latent=prev_latent, has_prev=has_prev, row=np.arange(start, stop, dtype=np.int64))
        return batch

    def describe(self) -> dict:
        keys = ("source", "grid", "latent_dims", "rollout_size", "vae_checkpoint", "vae_checkpoint_id", "num_clips",
                "splits", "clips_with_previous", "complete", "latent_mean", "latent_std", "latent_min", "latent_max")
        return {"path": self.path, **{k: self.meta.get(k) for k in keys}}


def latent_batches(path: str, split: str, batch_size: int, epoch: int = 0, shuffle: bool = False,
                   seed: int = 0):
    """In-process iteration over a split's training batches (``LocalContext`` runs, tests, benchmarks)."""
    store = LatentStore.open(path)
    rows = store.rows(split)
    if shuffle:
        rows = np.random.default_rng([seed, epoch]).permutation(rows)
    for a in range(0, rows.size, batch_size):
        from dcgen.data.ray_dataset import contiguous_runs

        parts = [store.training_batch(b0, b1) for b0, b1 in contiguous_runs(np.sort(rows[a:a + batch_size]))]
        yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
