"""Ray Data ``Datasource``s over the scene store and the latent store (ray.data.read_zarr refuses zarr v3;
PLATFORM-NOTES): the one file through which Ray Data reads dcgen's stores.

Read tasks are coarse: each reads about one Ray Data block of clips (``clips_per_task``, by default enough clips to
fill the context's target block size, a whole number of shards; 32 carlasc clips with their masks), cut only where
a new shard starts so no two tasks decompress the same shard. A task reads each contiguous run of its clips with
zarr slices and hands the numpy arrays straight to ``batch_to_block``: one block per task, no re-splitting
(``read_scenes`` asks Ray for exactly one output block per task unless told otherwise). Tasks of a split whose
clips interleave with another's (synthetic val clips are spread through the indices) still read whole groups of
clips rather than one short run each. The datasource holds only the path and the index groups (it is pickled).

Boolean arrays (the observed ``mask``) travel as uint8 0/1, a zero-copy view: Arrow stores bool bit-packed, and
packing and unpacking 2 MB of mask per carlasc clip cost a third of the read throughput (0.63x the plain read with
the mask, 0.97x without). Consumers treat the column as a 0/1 mask (``IoUAccumulator`` and the VAE loss do).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from dcgen.data.latent_store import LatentStore
from dcgen.data.store import SceneStore

TARGET_BLOCK_BYTES = 128 * 2**20  # Ray Data's default target_max_block_size


def contiguous_runs(indices: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering sorted ``indices`` exactly."""
    if indices.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [indices.size]])
    return [(int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops)]


