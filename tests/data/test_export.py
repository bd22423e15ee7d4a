"""``dcgen export``: the occ3d-npz tree read the way the public Occ3D-nuScenes loaders read it (annotations.json ->
scene_infos -> gt_path -> labels.npz), camera vs LiDAR masks, timestamps, a round trip through dcgen's own
occ3d-nuscenes importer, and damaged stores refused without losing an earlier export."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from debug_models import write_city_store
from typer.testing import CliRunner

from dcgen.cli import app
from dcgen.data.classes import NUSCENES_FREE, NUSCENES_TO_UNIFIED
from dcgen.data.derive import derive_side_info, pose_from_xyyaw
from dcgen.data.export import END_OF_SCENE, _check_clip, export_store, frame_timestamps
from dcgen.data.grid import GRIDS
from dcgen.data.importers.source_format import MASK_CAMERA
from dcgen.data.store import SceneStore

runner = CliRunner()


def load_occ3d(root: Path) -> dict[str, list[dict]]:
    """What an Occ3D-nuScenes loader does with a ``trainval/`` tree: every scene of every ``*_split`` list, its
    frames from ``scene_infos`` in file order, each label file opened through ``gt_path`` relative to the root, the
    prev/next chain followed. Checks the invariants those loaders rely on; returns scene -> frames."""
    ann = json.loads((root / "annotations.json").read_text())
    scenes = {}
    for split in ("train", "val", "test"):
        for scene in ann[f"{split}_split"]:
            infos = ann["scene_infos"][scene]
            tokens = list(infos)
            frames = []
            for k, token in enumerate(tokens):
                info = infos[token]
                assert info["prev"] == (tokens[k - 1] if k else END_OF_SCENE)
                assert info["next"] == (tokens[k + 1] if k + 1 < len(tokens) else END_OF_SCENE)
                if info["next"] != END_OF_SCENE:
                    assert infos[info["next"]]["prev"] == token
                assert isinstance(info["timestamp"], int) and isinstance(info["camera_sensor"], dict)
                pose = info["ego_pose"]
                assert len(pose["translation"]) == 3 and len(pose["rotation"]) == 4
                assert not Path(info["gt_path"]).is_absolute()
                with np.load(root / info["gt_path"]) as npz:
                    labels = {key: npz[key] for key in ("semantics", "mask_lidar", "mask_camera")}
                shape = labels["semantics"].shape
                for key, arr in labels.items():
                    assert arr.dtype == np.uint8 and arr.shape == shape and arr.ndim == 3, key
                assert int(labels["semantics"].max()) <= NUSCENES_FREE
                frames.append({"token": token, "split": split, **info, **labels})
            stamps = [f["timestamp"] for f in frames]
            assert all(b > a for a, b in zip(stamps, stamps[1:])), scene
            scenes[scene] = frames
    all_stamps = [f["timestamp"] for frames in scenes.values() for f in frames]
    assert len(set(all_stamps)) == len(all_stamps)
    return scenes


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """3 scenes x 2 consecutive clips of the debug grid (frame_start 0 and 4), scene 2 in val; LiDAR mask only."""
    return write_city_store(tmp_path_factory.mktemp("city") / "city.zarr", num_scenes=3, val_every=3)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---- layout -------------------------------------------------------------------------------------------------------

def test_occ3d_export_reads_like_the_public_loaders(city, tmp_path):
    src = SceneStore.open(city)
    out = tmp_path / "occ3d"
    summary = export_store(city, "occ3d-npz", out)
    assert summary["masks"] == {"mask_lidar": "store array 'mask'",
                                "mask_camera": "all ones: the store has no 'mask_camera' array"}
    scenes = load_occ3d(out)
    rows = src.manifest().to_pylist()
    assert list(scenes) == [f"clip-{r['index']:09d}" for r in rows if r["split"] == "train"] + \
        [f"clip-{r['index']:09d}" for r in rows if r["split"] == "val"]
    period = int(1e6 / src.grid.frame_rate)
    offsets = []
    for r in rows:
        frames = scenes[f"clip-{r['index']:09d}"]
        clip = src.read([r["index"]])
        assert [f["gt_path"] for f in frames] == [f"gts/clip-{r['index']:09d}/{f['token']}/labels.npz"
                                                  for f in frames]
        sem = np.stack([f["semantics"] for f in frames])
        assert np.array_equal(NUSCENES_TO_UNIFIED[sem], clip["occupancy"][0])
        assert (sem[clip["occupancy"][0] == 0] == NUSCENES_FREE).all()
        assert np.array_equal(np.stack([f["mask_lidar"] for f in frames]), clip["mask"][0].astype(np.uint8))
        assert all(f["mask_camera"].all() for f in frames)
        stamps = np.array([f["timestamp"] for f in frames])
        # frame frame_start + t at the grid's rate, shifted by a per-clip offset
        offset = stamps - (r["frame_start"] + np.arange(len(frames))) * period
        assert (offset == offset[0]).all()
        offsets.append(int(offset[0]))
        np.testing.assert_allclose([f["ego_pose"]["translation"] for f in frames], clip["ego_pose"][0, :, :3, 3],
                                   atol=1e-5)
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert all(o % 1_000_000 == 0 for o in offsets)


def test_timestamps_rise_within_and_across_clips():
    starts = [0, 4, 0, 30]
    stamps = frame_timestamps(starts, 4, 2.0)
    assert stamps.shape == (4, 4) and (np.diff(stamps, axis=1) == 500_000).all()
    assert (np.diff(stamps.reshape(-1)) > 0).all()
    assert (stamps - (np.array(starts)[:, None] + np.arange(4)) * 500_000).std(axis=1).max() == 0
    with pytest.raises(ValueError, match=r"grid frame_rate 0\.0 Hz cannot give distinct microsecond timestamps; "
                                         r"expected 0 < frame_rate <= 1e6"):
        frame_timestamps(starts, 4, 0.0)
    with pytest.raises(ValueError, match="manifest frame_start -1 is negative; expected >= 0"):
        frame_timestamps([-1], 4, 2.0)


def test_store_without_masks_exports_all_ones_and_says_so(city, tmp_path):
    src = SceneStore.open(city)
    clips = src.read(src.indices("val"), [n for n in src.array_names if n != "mask"])
    bare = SceneStore.create(str(tmp_path / "bare.zarr"), src.grid, source="test", with_mask=False)
    bare.append(clips, [{"scene": "s", "frame_start": 4 * k, "split": "test"} for k in range(len(clips["command"]))])
    logged = []
    summary = export_store(str(tmp_path / "bare.zarr"), "occ3d-npz", tmp_path / "out", log=logged.append)
    assert summary["masks"] == {"mask_lidar": "all ones: the store has no 'mask' array",
                                "mask_camera": "all ones: the store has no 'mask_camera' array"}
    assert logged == ["  mask_lidar: all ones: the store has no 'mask' array",
                      "  mask_camera: all ones: the store has no 'mask_camera' array"]
    scenes = load_occ3d(tmp_path / "out")
    assert len(scenes) == 2 and all(f["split"] == "test" and f["mask_lidar"].all() and f["mask_camera"].all()
                                    for frames in scenes.values() for f in frames)


# ---- camera mask and the round trip through the occ3d-nuscenes importer ------------------------------------------

def _occ3d_store(path: Path) -> str:
    """2 clips of 4 frames on the Occ3D grid (200x200x16, which the importer requires) at 2 Hz, every unified
    class present, a LiDAR mask and a different camera mask, a turning ego."""
    grid = replace(GRIDS["occ3d"], num_frames=4, frame_rate=2.0)
    rng = np.random.default_rng(0)
    store = SceneStore.create(str(path), grid, source="test-occ3d", with_mask=True, extra_arrays=(MASK_CAMERA,))
    clips = []
    for c in range(2):
        occ = np.zeros(grid.shape, dtype=np.uint8)
        occ[:, :, :, 0] = 6
        occ[:, 40:160, 40:160, 1:6] = rng.integers(0, grid.num_classes, (4, 120, 120, 5), dtype=np.uint8)
        mask = np.zeros(grid.shape, dtype=bool)
        mask[:, :, :150] = True
        camera = mask & (rng.random(grid.shape) < 0.5)
        poses = np.stack([pose_from_xyyaw(10.0 * c + 2.0 * k, 1.0, 0.03 * k, z=0.5) for k in range(4)])
        clips.append({"occupancy": occ, "mask": mask, "mask_camera": camera,
                      **derive_side_info(occ, poses, grid.layout_downsample)})
    batch = {k: np.stack([c[k] for c in clips]) for k in clips[0]}
    store.append(batch, [{"scene": "scene-a", "frame_start": 3 * k, "split": "train"} for k in range(2)])
    return str(path)


@pytest.fixture(scope="module")
def occ3d_export(tmp_path_factory):
    """The Occ3D-grid store and its occ3d-npz export (a ``trainval/``-like tree) with the export's summary."""
    root = tmp_path_factory.mktemp("occ3d")
    src_path = _occ3d_store(root / "occ3d.zarr")
    out = root / "trainval"
    return src_path, out, export_store(src_path, "occ3d-npz", out)


