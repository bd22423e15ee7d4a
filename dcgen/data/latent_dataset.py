"""A Ray Data ``Datasource`` over a latent store: one read task per contiguous run of a split's rows, each row
with its previous clip's latent joined in (``LatentStore.training_batch``), so DiT workers get ready batches.

Holds only the path and row ranges (it is pickled), like ``ray_dataset.SceneDatasource``.
"""

from __future__ import annotations

from typing import Iterator

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from dcgen.data.latent_store import LatentStore
from dcgen.data.ray_dataset import task_ranges


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