def task_ranges(indices: np.ndarray, parallelism: int, min_clips: int, align: int) -> list[tuple[int, int]]:
    """Split the runs of ``indices`` into about ``parallelism`` shard-aligned ranges of ≥ ``min_clips`` clips."""
    total = int(indices.size)
    target = max(min_clips, -(-total // max(parallelism, 1)))
    target = -(-target // align) * align
    out = []
    for start, stop in contiguous_runs(indices):
        a = start
        while a < stop:
            b = min(stop, (a // align) * align + target)
            out.append((a, b))
            a = b
    return out


def default_clips_per_task(clip_bytes: int, align: int, target_bytes: int = TARGET_BLOCK_BYTES) -> int:
    """Clips that fill about one block of ``target_bytes``, rounded up to whole shards of ``align`` clips."""
    if clip_bytes < 1 or align < 1 or target_bytes < 1:
        raise ValueError(f"clip_bytes={clip_bytes}, align={align}, target_bytes={target_bytes}: expected "
                         "positive values")
    clips = -(-target_bytes // clip_bytes)
    return -(-clips // align) * align


def index_groups(indices: np.ndarray, clips_per_task: int, align: int) -> list[np.ndarray]:
    """Consecutive groups of sorted ``indices``, each of ≥ ``clips_per_task`` indices but the last, cut only
    where the next index falls in a new shard of ``align`` clips (so no shard is read by two tasks)."""
    if clips_per_task < 1:
        raise ValueError(f"clips_per_task={clips_per_task}: expected a positive number of clips")
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size == 0:
        return []
    shard = indices // align
    cuts = np.flatnonzero(np.diff(shard) != 0) + 1  # positions where a new shard begins
    groups, start = [], 0
    while start < indices.size:
        k = int(np.searchsorted(cuts, start + clips_per_task))
        stop = int(cuts[k]) if k < cuts.size else int(indices.size)
        groups.append(indices[start:stop])
        start = stop
    return groups


def read_clips(store: SceneStore, group: np.ndarray, arrays: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The clips at sorted ``group`` as numpy arrays, one zarr slice per contiguous run, each checked against
    the manifest (a damaged clip raises naming it)."""
    parts = [store.read(slice(a, b), arrays, check=False) for a, b in contiguous_runs(group)]
    out = {n: parts[0][n] if len(parts) == 1 else np.concatenate([p[n] for p in parts]) for n in arrays}
    store.check_clips(group, out)
    return out


class SceneDatasource(Datasource):
    """Clips of one split of a scene store (or only ``indices`` of it), ``clips_per_task`` per read task (default:
    about one block)."""

    def __init__(self, path: str, split: str | None = None, arrays: tuple[str, ...] | None = None,
                 clips_per_task: int | None = None, target_block_bytes: int = TARGET_BLOCK_BYTES,
                 indices: np.ndarray | None = None):
        store = SceneStore.open(path)
        self.path = path
        self.indices = store.indices(split)
        if indices is not None:
            wanted = np.unique(np.asarray(indices, dtype=np.int64))
            missing = np.setdiff1d(wanted, self.indices)
            if missing.size:
                raise ValueError(f"{path}: clips {missing[:8].tolist()} are not complete clips of split {split!r}")
            self.indices = wanted
        if self.indices.size == 0:
            raise ValueError(f"{path}: split {split!r} has no complete clips")
        self.arrays = tuple(arrays or store.array_names)
        for name in self.arrays:
            store.array(name)  # raises naming the arrays the store has
        self._clip_bytes = sum(int(np.prod(store.array(n).shape[1:])) * store.array(n).dtype.itemsize
                               for n in self.arrays)
        if clips_per_task is None:
            clips_per_task = default_clips_per_task(self._clip_bytes, store.clips_per_chunk, target_block_bytes)
        self.groups = index_groups(self.indices, clips_per_task, store.clips_per_chunk)

    @property
    def num_tasks(self) -> int:
        return len(self.groups)

    def estimate_inmemory_data_size(self) -> int:
        return int(self.indices.size) * self._clip_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        # The task size is the datasource's choice (coarse tasks amortise per-task cost); Ray splits the output
        # blocks itself when more blocks than tasks are requested.
        path, arrays = self.path, self.arrays

        def make(group: np.ndarray) -> ReadTask:
            def read() -> Iterator:
                from ray.data.block import BlockAccessor

                batch = read_clips(SceneStore.open(path), group, arrays)
                for name, values in batch.items():
                    if values.dtype == np.bool_:
                        batch[name] = values.view(np.uint8)
                batch["index"] = group
                yield BlockAccessor.batch_to_block(batch)

            meta = BlockMetadata(num_rows=int(group.size), size_bytes=int(group.size) * self._clip_bytes,
                                 exec_stats=None, input_files=None)
            return ReadTask(read, meta, per_task_row_limit=per_task_row_limit)

        return [make(g) for g in self.groups]


def read_scenes(path: str, split: str | None = None, arrays: tuple[str, ...] | None = None,
                clips_per_task: int | None = None, override_num_blocks: int | None = None,
                reserve_for_downstream: bool = False, indices: np.ndarray | None = None):
    """A ``ray.data.Dataset`` with one row per complete clip (columns = arrays + ``index``); ``indices`` reads only
    those clips of the split (store indices).

    One output block per read task unless ``override_num_blocks`` asks for more (Ray then splits the blocks).
    The dataset is read as it is (training shards, benchmarks): Ray Data's per-operator resource reservation, which
    holds half the budget back for operators downstream, is off for it, since with ~130 MB blocks it let only one
    read task run at a time (1000 carlasc clips on 2 cores: 3.1 s instead of 3.7-4.0 s, against 2.9 s for a plain
    zarr read). Pass ``reserve_for_downstream=True`` before chaining operators (``map_batches``) onto it.
    """
    import ray
    from ray.data import DataContext

    target = DataContext.get_current().target_max_block_size or TARGET_BLOCK_BYTES
    source = SceneDatasource(path, split, arrays, clips_per_task, target, indices)
    ds = ray.data.read_datasource(source, override_num_blocks=override_num_blocks or source.num_tasks)
    if not reserve_for_downstream:
        ds.context.op_resource_reservation_enabled = False  # the dataset's own copy, not the process-wide context
    return ds


# ---- latent stores --------------------------------------------------------------------------------------------
# One read task per contiguous run of a split's rows, each row with its previous clip's latent joined in
# (``LatentStore.training_batch``), so DiT workers get ready batches. Holds only the path and row ranges.

class LatentDatasource(Datasource):
    def __init__(self, path: str, split: str | None = None, min_rows_per_task: int = 32):
        store = LatentStore.open(path)
        self.path = path
        self.rows = store.rows(split)
        if self.rows.size == 0:
            raise ValueError(f"{path}: split {split!r} has no clips")
        self.min_rows = min_rows_per_task
        t, (x, y, _) = store.grid.num_frames, store.grid.size
        lx, ly = store.grid.layout_size
        latent = store.dims.channels * store.size * store.size * 4
        self._row_bytes = 2 * latent + t * 3 * 4 + t * lx * ly + x * y + 1 + 1 + 8

    def estimate_inmemory_data_size(self) -> int:
        return int(self.rows.size) * self._row_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        path = self.path

        def make(start: int, stop: int) -> ReadTask:
            def read() -> Iterator:
                from ray.data.block import BlockAccessor

                yield BlockAccessor.batch_to_block(LatentStore.open(path).training_batch(start, stop))

            meta = BlockMetadata(num_rows=stop - start, size_bytes=(stop - start) * self._row_bytes,
                                 exec_stats=None, input_files=None)
            return ReadTask(read, meta, per_task_row_limit=per_task_row_limit)

        return [make(a, b) for a, b in task_ranges(self.rows, parallelism, self.min_rows, 1)]


def read_latents(path: str, split: str | None = None, min_rows_per_task: int = 32):
    """A ``ray.data.Dataset`` with one row per clip of ``split``: latent, conditions, prev_latent, has_prev, row."""
    import ray

    return ray.data.read_datasource(LatentDatasource(path, split, min_rows_per_task))


def map_on_actors(ds, actor_class, **kwargs):
    """``ds.map_batches(actor_class, **kwargs)`` on an actor pool whose actors are never restarted.

    Ray Data keeps an actor pool's constructor arguments in the object store, and with its default of unlimited
    restarts Ray core logs an error at every actor start ("constructor arguments in the object store and
    max_restarts > 0": a restart would fail were they lost). dcgen's pools need no restarts: encode is simply run
    again (the earlier latent store stays whole), synth continues from its finished blocks, and an actor that
    crashed on a batch would crash again on each retry, forever. Ray 2.60 (pinned) takes ``max_restarts`` only
    through ``ray_remote_args``, which it marks deprecated for 2.64: that warning is silenced here, in one place.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(actor_class, max_restarts=0, **kwargs)