def test_camera_mask_comes_from_the_store(occ3d_export):
    src_path, out, summary = occ3d_export
    assert summary["masks"] == {"mask_lidar": "store array 'mask'", "mask_camera": "store array 'mask_camera'"}
    src = SceneStore.open(src_path)
    for i, frames in enumerate(load_occ3d(out).values()):
        clip = src.read([i])
        assert np.array_equal(np.stack([f["mask_camera"] for f in frames]), clip["mask_camera"][0].astype(np.uint8))
        assert np.array_equal(np.stack([f["mask_lidar"] for f in frames]), clip["mask"][0].astype(np.uint8))
        assert not np.array_equal(frames[0]["mask_camera"], frames[0]["mask_lidar"])


def test_round_trip_through_the_occ3d_nuscenes_reader(occ3d_export):
    """The importer's own reader (list, scan, decode) gives back the store's ids, masks and poses."""
    from dcgen.data.importers.occ3d_nuscenes import FORMAT

    src_path, out, _ = occ3d_export
    src = SceneStore.open(src_path)
    refs = FORMAT.list_scenes(out, "train")
    assert [r.name for r in refs] == ["clip-000000000", "clip-000000001"]
    for i, ref in enumerate(refs):
        scene = FORMAT.scan_scene(ref)
        clip = src.read([i])
        back = [FORMAT.read_frame(f) for f in scene.frames]
        for name in ("occupancy", "mask", "mask_camera"):
            assert np.array_equal(np.stack([b[name] for b in back]), clip[name][0]), name
        np.testing.assert_allclose(scene.ego_pose_F44, clip["ego_pose"][0], atol=1e-5)


