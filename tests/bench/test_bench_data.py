"""`dcgen bench data` on a tiny debug store: every field present with sane values (no timing assertions),
and the bad settings it refuses."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dcgen.bench.data import DataBenchConfig, bench_data, store_size
from dcgen.data.grid import grid
from dcgen.data.store import SceneStore

G = grid("debug")


def test_bench_data_on_a_debug_store(ray_local, tmp_path):
    workdir = tmp_path / "bench"
    config = DataBenchConfig(num_clips=8, preset="debug", workers=(1, 2), read_repeats=1, clips_per_read=8)
    record = bench_data(config, str(workdir), keep=True)
    json.dumps(record)  # JSON-able as written by the command

    assert record["config"]["workers"] == [1, 2] and record["config"]["preset"] == "debug"
    m = record["machine"]
    assert m["cpu_count"] >= 1 and m["usable_cores"] >= 1 and m["ray_cpus"] >= 1 and m["versions"]["zarr"]
    assert set(record["load"]) == {"start", "after_synth", "after_write", "end"}

    runs = record["synth"]["runs"]
    assert [r["workers"] for r in runs] == [1, 2]
    assert all(r["clips_per_s"] > 0 and r["seconds"] > 0 for r in runs)

    size = record["size"]
    assert size["clips"] == 8
    assert set(size["arrays"]) == {"occupancy", "mask", "trajectory", "ego_pose", "command", "layout", "bev"}
    assert size["arrays"]["occupancy"]["raw_bytes_per_clip"] == 4 * 32 * 32 * 4
    assert size["raw_bytes_per_clip"] == sum(a["raw_bytes_per_clip"] for a in size["arrays"].values())
    assert size["ratio"] > 1 and size["occupancy_ratio"] > size["ratio"]  # small arrays compress worse

    write = record["write"]
    assert write["clips"] == 8 and write["mb_per_s"] > 0
    assert write["uncompressed_mb"] == pytest.approx(8 * size["raw_bytes_per_clip"] / 1e6, abs=0.1)

    read = record["read"]
    assert read["clips"] == 8 and len(read["plain"]["runs"]) == len(read["ray_data"]["runs"]) == 1
    assert read["plain"]["best_mb_per_s"] > 0 and read["ray_data"]["best_clips_per_s"] > 0
    assert read["ratio_best"] == pytest.approx(  # the ratio is recorded to 3 decimals: small on a loaded machine
        read["ray_data"]["best_clips_per_s"] / read["plain"]["best_clips_per_s"], rel=0.01, abs=5e-4)

    t = record["targets"]
    assert set(t) == {"synth_1000_clips_seconds", "ray_read_vs_plain", "compression_vs_raw_uint8"}
    assert all(isinstance(v["passed"], bool) and v["threshold"] > 0 for v in t.values())
    assert t["compression_vs_raw_uint8"]["value"] == size["ratio"]
    assert record["all_targets_passed"] == all(v["passed"] for v in t.values())

    # the last worker count's store is the one measured; the written copy stays with keep=True
    assert sorted(p.name for p in workdir.iterdir()) == ["synth-2w.zarr", "write.zarr"]
    assert SceneStore.open(str(workdir / "write.zarr")).num_clips == 8


@pytest.mark.parametrize("changes, message", [
    ({"num_clips": 0}, "--clips must be >= 1, got 0"),
    ({"workers": ()}, "--workers must be one or more counts >= 1, got \\[\\]"),
    ({"workers": (2, 0)}, "--workers must be one or more counts >= 1, got \\[2, 0\\]"),
    ({"read_repeats": 0}, "--repeats must be >= 1, got 0"),
    ({"clips_per_read": 12}, "clips_per_read=12: expected a positive multiple of 8"),
    ({"preset": "huge"}, "unknown preset 'huge'"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        bench_data(DataBenchConfig(**changes), str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()


def test_a_non_empty_workdir_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not an empty directory"):
        bench_data(DataBenchConfig(num_clips=8, preset="debug"), str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_size_of_an_empty_store_is_an_error(tmp_path):
    SceneStore.create(tmp_path / "e.zarr", G, source="test", capacity=0)
    with pytest.raises(ValueError, match="no complete clips to measure"):
        store_size(str(tmp_path / "e.zarr"))


def test_cli_reports_bad_options_in_one_line(tmp_path):
    from dcgen.cli import app

    result = CliRunner().invoke(app, ["bench", "data", "--clips", "0", "--out", str(tmp_path / "b.json")])
    assert result.exit_code == 2
    assert "error: --clips must be >= 1, got 0" in result.output
    assert not (tmp_path / "b.json").exists()
