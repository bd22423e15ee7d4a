"""``dcgen data import`` and ``dcgen data info``: success output, summaries, and one-line errors with exit code 2."""

from __future__ import annotations

import json

from source_fixtures import write_carlasc, write_nuscenes
from typer.testing import CliRunner

from dcgen.cli import app

runner = CliRunner()


def test_import_then_info(tmp_path, ray_local):
    src = write_carlasc(tmp_path / "Cartesian", {"Town01_Light": list(range(5))}, split_dir="Val")
    out = str(tmp_path / "c.zarr")
    r = runner.invoke(app, ["data", "import", "carlasc", str(src), "--out", out, "--split", "val", "--frames", "4"])
    assert r.exit_code == 0, r.output
    assert "imported 2 clips from 1 scenes (5 frames) of carlasc val" in r.output
    assert "poses from poses.txt: 1 scenes" in r.output
    r = runner.invoke(app, ["data", "info", out])
    assert r.exit_code == 0, r.output
    assert "source    carlasc" in r.output
    assert "grid      4 frames x 128x128x8 voxels, 11 classes, 10 Hz" in r.output
    assert "splits    val 2" in r.output and "commands  static 0, forward 2" in r.output
    r = runner.invoke(app, ["data", "info", out, "--json"])
    info = json.loads(r.output)
    assert info["clips"] == 2 and info["splits"] == {"val": 2} and "mask" in info["arrays"]
    r = runner.invoke(app, ["data", "import", "carlasc", str(src), "--out", out, "--split", "val", "--frames", "4"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [f"error: {out}: already exists; pass --overwrite to replace it"]
    r = runner.invoke(app, ["data", "import", "carlasc", str(src), "--out", out, "--split", "val", "--frames", "2",
                            "--stride", "3", "--overwrite"])
    assert r.exit_code == 0 and "imported 2 clips" in r.output


def test_import_errors_are_one_line(tmp_path):
    src = write_nuscenes(tmp_path / "trainval", {"scene-0001": 2})
    out = str(tmp_path / "n.zarr")
    cases = [
        (["kitti", str(src)], "error: unknown dataset 'kitti'; expected one of carlasc, occ3d-nuscenes, occ3d-waymo"),
        (["occ3d-nuscenes", str(src), "--stride", "0"], "error: --stride must be >= 1, got 0"),
        (["occ3d-nuscenes", str(src), "--split", "val"], "error: " + str(src / "annotations.json")
         + ": no scene list 'val_split' for split 'val'; it has ['train_split']"),
        (["occ3d-waymo", str(tmp_path / "nowhere")], f"error: {tmp_path / 'nowhere'}: dataset directory does not "
                                                     "exist"),
    ]
    for args, message in cases:
        r = runner.invoke(app, ["data", "import", *args, "--out", out])
        assert r.exit_code == 2, (args, r.output)
        assert r.output.strip().splitlines() == [message]
    assert not (tmp_path / "n.zarr").exists()


def test_info_on_missing_store(tmp_path):
    r = runner.invoke(app, ["data", "info", str(tmp_path / "none.zarr")])
    assert r.exit_code == 2
    assert r.output.strip() == f"error: {tmp_path / 'none.zarr'}: no scene store there"