@pytest.mark.slow
def test_round_trip_through_import_dataset(occ3d_export, tmp_path, ray_local):
    """The whole importer (Ray tasks, windows, side information) on the export gives back the store's clips."""
    from dcgen.data.importers import ImportConfig, import_dataset

    src_path, out, _ = occ3d_export
    src = SceneStore.open(src_path)
    back_path = str(tmp_path / "back.zarr")
    result = import_dataset(out, back_path, ImportConfig("occ3d-nuscenes", split="train", num_frames=4))
    back = SceneStore.open(back_path)
    assert result.num_clips == 2 and back.grid.size == src.grid.size
    assert back.manifest().column("scene").to_pylist() == ["clip-000000000", "clip-000000001"]
    a, b = src.read([0, 1]), back.read([0, 1])
    for name in ("occupancy", "mask", "mask_camera", "command", "layout", "bev"):
        assert np.array_equal(b[name], a[name]), name
    np.testing.assert_allclose(b["trajectory"], a["trajectory"], atol=1e-4)
    np.testing.assert_allclose(b["ego_pose"], a["ego_pose"], atol=1e-5)


# ---- bad data and --out -------------------------------------------------------------------------------------------

def _damaged_copy(city: str, tmp_path: Path, clip: int) -> str:
    import zarr

    path = str(tmp_path / "damaged.zarr")
    shutil.copytree(city, path)
    zarr.open_group(path, mode="r+")["occupancy"][clip, 0, 0, 0, 0] = 200
    return path


@pytest.mark.parametrize("fmt", ["occ3d-npz", "npy"])
def test_out_of_range_class_ids_refused_and_earlier_export_kept(city, tmp_path, fmt):
    out = tmp_path / "exports" / "out"
    export_store(city, fmt, out)
    before = _tree(out)
    damaged = _damaged_copy(city, tmp_path, clip=3)
    message = rf"{re.escape(damaged)}: clip 3: array 'occupancy'.*class id 200.*expected 0\.\.10"
    with pytest.raises(ValueError, match=message):
        export_store(damaged, fmt, out, overwrite=True)
    assert _tree(out) == before and _leftovers(out.parent) == []
    fresh = tmp_path / "exports" / "fresh"
    with pytest.raises(ValueError, match=message):
        export_store(damaged, fmt, fresh)
    assert not fresh.exists() and _leftovers(out.parent) == []

    result = runner.invoke(app, ["export", damaged, "--format", fmt, "--out", str(out), "--overwrite"])
    assert result.exit_code == 2 and re.search(message, " ".join(result.output.split())), result.output
    assert _tree(out) == before


def test_clip_check_names_the_clip_and_what_was_expected():
    occ = np.zeros((4, 8, 8, 2), dtype=np.uint8)
    pose = np.tile(np.eye(4, dtype=np.float32), (4, 1, 1))
    _check_clip({"occupancy": occ, "ego_pose": pose}, 11, "s.zarr: clip 7")
    occ[1, 2, 3, 1] = 11
    with pytest.raises(ValueError, match=r"s\.zarr: clip 7: array 'occupancy': class id 11 is out of range; "
                                         r"expected 0\.\.10"):
        _check_clip({"occupancy": occ, "ego_pose": pose}, 11, "s.zarr: clip 7")
    pose[2, 0, 3] = np.nan
    with pytest.raises(ValueError, match=r"s\.zarr: clip 7: array 'ego_pose' holds NaN or inf; expected finite"):
        _check_clip({"occupancy": np.zeros_like(occ), "ego_pose": pose}, 11, "s.zarr: clip 7")


def test_out_that_is_a_file_or_foreign_is_left_alone(city, tmp_path):
    (tmp_path / "note.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"--out .*note\.txt: exists and is not a directory"):
        export_store(city, "npy", tmp_path / "note.txt", overwrite=True)
    assert (tmp_path / "note.txt").read_text() == "keep me"
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an earlier dcgen export"):
        export_store(city, "occ3d-npz", home, overwrite=True)
    assert _tree(home) == {"notes.txt": b"keep me"} and _leftovers(tmp_path) == []
