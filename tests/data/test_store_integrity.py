"""Damaged scene stores: every clip the manifest lists reads back as written or fails naming the clip and array;
``dcgen data verify`` reports each kind of damage; ``render``, ``export`` and ``encode`` refuse damaged clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from test_store import G, make_batch, rows
from typer.testing import CliRunner

from dcgen.cli import app
from dcgen.data.store import SceneStore

runner = CliRunner()


def good_store(path: Path, n: int = 16) -> SceneStore:
    store = SceneStore.create(path, G, source="test", capacity=n)
    store.write(0, make_batch(n), rows(n))
    store.finalize()
    return SceneStore.open(path)


def chunk_files(path: Path, array: str) -> list[Path]:
    return sorted(p for p in (path / array / "c").rglob("*") if p.is_file())


def test_intact_store_verifies(tmp_path):
    store = good_store(tmp_path / "a.zarr")
    report = store.verify()
    assert report["ok"] and report["checked"] == 16 and report["damaged"] == {}
    result = runner.invoke(app, ["data", "verify", str(tmp_path / "a.zarr")])
    assert result.exit_code == 0 and "16 of 16 listed clips checked: ok" in result.output


def test_missing_occupancy_shard_fails_naming_the_clip(tmp_path):
    path = tmp_path / "a.zarr"
    good_store(path)
    shards = chunk_files(path, "occupancy")
    assert len(shards) == 2  # 8 clips per shard
    shards[1].unlink()  # clips 8..15 now read as Zarr's fill value (all free)
    store = SceneStore.open(path)
    np.testing.assert_array_equal(store.read(slice(0, 8))["occupancy"], make_batch(16)["occupancy"][:8])
    with pytest.raises(ValueError, match=r"a\.zarr: clip 8: array 'occupancy' reads back empty .* chunk is missing"):
        store.read(slice(8, 9))
    with pytest.raises(ValueError, match=r"clip 9: array 'occupancy'"):
        store.read([0, 9])
    report = store.verify()
    assert not report["ok"] and sorted(map(int, report["damaged"])) == list(range(8, 16))
    result = runner.invoke(app, ["data", "verify", str(path)])
    assert result.exit_code == 1
    assert "damaged: clip 8: array 'occupancy' reads back empty" in result.output
    assert "16 of 16 listed clips checked: DAMAGED (8 clips)" in result.output


def test_missing_small_array_chunk_is_caught(tmp_path):
    path = tmp_path / "a.zarr"
    good_store(path)
    chunk_files(path, "trajectory")[0].unlink()  # one chunk holds the trajectories of clips 0..7
    report = SceneStore.open(path).verify()
    assert sorted(map(int, report["damaged"])) == list(range(8))
    assert "array 'trajectory'" in report["damaged"]["0"][0]
    with pytest.raises(ValueError, match=r"clip 3: array 'trajectory'"):
        SceneStore.open(path).read([3], ("trajectory",))


def test_truncated_chunk_names_array_and_clips(tmp_path):
    path = tmp_path / "a.zarr"
    good_store(path)
    shard = chunk_files(path, "occupancy")[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    store = SceneStore.open(path)
    with pytest.raises(ValueError, match=r"a\.zarr: .*clip 2") as info:
        store.read(slice(2, 3))
    assert "occupancy" in str(info.value)
    report = store.verify()
    assert not report["ok"] and "2" in report["damaged"] and "occupancy" in report["damaged"]["2"][0]
    # the untouched shard still reads
    assert store.read(slice(8, 16))["occupancy"].shape[0] == 8


def test_out_of_range_class_id_written_behind_the_store(tmp_path):
    path = tmp_path / "a.zarr"
    good_store(path)
    zarr.open_group(str(path), mode="r+")["occupancy"][5, 0, 0, 0, 0] = 200
    store = SceneStore.open(path)
    with pytest.raises(ValueError, match=r"clip 5: array 'occupancy' holds class id 200, expected 0\.\.10"):
        store.read(slice(0, 8))
    assert list(store.verify()["damaged"]) == ["5"]


def test_arrays_shorter_than_the_manifest(tmp_path):
    path = tmp_path / "a.zarr"
    good_store(path)
    group = zarr.open_group(str(path), mode="r+")
    for name in SceneStore.open(path).array_names:
        group[name].resize((12, *group[name].shape[1:]))
    store = SceneStore.open(path)
    with pytest.raises(ValueError, match=r"the manifest lists clip 15 but the arrays hold 12 clips .*verify"):
        store.manifest()
    report = store.verify()
    assert not report["ok"] and "4 clips (12..15) beyond the arrays' 12 clips" in report["problems"][0]
    assert report["checked"] == 12
    result = runner.invoke(app, ["data", "info", str(path)])
    assert result.exit_code == 2 and "error:" in result.output and "arrays hold 12 clips" in result.output
    result = runner.invoke(app, ["render", str(path), "--clip", "13", "--out", str(tmp_path / "x.gif")])
    assert result.exit_code == 2 and "arrays hold 12 clips" in result.output and not (tmp_path / "x.gif").exists()


def test_unreadable_manifest_part_is_named(tmp_path):
    path = tmp_path / "a.zarr"
    good_store(path)
    part = sorted((path / "manifest").glob("part-*.parquet"))[0]
    part.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match=r"manifest part part-000000000-000000016\.parquet is unreadable"):
        SceneStore.open(path).manifest()
    report = SceneStore.open(path).verify()
    assert not report["ok"] and "is unreadable" in report["problems"][0]


def test_render_and_export_refuse_a_missing_chunk(tmp_path):
    path = tmp_path / "a.zarr"
    good_store(path)
    chunk_files(path, "occupancy")[1].unlink()
    gif = tmp_path / "c9.gif"
    result = runner.invoke(app, ["render", str(path), "--clip", "9", "--out", str(gif)])
    assert result.exit_code == 2 and "clip 9: array 'occupancy' reads back empty" in result.output
    assert not gif.exists()
    result = runner.invoke(app, ["render", str(path), "--clip", "2", "--out", str(tmp_path / "c2.gif")])
    assert result.exit_code == 0, result.output
    for fmt in ("npy", "occ3d-npz"):
        out = tmp_path / f"export-{fmt}"
        result = runner.invoke(app, ["export", str(path), "--format", fmt, "--out", str(out)])
        assert result.exit_code == 2 and "clip 8: array 'occupancy' reads back empty" in result.output, result.output


def test_ray_data_read_refuses_a_missing_chunk(tmp_path, ray_local):
    from dcgen.data.ray_dataset import read_scenes

    path = tmp_path / "a.zarr"
    good_store(path)
    rows_ok = read_scenes(str(path), arrays=("occupancy",)).count()
    assert rows_ok == 16
    chunk_files(path, "occupancy")[0].unlink()
    with pytest.raises(Exception, match=r"clip 0: array 'occupancy' reads back empty"):
        read_scenes(str(path), arrays=("occupancy",)).materialize()


def test_staged_build_swaps_in_only_on_success(tmp_path):
    from dcgen.data.integrity import staged

    path = tmp_path / "a.zarr"
    good_store(path, 8)
    with pytest.raises(ValueError, match=r"a\.zarr: already exists; pass --overwrite"):
        with staged(str(path), overwrite=False):
            pass
    with pytest.raises(RuntimeError, match="half-way"):
        with staged(str(path), overwrite=True) as build:
            store = SceneStore.create(build, G, source="new", capacity=8)
            store.write(0, make_batch(8, seed=3), rows(8))
            raise RuntimeError("failed half-way")
    assert SceneStore.open(path).meta["source"] == "test" and SceneStore.open(path).verify()["ok"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]
    with staged(str(path), overwrite=True) as build:
        SceneStore.create(build, G, source="new", capacity=8).write(0, make_batch(8, seed=3), rows(8))
    assert SceneStore.open(path).meta["source"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]
