"""Coarse Ray Data read tasks over a scene store: index groups, block sizing, reads across runs of a split."""

from __future__ import annotations

import numpy as np
import pytest
from test_store import G, make_batch

from dcgen.data.grid import grid
from dcgen.data.ray_dataset import default_clips_per_task, index_groups, read_clips
from dcgen.data.store import SceneStore


def test_index_groups_cover_sorted_indices_cut_on_shards():
    idx = np.array([i for i in range(100) if i % 10 != 3])  # a split interleaved with another
    groups = index_groups(idx, clips_per_task=16, align=8)
    np.testing.assert_array_equal(np.concatenate(groups), idx)
    assert all(g.size >= 16 for g in groups[:-1])
    for before, after in zip(groups, groups[1:]):
        assert before[-1] // 8 != after[0] // 8  # no shard read by two tasks


def test_index_groups_of_contiguous_clips_are_exact():
    groups = index_groups(np.arange(100), clips_per_task=32, align=8)
    assert [g.size for g in groups] == [32, 32, 32, 4]


def test_index_groups_reject_an_empty_task():
    with pytest.raises(ValueError, match="clips_per_task=0"):
        index_groups(np.arange(8), clips_per_task=0, align=8)


def test_default_clips_per_task_fills_a_block_in_whole_shards():
    def clip_bytes(g):
        t, (x, y, z) = g.num_frames, g.size
        return 2 * t * x * y * z  # occupancy + mask, the large arrays

    assert default_clips_per_task(clip_bytes(grid("carlasc")), 8) == 32
    assert default_clips_per_task(clip_bytes(grid("occ3d")), 8) == 8
    with pytest.raises(ValueError, match="clip_bytes=0"):
        default_clips_per_task(0, 8)


def test_read_clips_joins_the_runs_of_a_group(tmp_path):
    store = SceneStore.create(tmp_path / "s.zarr", G, source="test", capacity=24)
    store.write(0, make_batch(24), [{"scene": "s", "split": "train"} for _ in range(24)])
    group = np.array([1, 2, 3, 7, 8, 20])
    got = read_clips(store, group, ("occupancy", "command"))
    want = store.read(group, ("occupancy", "command"))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_a_datasource_of_some_clips_of_a_split_reads_only_those(tmp_path):
    from dcgen.data.ray_dataset import SceneDatasource

    path = str(tmp_path / "s.zarr")
    store = SceneStore.create(path, G, source="test", capacity=24)
    store.write(0, make_batch(24), [{"scene": "s", "split": "val" if i % 3 == 0 else "train"} for i in range(24)])
    first = store.indices("val")[:3]
    source = SceneDatasource(path, "val", ("occupancy",), clips_per_task=8, indices=first)
    np.testing.assert_array_equal(source.indices, first)
    np.testing.assert_array_equal(np.concatenate(source.groups), first)
    with pytest.raises(ValueError, match=r"clips \[1\] are not complete clips of split 'val'"):
        SceneDatasource(path, "val", ("occupancy",), indices=[0, 1])


def test_read_scenes_gives_one_block_per_task(ray_local, tmp_path):
    from dcgen.data.ray_dataset import SceneDatasource, read_scenes

    path = str(tmp_path / "s.zarr")
    store = SceneStore.create(path, G, source="test", capacity=40)
    splits = ["val" if i % 7 == 3 else "train" for i in range(40)]
    store.write(0, make_batch(40), [{"scene": "s", "split": s} for s in splits])
    source = SceneDatasource(path, "train", ("occupancy",), clips_per_task=8)
    ds = read_scenes(path, "train", ("occupancy",), clips_per_task=8).materialize()
    assert ds.num_blocks() == source.num_tasks == len(index_groups(store.indices("train"), 8, 8))
    rows = ds.take_all()
    assert sorted(r["index"] for r in rows) == store.indices("train").tolist()


def test_datasource_names_an_unknown_array(tmp_path):
    from dcgen.data.ray_dataset import SceneDatasource

    store = SceneStore.create(tmp_path / "s.zarr", G, source="test", capacity=8)
    store.write(0, make_batch(8), [{"scene": "s"} for _ in range(8)])
    with pytest.raises(ValueError, match="no array 'semantics'"):
        SceneDatasource(str(tmp_path / "s.zarr"), arrays=("semantics",))
