"""Scene store: round trip, self-description readable by plain zarr, crash consistency, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from dcgen.data.grid import grid
from dcgen.data.store import SceneStore

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
G = grid("debug")


def make_batch(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    occ = rng.integers(0, G.num_classes, (n, *G.shape), dtype=np.uint8)
    lx, ly = G.layout_size
    return {
        "occupancy": occ,
        "mask": occ > 0,
        "trajectory": rng.normal(size=(n, G.num_frames, 3)).astype(np.float32),
        "ego_pose": np.tile(np.eye(4, dtype=np.float32), (n, G.num_frames, 1, 1)),
        "command": rng.integers(0, 4, n).astype(np.uint8),
        "layout": rng.integers(0, 2, (n, G.num_frames, lx, ly)).astype(np.uint8),
        "bev": occ[:, 0].max(axis=-1),
    }


def rows(n: int, split: str = "train") -> list[dict]:
    return [{"scene": f"s{i}", "frame_start": i, "split": split} for i in range(n)]


def test_round_trip_and_manifest(tmp_path):
    store = SceneStore.create(tmp_path / "a.zarr", G, source="test", capacity=16)
    b = make_batch(8)
    store.write(0, b, rows(8))
    store.append(make_batch(3, 1), rows(3, "val"))
    store.finalize()
    again = SceneStore.open(tmp_path / "a.zarr")
    assert again.num_clips == 11 and again.capacity == 11
    assert again.indices("val").tolist() == [8, 9, 10]
    got = again.read(slice(0, 8))
    for name, value in b.items():
        np.testing.assert_array_equal(got[name], value)
    hist = again.class_histogram("train")
    np.testing.assert_array_equal(hist, np.bincount(b["occupancy"].ravel(), minlength=G.num_classes))
    table = again.manifest()
    assert table.column("scene").to_pylist()[:2] == ["s0", "s1"]


def test_plain_zarr_reads_self_description(tmp_path):
    import zarr

    store = SceneStore.create(tmp_path / "a.zarr", G, source="test", capacity=8)
    store.write(0, make_batch(8), rows(8))
    store.finalize()
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
    meta = group.attrs["dcgen"]
    jsonschema.validate(meta, json.loads((SCHEMAS / "scene-store.schema.json").read_text()))
    for name, info in meta["arrays"].items():
        arr = group[name]
        assert arr.metadata.dimension_names == tuple(info["dims"])
        assert arr.attrs["description"] == info["description"]
    assert [c["name"] for c in meta["classes"]][:3] == ["free", "building", "barrier"]
    assert group["occupancy"].shape == (8, *G.shape)


def test_manifest_rows_match_schema(tmp_path):
    store = SceneStore.create(tmp_path / "a.zarr", G, source="test", capacity=8)
    store.write(0, make_batch(8), rows(8))
    schema = json.loads((SCHEMAS / "manifest.schema.json").read_text())
    for row in store.manifest().to_pylist():
        jsonschema.validate(row, schema)


def test_uncommitted_block_is_not_listed(tmp_path):
    """A writer that dies after writing arrays but before its manifest part leaves those clips out."""
    store = SceneStore.create(tmp_path / "a.zarr", G, source="test", capacity=16)
    store.write(0, make_batch(8), rows(8))
    store.array("occupancy")[8:16] = make_batch(8, 2)["occupancy"]  # arrays written, no commit
    reopened = SceneStore.open(tmp_path / "a.zarr")
    assert reopened.indices().tolist() == list(range(8))


def test_parallel_writes_must_be_shard_aligned(tmp_path):
    store = SceneStore.create(tmp_path / "a.zarr", G, source="test", capacity=16)
    with pytest.raises(ValueError, match="not aligned to shards of 8"):
        store.write(4, make_batch(8), rows(8))


def test_refuses_to_overwrite_written_clips(tmp_path):
    store = SceneStore.create(tmp_path / "a.zarr", G, source="test", capacity=8)
    b = make_batch(8)
    store.write(0, b, rows(8))
    with pytest.raises(ValueError, match="already written"):
        store.write(0, make_batch(8, 5), rows(8))
    np.testing.assert_array_equal(SceneStore.open(tmp_path / "a.zarr").read(slice(0, 8))["occupancy"],
                                  b["occupancy"])


def test_existing_path_needs_overwrite(tmp_path):
    SceneStore.create(tmp_path / "a.zarr", G, source="test")
    with pytest.raises(ValueError, match="already exists"):
        SceneStore.create(tmp_path / "a.zarr", G, source="test")


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.update(occupancy=b["occupancy"][:, :2]), "'occupancy' has shape"),
    (lambda b: b.update(occupancy=np.full_like(b["occupancy"], 11)), "class id 11 out of range; expected 0..10"),
    (lambda b: b.update(command=np.full_like(b["command"], 7)), "'command': value 7 out of range"),
    (lambda b: b.update(trajectory=b["trajectory"].astype(np.float64)), "'trajectory' has dtype float64"),
    (lambda b: b.update(ego_pose=np.full_like(b["ego_pose"], np.nan)), "'ego_pose' holds NaN"),
    (lambda b: b.pop("bev"), "lacks arrays \\['bev'\\]"),
])
def test_bad_batches_are_refused_and_nothing_is_written(tmp_path, mutate, message):
    store = SceneStore.create(tmp_path / "a.zarr", G, source="test", capacity=16)
    good = make_batch(8)
    store.write(0, good, rows(8))
    bad = make_batch(8, 3)
    mutate(bad)
    with pytest.raises(ValueError, match=message):
        store.write(8, bad, rows(8))
    reopened = SceneStore.open(tmp_path / "a.zarr")
    assert reopened.indices().tolist() == list(range(8))
    np.testing.assert_array_equal(reopened.read(slice(0, 8))["occupancy"], good["occupancy"])


def test_open_rejects_other_schema_version(tmp_path):
    import zarr

    SceneStore.create(tmp_path / "a.zarr", G, source="test")
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="r+")
    meta = dict(group.attrs["dcgen"])
    meta["schema_version"] = 99
    group.attrs["dcgen"] = meta
    with pytest.raises(ValueError, match="schema version 99; this dcgen reads version 1"):
        SceneStore.open(tmp_path / "a.zarr")


def test_open_rejects_mismatched_array_shape(tmp_path):
    import zarr

    SceneStore.create(tmp_path / "a.zarr", G, source="test", capacity=8)
    group = zarr.open_group(str(tmp_path / "a.zarr"), mode="r+")
    del group["bev"]
    group.create_array("bev", shape=(8, 5, 5), dtype="uint8")
    with pytest.raises(ValueError, match="array 'bev' has per-clip shape \\[5, 5\\], expected \\[32, 32\\]"):
        SceneStore.open(tmp_path / "a.zarr")


def test_open_rejects_non_store(tmp_path):
    with pytest.raises(ValueError, match="no scene store there"):
        SceneStore.open(tmp_path / "missing.zarr")
    import zarr

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    with pytest.raises(ValueError, match="not a dcgen scene store"):
        SceneStore.open(tmp_path / "plain.zarr")
