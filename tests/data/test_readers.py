"""Torch and Ray Data readers over a scene store."""

from __future__ import annotations

import numpy as np
import pytest

from dcgen.data.ray_dataset import task_ranges
from dcgen.data.store import SceneStore
from dcgen.data.torch_dataset import SceneDataset, flip_y
from test_store import G, make_batch


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("readers") / "s.zarr"
    store = SceneStore.create(path, G, source="test", capacity=40)
    splits = ["val" if i % 5 == 0 else "train" for i in range(40)]
    store.write(0, make_batch(40), [{"scene": "s", "frame_start": i, "split": s} for i, s in enumerate(splits)])
    return str(path)


def test_task_ranges_cover_indices_on_shard_boundaries():
    idx = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30])
    ranges = task_ranges(idx, parallelism=4, min_clips=8, align=8)
    covered = np.concatenate([np.arange(a, b) for a, b in ranges])
    np.testing.assert_array_equal(covered, idx)
    assert all(b % 8 == 0 or b - 1 in idx for _, b in ranges)


def test_torch_dataset_split_and_items(store_path):
    ds = SceneDataset(store_path, split="val")
    assert len(ds) == 8
    clip = ds[1]
    expected = SceneStore.open(store_path).read(slice(5, 6))["occupancy"][0]
    np.testing.assert_array_equal(clip["occupancy"], expected)


def test_torch_dataset_empty_split_is_an_error(store_path):
    with pytest.raises(ValueError, match="split 'test' has no complete clips"):
        SceneDataset(store_path, split="test")


def test_flip_keeps_meaning():
    clip = {k: v[0] for k, v in make_batch(1).items()}
    clip["command"] = np.uint8(2)
    flipped = flip_y(clip)
    np.testing.assert_array_equal(flipped["occupancy"], clip["occupancy"][:, :, ::-1])
    assert int(flipped["command"]) == 3
    np.testing.assert_allclose(flipped["trajectory"][:, 1], -clip["trajectory"][:, 1])
    np.testing.assert_array_equal(flip_y(flipped)["occupancy"], clip["occupancy"])


def test_ray_dataset_reads_every_clip_of_a_split_once(ray_local, store_path):
    from dcgen.data.ray_dataset import read_scenes

    ds = read_scenes(store_path, split="train", arrays=("occupancy", "command"))
    batches = list(ds.iter_batches(batch_size=8, batch_format="numpy"))
    idx = np.concatenate([b["index"] for b in batches])
    store = SceneStore.open(store_path)
    assert sorted(idx.tolist()) == store.indices("train").tolist()
    occ = np.concatenate([b["occupancy"] for b in batches])
    np.testing.assert_array_equal(occ[np.argsort(idx)], store.read(store.indices("train"))["occupancy"])


def test_ray_dataset_carries_the_mask_as_uint8(ray_local, store_path):
    from dcgen.data.ray_dataset import read_scenes

    batches = list(read_scenes(store_path, arrays=("mask",)).iter_batches(batch_size=16, batch_format="numpy"))
    idx = np.concatenate([b["index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == np.uint8 and set(np.unique(mask).tolist()) <= {0, 1}
    from ray.data import DataContext

    assert DataContext.get_current().op_resource_reservation_enabled, "the process-wide context is left alone"
    store = SceneStore.open(store_path)
    np.testing.assert_array_equal(mask[np.argsort(idx)].astype(bool), store.read(np.sort(idx), ("mask",))["mask"])
