"""The scene store: a self-describing Zarr v3 group of occupancy clips plus a Parquet manifest (SPEC §1).

Layout of ``NAME.zarr/``::

    zarr.json                      group attributes under "dcgen": schema version, grid, classes, arrays, provenance
    occupancy/  [N, T, X, Y, Z]    uint8 unified class ids, one clip per chunk, 8 clips per shard
    mask/       [N, T, X, Y, Z]    bool observed voxels (optional)
    trajectory/ [N, T, 3]          float32 (x, y, yaw) relative to frame 0
    ego_pose/   [N, T, 4, 4]       float32 ego-to-world
    command/    [N]                uint8 0 static 1 forward 2 left 3 right
    layout/     [N, T, X/d, Y/d]   uint8 vehicle layout
    bev/        [N, X, Y]          uint8 top-most class of frame 0
    manifest/part-SSSSSSSSS.parquet  one row per clip of one committed batch

Arrays are allocated to a capacity and filled in blocks; a block counts as written only once its manifest part
exists, and parts are written (atomically, by rename) after the block's arrays. So a crashed writer leaves a store
that opens and whose manifest lists exactly the complete clips. Parallel writers are safe when each owns whole
shards (``clips_per_chunk`` clips): ``write`` checks the alignment.

``read`` checks every clip it returns against the checksums its manifest row recorded and raises naming the
store, array and clip (``integrity.py``, which also builds replacement stores beside the old one).
"""

from __future__ import annotations

import datetime as _dt
import posixpath
import uuid
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from dcgen import storage
from dcgen.data.classes import CLASSES
from dcgen.data.integrity import clip_problems, verify_store
from dcgen.data.grid import Grid
from dcgen.data.manifest import MANIFEST_COLUMNS, manifest_table, pa_type

SCHEMA_VERSION = 1
CLIPS_PER_CHUNK = 8
MANIFEST_DIR = "manifest"


@dataclass(frozen=True)
class ArraySpec:
    """One per-clip array: its per-clip shape (from the grid), dtype, dimension names and meaning."""

    name: str
    dtype: str
    dims: tuple[str, ...]
    description: str

    def clip_shape(self, grid: Grid, extra: dict[str, int] | None = None) -> tuple[int, ...]:
        t, (x, y, z) = grid.num_frames, grid.size
        lx, ly = grid.layout_size
        sizes = {"t": t, "x": x, "y": y, "z": z, "lx": lx, "ly": ly, "xyyaw": 3, "row": 4, "col": 4,
                 **(extra or {})}
        return tuple(sizes[d] for d in self.dims[1:])


CORE_ARRAYS: dict[str, ArraySpec] = {a.name: a for a in (
    ArraySpec("occupancy", "uint8", ("clip", "t", "x", "y", "z"),
              "semantic class id per voxel (see classes); 0 = free"),
    ArraySpec("mask", "bool", ("clip", "t", "x", "y", "z"),
              "true where the voxel was observed (LiDAR visibility); unobserved voxels are excluded from mIoU"),
    ArraySpec("trajectory", "float32", ("clip", "t", "xyyaw"),
              "ego x, y (metres) and yaw (radians) of each frame in frame 0's ego coordinates"),
    ArraySpec("ego_pose", "float32", ("clip", "t", "row", "col"), "ego-to-world 4x4 pose of each frame"),
    ArraySpec("command", "uint8", ("clip",), "driving command: 0 static, 1 forward, 2 left, 3 right"),
    ArraySpec("layout", "uint8", ("clip", "t", "lx", "ly"),
              "1 where a vehicle occupies the column block (occupancy max-pooled by layout_downsample)"),
    ArraySpec("bev", "uint8", ("clip", "x", "y"), "top-most non-free class of each column in frame 0"),
)}
REQUIRED_ARRAYS = ("occupancy", "trajectory", "ego_pose", "command", "layout", "bev")



def _compressor():
    from zarr.codecs import BloscCodec

    # bitshuffle + zstd: ~50x on blob-like occupancy at several hundred MiB/s (PLATFORM-NOTES)
    return BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


