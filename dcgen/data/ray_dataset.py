"""A Ray Data ``Datasource`` over a scene store (ray.data.read_zarr refuses zarr v3; PLATFORM-NOTES).

One read task per contiguous run of complete clips, cut on shard boundaries and at least ``min_clips_per_task`` long,
so each task reads whole chunks with slices. The datasource holds only the path and index ranges (it is pickled).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from dcgen.data.store import SceneStore


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


class SceneDatasource(Datasource):
    def __init__(self, path: str, split: str | None = None, arrays: tuple[str, ...] | None = None,
                 min_clips_per_task: int = 8):
        store = SceneStore.open(path)
        self.path = path
        self.indices = store.indices(split)
        if self.indices.size == 0:
            raise ValueError(f"{path}: split {split!r} has no complete clips")
        self.arrays = tuple(arrays or store.array_names)
        self.align = store.clips_per_chunk
        self.min_clips = min_clips_per_task
        self._clip_bytes = sum(int(np.prod(store.array(n).shape[1:])) * store.array(n).dtype.itemsize
                               for n in self.arrays)

    def estimate_inmemory_data_size(self) -> int:
        return int(self.indices.size) * self._clip_bytes

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        path, arrays = self.path, self.arrays

        def make(start: int, stop: int) -> ReadTask:
            def read() -> Iterator:
                from ray.data.block import BlockAccessor

                batch = SceneStore.open(path).read(slice(start, stop), arrays)
                batch["index"] = np.arange(start, stop, dtype=np.int64)
                yield BlockAccessor.batch_to_block(batch)

            meta = BlockMetadata(num_rows=stop - start, size_bytes=(stop - start) * self._clip_bytes,
                                 exec_stats=None, input_files=None)
            return ReadTask(read, meta, per_task_row_limit=per_task_row_limit)

        return [make(a, b) for a, b in task_ranges(self.indices, parallelism, self.min_clips, self.align)]


def read_scenes(path: str, split: str | None = None, arrays: tuple[str, ...] | None = None,
                min_clips_per_task: int = 8, override_num_blocks: int | None = None):
    """A ``ray.data.Dataset`` with one row per complete clip (columns = arrays + ``index``)."""
    import ray

    return ray.data.read_datasource(SceneDatasource(path, split, arrays, min_clips_per_task),
                                    override_num_blocks=override_num_blocks)
