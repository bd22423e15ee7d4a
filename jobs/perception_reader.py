"""Example: feed a `dcgen synth` store to perception training, with a torch DataLoader or with Ray Data.

    python jobs/perception_reader.py scenes.zarr            # torch: dcgen.data.torch_dataset.SceneDataset
    python jobs/perception_reader.py scenes.zarr --ray      # Ray Data: dcgen.data.ray_dataset.read_scenes

Both read only the clips the manifest lists (a store being written, or an interrupted job, is read consistently).
Beside the usual arrays a synth store holds the requested conditions (`cond_*`) and, in its manifest, each scene's
provenance (seed, attempt, scenario entry, conditions, gate numbers); `select_by_manifest` shows how to train on a
subset, e.g. only left turns. `SceneDataset(random_flip=True)` mirrors the core arrays consistently; it does not know
the `cond_*` arrays, so leave those out when flipping. On a cluster, submit it as a Ray Job:
`ray job submit --working-dir . -- python jobs/perception_reader.py s3://bucket/scenes.zarr --ray`.
"""

from __future__ import annotations

import argparse

import numpy as np

ARRAYS = ("occupancy", "trajectory", "command", "layout")


def collate(items: list[dict]) -> dict:
    import torch

    return {k: torch.from_numpy(np.stack([np.asarray(it[k]) for it in items])) for k in items[0]}


def torch_loader(path: str, batch_size: int = 8, arrays: tuple[str, ...] = ARRAYS, random_flip: bool = True):
    """A shuffling ``torch.utils.data.DataLoader`` over the store's train clips."""
    from torch.utils.data import DataLoader

    from dcgen.data.torch_dataset import SceneDataset

    dataset = SceneDataset(path, split="train", arrays=arrays, random_flip=random_flip, seed=0)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate, num_workers=0)


def ray_batches(path: str, batch_size: int = 8, arrays: tuple[str, ...] = ARRAYS):
    """Torch batches streamed by Ray Data (one read task per group of whole shards; scales across nodes)."""
    from dcgen.data.ray_dataset import read_scenes

    return read_scenes(path, split="train", arrays=arrays).iter_torch_batches(batch_size=batch_size)


def select_by_manifest(path: str, **equal) -> np.ndarray:
    """Clip indices whose manifest row matches every ``column=value`` given (e.g. ``entry_name="left"``)."""
    import pyarrow.compute as pc

    from dcgen.data.store import SceneStore

    table = SceneStore.open(path).manifest()
    mask = None
    for column, value in equal.items():
        m = pc.equal(table.column(column), value)
        mask = m if mask is None else pc.and_(mask, m)
    rows = table if mask is None else table.filter(mask)
    return rows.column("index").to_numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--ray", action="store_true", help="read with Ray Data instead of a torch DataLoader")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    if args.ray:
        from dcgen.runtime import init_ray

        init_ray()
        batches = ray_batches(args.store, args.batch_size)
    else:
        batches = iter(torch_loader(args.store, args.batch_size))
    batch = next(iter(batches))
    print({k: (tuple(v.shape), str(v.dtype)) for k, v in batch.items()})
    from dcgen.data.store import SceneStore

    table = SceneStore.open(args.store).manifest()
    if "conditions" in table.column_names:  # a synth store: scenes per set of requested conditions
        kinds, counts = np.unique(np.asarray(table.column("conditions").to_pylist(), dtype=object).astype(str),
                                  return_counts=True)
        print({(str(k) or "none"): int(c) for k, c in zip(kinds, counts)})


if __name__ == "__main__":
    main()