class SceneStore:
    """A scene store on disk (or any URI zarr and pyarrow can reach). Create with ``create``, open with ``open``."""

    def __init__(self, group, path: str, mode: str):
        self._group = group
        self.path = path
        self.mode = mode
        meta = dict(group.attrs).get("dcgen")
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: not a dcgen scene store (group attribute 'dcgen' missing)")
        version = meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(f"{path}: scene store schema version {version!r}; this dcgen reads version "
                             f"{SCHEMA_VERSION}")
        self.meta = meta
        self.grid = Grid.from_dict(meta["grid"])
        self.clips_per_chunk = int(meta["clips_per_chunk"])
        self._arrays: dict[str, object] = {}
        self._manifest_cache: tuple[tuple[str, ...], object] | None = None
        self._recorded_for = None  # the manifest table _recorded_cache was built from
        self._check_arrays()

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str, grid: Grid, *, source: str, attrs: dict | None = None, with_mask: bool = True,
               capacity: int = 0, overwrite: bool = False, extra_arrays: Sequence[ArraySpec] = (),
               extra_sizes: dict[str, int] | None = None) -> "SceneStore":
        """A new empty store for clips of ``grid`` with room for ``capacity`` clips (it grows on append)."""
        import zarr

        path = str(path)
        if not overwrite and _exists(path):
            raise ValueError(f"{path}: already exists; pass overwrite=True (--overwrite) to replace it")
        specs = [CORE_ARRAYS[n] for n in REQUIRED_ARRAYS] + ([CORE_ARRAYS["mask"]] if with_mask else [])
        specs += list(extra_arrays)
        group = zarr.open_group(path, mode="w")
        cap = int(capacity)
        for spec in specs:
            clip_shape = spec.clip_shape(grid, extra_sizes)
            big = len(clip_shape) >= 3
            group.create_array(
                spec.name, shape=(cap, *clip_shape), dtype=spec.dtype,
                chunks=(1 if big else CLIPS_PER_CHUNK, *clip_shape),
                shards=(CLIPS_PER_CHUNK, *clip_shape) if big else None,
                compressors=_compressor(), fill_value=False if spec.dtype == "bool" else 0,
                dimension_names=spec.dims,
                attributes={"description": spec.description, "dims": list(spec.dims)},
            )
        meta = {
            "schema_version": SCHEMA_VERSION,
            "kind": "scene-store",
            "created": _now(),
            "source": source,
            "grid": grid.to_dict(),
            "classes": [{"id": c.id, "name": c.name, "rgb": list(c.rgb)} for c in CLASSES[:grid.num_classes]],
            "arrays": {s.name: {"dtype": s.dtype, "dims": list(s.dims), "description": s.description}
                       for s in specs},
            "extra_sizes": dict(extra_sizes or {}),
            "clips_per_chunk": CLIPS_PER_CHUNK,
            "manifest": f"{MANIFEST_DIR}/part-*.parquet: one row per complete clip; columns "
                        + ", ".join(f"{k} ({v})" for k, v in MANIFEST_COLUMNS.items())
                        + ", class_counts (list<int64> voxels per class); arrays hold valid data only at the "
                          "indices listed there",
            "provenance": dict(attrs or {}),
        }
        from dcgen import __version__

        meta["provenance"].setdefault("dcgen_version", __version__)
        group.attrs["dcgen"] = meta
        fs, root = _fs(path)
        fs.create_dir(posixpath.join(root, MANIFEST_DIR), recursive=True)
        return cls(group, path, "a")

    @classmethod
    def open(cls, path: str, mode: str = "r") -> "SceneStore":
        """Open an existing store; ``mode='a'`` to write more clips into it."""
        import zarr

        path = str(path)
        if not _exists(path):
            raise ValueError(f"{path}: no scene store there")
        try:
            group = zarr.open_group(path, mode="r" if mode == "r" else "r+")
        except Exception as e:  # zarr raises several types for a non-store directory
            raise ValueError(f"{path}: not a readable Zarr v3 group ({type(e).__name__}: {e})") from e
        return cls(group, path, mode)

    def _check_arrays(self) -> None:
        extra = self.meta.get("extra_sizes", {})
        for name, info in self.meta["arrays"].items():
            if name not in self._group:
                raise ValueError(f"{self.path}: array {name!r} listed in the attributes is missing")
            arr = self._group[name]
            spec = ArraySpec(name, info["dtype"], tuple(info["dims"]), info["description"])
            want = spec.clip_shape(self.grid, extra)
            if tuple(arr.shape[1:]) != want:
                raise ValueError(f"{self.path}: array {name!r} has per-clip shape {list(arr.shape[1:])}, "
                                 f"expected {list(want)} for grid {self.grid.shape}")
            if str(arr.dtype) != info["dtype"]:
                raise ValueError(f"{self.path}: array {name!r} has dtype {arr.dtype}, expected {info['dtype']}")
            self._arrays[name] = arr
        sizes = {n: a.shape[0] for n, a in self._arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{self.path}: arrays disagree on the number of clips: {sizes}")

    # ---- facts --------------------------------------------------------------------------------------------

    @property
    def array_names(self) -> tuple[str, ...]:
        return tuple(self._arrays)

    @property
    def has_mask(self) -> bool:
        return "mask" in self._arrays

    @property
    def capacity(self) -> int:
        return int(self._arrays["occupancy"].shape[0])

    def array(self, name: str):
        if name not in self._arrays:
            raise ValueError(f"{self.path}: no array {name!r}; it has {', '.join(self._arrays)}")
        return self._arrays[name]

    # ---- manifest -----------------------------------------------------------------------------------------

    def manifest(self):
        """All committed rows as one pyarrow Table sorted by index (empty table when nothing is committed).

        Raises naming the part when a row lists a clip the arrays cannot hold (arrays shorter than the manifest).
        """
        table = self.raw_manifest()
        idx = table.column("index").to_numpy()
        if idx.size and int(idx[-1]) >= self.capacity:
            raise ValueError(f"{self.path}: the manifest lists clip {int(idx[-1])} but the arrays hold "
                             f"{self.capacity} clips (array 'occupancy' shape "
                             f"{list(self._arrays['occupancy'].shape)}); the store is damaged: "
                             f"run `dcgen data verify {self.path}`")
        return table

    def raw_manifest(self):
        """The manifest as committed, without checking it against the arrays (``verify`` reports on it)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        fs, _ = _fs(self.path)
        parts = tuple(self._part_paths())
        if self._manifest_cache is not None and self._manifest_cache[0] == parts:
            return self._manifest_cache[1]
        if not parts:
            return pa.table({k: pa.array([], type=pa_type(v)) for k, v in MANIFEST_COLUMNS.items()})
        tables = []
        for p in parts:
            try:
                tables.append(pq.read_table(p, filesystem=fs))
            except (OSError, pa.ArrowException) as e:
                raise ValueError(f"{self.path}: manifest part {posixpath.basename(p)} is unreadable "
                                 f"({type(e).__name__}: {e}); expected a Parquet file") from None
        table = pa.concat_tables(tables, promote_options="permissive").sort_by("index")
        self._manifest_cache = (parts, table)
        return table

    def indices(self, split: str | None = None) -> np.ndarray:
        """Sorted indices of complete clips, optionally of one split."""
        table = self.manifest()
        idx = table.column("index").to_numpy()
        if split is not None:
            splits = np.asarray(table.column("split").to_pylist(), dtype=object)
            idx = idx[splits == split]
        return np.asarray(idx, dtype=np.int64)

    @property
    def num_clips(self) -> int:
        return int(self.manifest().num_rows)

    def class_histogram(self, split: str | None = None) -> np.ndarray:
        """Voxel count per class over complete clips (from the manifest: no pass over the arrays)."""
        table = self.manifest()
        hist = np.zeros(self.grid.num_classes, dtype=np.int64)
        if table.num_rows == 0:
            return hist
        splits = table.column("split").to_pylist()
        for s, counts in zip(splits, table.column("class_counts").to_pylist()):
            if split is None or s == split:
                hist += np.asarray(counts, dtype=np.int64)
        return hist

    # ---- writing ------------------------------------------------------------------------------------------

    def validate_batch(self, batch: dict[str, np.ndarray]) -> int:
        """Check a batch against the store's arrays; returns its clip count. Raises naming the bad array."""
        missing = [n for n in self._arrays if n not in batch]
        unknown = [n for n in batch if n not in self._arrays]
        if missing:
            raise ValueError(f"batch for {self.path} lacks arrays {missing}")
        if unknown:
            raise ValueError(f"batch for {self.path} has arrays the store does not: {unknown}")
        n = None
        for name, arr in self._arrays.items():
            value = np.asarray(batch[name])
            if n is None:
                n = value.shape[0] if value.ndim else -1
            if tuple(value.shape) != (n, *arr.shape[1:]):
                raise ValueError(f"batch array {name!r} has shape {list(value.shape)}, expected "
                                 f"{[n, *arr.shape[1:]]}")
            if value.dtype != arr.dtype:
                raise ValueError(f"batch array {name!r} has dtype {value.dtype}, expected {arr.dtype}")
        occ = np.asarray(batch["occupancy"])
        if occ.size and int(occ.max()) >= self.grid.num_classes:
            raise ValueError(f"batch array 'occupancy': class id {int(occ.max())} out of range; expected "
                             f"0..{self.grid.num_classes - 1}")
        cmd = np.asarray(batch["command"])
        if cmd.size and int(cmd.max()) > 3:
            raise ValueError(f"batch array 'command': value {int(cmd.max())} out of range; expected 0..3")
        for name in ("trajectory", "ego_pose"):
            if not np.isfinite(batch[name]).all():
                raise ValueError(f"batch array {name!r} holds NaN or inf")
        return int(n)

    def write(self, start: int, batch: dict[str, np.ndarray], rows: Sequence[dict], *,
              aligned: bool = True, overwrite: bool = False) -> range:
        """Write clips ``start..start+n`` and commit their manifest rows. Validates everything before writing.

        With ``aligned`` (the default, for parallel writers) the block must start on a shard boundary and end on
        one or at the capacity, so no two writers touch the same shard.
        """
        if self.mode == "r":
            raise ValueError(f"{self.path}: opened read-only")
        n = self.validate_batch(batch)
        if len(rows) != n:
            raise ValueError(f"{n} clips but {len(rows)} manifest rows")
        stop = start + n
        if start < 0 or stop > self.capacity:
            raise ValueError(f"clips {start}..{stop} fall outside the store's capacity {self.capacity}")
        if aligned and (start % self.clips_per_chunk or (stop % self.clips_per_chunk and stop != self.capacity)):
            raise ValueError(f"clips {start}..{stop} are not aligned to shards of {self.clips_per_chunk} clips; "
                             "parallel writers must own whole shards")
        if not overwrite:
            clash = [r for r in self.committed_ranges() if r[0] < stop and start < r[1]]
            if clash:
                raise ValueError(f"{self.path}: clips {clash[0][0]}..{clash[0][1] - 1} are already written; "
                                 "refusing to overwrite")
        table = manifest_table(start, batch, rows, source=self.meta["source"], num_classes=self.grid.num_classes,
                               array_names=self.array_names)
        for name, arr in self._arrays.items():
            arr[start:stop] = np.asarray(batch[name])
        self._commit(start, stop, table)
        return range(start, stop)

    def append(self, batch: dict[str, np.ndarray], rows: Sequence[dict]) -> range:
        """Single-writer append after the last complete clip, growing the arrays as needed."""
        n = self.validate_batch(batch)
        ranges = self.committed_ranges()
        start = max((b for _, b in ranges), default=0)
        if start + n > self.capacity:
            self.resize(max(start + n, 2 * self.capacity))
        return self.write(start, batch, rows, aligned=False)

    def resize(self, capacity: int) -> None:
        for arr in self._arrays.values():
            arr.resize((capacity, *arr.shape[1:]))

    def finalize(self) -> None:
        """Shrink the arrays to the complete clips (when they are a prefix) and record the final summary."""
        idx = self.indices()
        n = int(idx.size)
        if n and int(idx[-1]) == n - 1 and self.capacity != n:
            self.resize(n)
        meta = dict(self._group.attrs["dcgen"])
        meta["num_clips"] = n
        meta["finalized"] = _now()
        self._group.attrs["dcgen"] = meta
        self.meta = meta

    def _part_paths(self) -> list[str]:
        from pyarrow.fs import FileSelector

        fs, root = _fs(self.path)
        infos = fs.get_file_info(FileSelector(posixpath.join(root, MANIFEST_DIR), allow_not_found=True))
        return sorted(i.path for i in infos if i.is_file and i.path.endswith(".parquet")
                      and posixpath.basename(i.path).startswith("part-"))

    def committed_ranges(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of every committed block, from the part names alone (no Parquet read)."""
        out = []
        for p in self._part_paths():
            a, b = posixpath.basename(p)[len("part-"):-len(".parquet")].split("-")
            out.append((int(a), int(b)))
        return out

    def _commit(self, start: int, stop: int, table) -> None:
        import pyarrow.parquet as pq

        fs, root = _fs(self.path)
        final = posixpath.join(root, MANIFEST_DIR, f"part-{start:09d}-{stop:09d}.parquet")
        tmp = posixpath.join(root, MANIFEST_DIR, f".tmp-{uuid.uuid4().hex}.parquet")
        pq.write_table(table, tmp, filesystem=fs)
        fs.move(tmp, final)

    # ---- reading ------------------------------------------------------------------------------------------

    def read(self, indices: Iterable[int] | slice, arrays: Sequence[str] | None = None, *,
             check: bool = True) -> dict[str, np.ndarray]:
        """Clips at ``indices`` (a slice reads contiguously, the fast path) as numpy arrays with a leading N.

        With ``check`` every clip the manifest lists is compared with what was written (its checksums), and a
        damaged one raises naming the clip; clips the manifest does not list are returned as stored.
        """
        names = list(arrays) if arrays is not None else list(self._arrays)
        if isinstance(indices, slice):
            idx = np.arange(*indices.indices(self.capacity), dtype=np.int64)
            out = {n: self.read_array(n, indices, idx) for n in names}
        else:
            idx = np.asarray(list(indices), dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= self.capacity):
                raise ValueError(f"{self.path}: clip index out of range 0..{self.capacity - 1}")
            out = {}
            for n in names:
                arr = self.array(n)
                # one read per clip; zarr's orthogonal indexing is slower for scattered reads
                out[n] = (np.stack([self.read_array(n, int(i), idx[k:k + 1]) for k, i in enumerate(idx)])
                          if idx.size else np.zeros((0, *arr.shape[1:]), arr.dtype))
        if check:
            self.check_clips(idx, out)
        return out

    def read_array(self, name: str, selection, idx: np.ndarray) -> np.ndarray:
        """One zarr read, its decode errors (a truncated or corrupt chunk) reported with the array and clips."""
        arr = self.array(name)
        try:
            return np.asarray(arr[selection])
        except Exception as e:  # zarr and numcodecs raise several types (ValueError among them) for bad bytes
            where = f"clip {int(idx[0])}" if idx.size == 1 else f"clips {int(idx[0])}..{int(idx[-1])}"
            raise ValueError(f"{self.path}: array {name!r}, {where}: stored bytes cannot be decoded "
                             f"({type(e).__name__}: {e}); the chunk is truncated or corrupt: run "
                             f"`dcgen data verify {self.path}`") from None

    def check_clips(self, indices: np.ndarray, batch: dict[str, np.ndarray]) -> None:
        """Raise naming the first clip of ``batch`` (clips ``indices``) that differs from what the manifest recorded."""
        problems = clip_problems(self, indices, batch, first_only=True)
        if problems:
            i, message = problems[0]
            raise ValueError(f"{self.path}: clip {i}: {message}; run `dcgen data verify {self.path}` for the "
                             "whole store")

    def verify(self) -> dict:
        """Every listed clip checked against the manifest, and the manifest against the arrays (``integrity``)."""
        return verify_store(self)

    def describe(self) -> dict:
        """A JSON-able summary: counts per split, class histogram, commands."""
        table = self.manifest()
        splits = table.column("split").to_pylist() if table.num_rows else []
        hist = self.class_histogram()
        idx = self.indices()
        cmds = np.bincount(np.asarray(self.array("command")[:])[idx], minlength=4) if idx.size else np.zeros(4, int)
        total = max(int(hist.sum()), 1)
        return {
            "path": self.path,
            "source": self.meta.get("source"),
            "grid": self.grid.to_dict(),
            "clips": int(table.num_rows),
            "capacity": self.capacity,
            "splits": {s: splits.count(s) for s in sorted(set(splits))},
            "class_fraction": {c["name"]: round(int(hist[c["id"]]) / total, 5) for c in self.meta["classes"]},
            "commands": dict(zip(("static", "forward", "left", "right"), (int(c) for c in cmds))),
            "arrays": list(self.array_names),
        }


# the stores' names for the shared filesystem helpers (local paths and URIs alike)
_fs = storage.fs_path
_exists = storage.exists
