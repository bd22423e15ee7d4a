"""Dataset importers: tiny CarlaSC / Occ3D-nuScenes / Occ3D-Waymo directories in the real formats -> scene stores.

Checks remapping, window counts with stride and gaps, trajectory/command from known poses, masks, and that bad
input fails with a message naming the file while an existing store stays untouched.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from source_fixtures import (CARLA_XYZ, OCC_XYZ, carlasc_raw, write_carlasc, write_nuscenes, write_waymo)

from dcgen.data.importers import ImportConfig, import_dataset
from dcgen.data.importers.carlasc import FORMAT as CARLASC
from dcgen.data.importers.occ3d_nuscenes import FORMAT as NUSCENES
from dcgen.data.importers.occ3d_waymo import FORMAT as WAYMO
from dcgen.data.importers.source_format import Scene, consecutive_runs
from dcgen.data.importers.windows import Window, plan_windows
from dcgen.data.store import SceneStore


def left_turn(name, k):
    return (0.5 * k, 0.0, 0.01 * k) if name == "Town02_Heavy" else (0.5 * k, 0.0, 0.0)


@pytest.fixture(scope="module")
def carla_store(tmp_path_factory, ray_local):
    root = write_carlasc(tmp_path_factory.mktemp("carla"), {"Town01_Light": list(range(6)),
                                                            "Town02_Heavy": list(range(5))}, motion=left_turn)
    out = str(tmp_path_factory.mktemp("out") / "c.zarr")
    result = import_dataset(root, out, ImportConfig("carlasc", num_frames=4))
    return result, SceneStore.open(out)


def test_carlasc_windows_manifest_and_grid(carla_store):
    result, store = carla_store
    assert (result.num_scenes, result.num_frames, result.num_clips) == (2, 11, 5)
    table = store.manifest()
    assert table.column("scene").to_pylist() == ["Town01_Light"] * 3 + ["Town02_Heavy"] * 2
    assert table.column("frame_start").to_pylist() == [0, 1, 2, 0, 1]
    assert set(table.column("split").to_pylist()) == {"train"}
    assert set(table.column("source").to_pylist()) == {"carlasc"}
    assert table.column("frame_key").to_pylist()[2] == "000002"
    assert store.grid.num_frames == 4 and store.grid.size == CARLA_XYZ and store.grid.frame_rate == 10.0
    assert store.capacity == 5 and "finalized" in store.meta
    assert store.meta["provenance"]["pose_sources"] == {"poses.txt": 2}


def test_carlasc_remaps_classes_and_masks(carla_store):
    _, store = carla_store
    clip = store.read([2])
    occ = clip["occupancy"][0]  # frames 2..5 of Town01_Light
    raw = np.stack([carlasc_raw(k) for k in range(2, 6)])
    lut = {0: 0, 7: 6, 22: 7, 10: 10, 11: 2}
    for r, u in lut.items():
        assert (occ[raw == r] == u).all(), (r, u)
    assert store.meta["grid"]["num_classes"] == 11 and occ.max() == 10
    mask = clip["mask"][0]
    assert mask[:, :, :, :4].all() and not mask[:, :, :, 4:].any()
    assert clip["layout"][0, 1, (40 + 3) // 4, 60 // 4] == 1  # the vehicle of frame 3 (second frame of the clip)
    assert clip["bev"][0, 42, 61] == 10 and clip["bev"][0, 50, 50] == 6


def test_carlasc_trajectory_and_command_from_poses(carla_store):
    _, store = carla_store
    got = store.read(range(5), ["trajectory", "command", "ego_pose"])
    np.testing.assert_allclose(got["trajectory"][1, :, 0], [0.0, 0.5, 1.0, 1.5], atol=1e-5)
    np.testing.assert_allclose(got["trajectory"][1, :, 1:], 0.0, atol=1e-5)
    np.testing.assert_allclose(got["ego_pose"][1, 0, 0, 3], 0.5, atol=1e-6)  # world pose of frame 1
    np.testing.assert_allclose(got["trajectory"][4, :, 2], [0.0, 0.01, 0.02, 0.03], atol=1e-5)
    assert got["command"].tolist() == [1, 1, 1, 2, 2]


def test_plan_windows_stride_and_gaps():
    def scene(n, runs=None):
        return Scene("s", tuple(), np.zeros((n, 4, 4)), "x", runs or ((0, n),))

    scenes = [scene(6), scene(5)]
    assert len(plan_windows(scenes, 4, 1)) == 5
    assert plan_windows(scenes, 4, 2) == [Window(0, 0), Window(0, 2), Window(1, 0)]
    assert len(plan_windows(scenes, 6, 1)) == 1
    assert plan_windows([scene(8, ((0, 4), (4, 8)))], 4, 1) == [Window(0, 0), Window(0, 4)]
    assert consecutive_runs([0, 1, 2, 3, 5, 6, 7, 8]) == ((0, 4), (4, 8))
    assert consecutive_runs([0, 5, 10, 15]) == ((0, 4),)  # an even subsampling is no gap
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        plan_windows(scenes, 4, 0)


def test_carlasc_gap_splits_runs(tmp_path):
    write_carlasc(tmp_path, {"Town03_Medium": [0, 1, 2, 3, 5, 6, 7, 8]})
    (ref,) = CARLASC.list_scenes(tmp_path, "train")
    s = CARLASC.scan_scene(ref)
    assert s.runs == ((0, 4), (4, 8)) and [f.number for f in s.frames][4] == 5
    np.testing.assert_allclose(s.ego_pose_F44[4, 0, 3], 2.5)  # row 5 of poses.txt


def test_stride_two_import(tmp_path, ray_local):
    write_carlasc(tmp_path / "src", {"Town01_Light": list(range(6)), "Town02_Heavy": list(range(5))})
    r = import_dataset(tmp_path / "src", str(tmp_path / "s.zarr"), ImportConfig("carlasc", stride=2, num_frames=4))
    assert r.num_clips == 3
    assert SceneStore.open(tmp_path / "s.zarr").manifest().column("frame_start").to_pylist() == [0, 2, 0]


def nuscenes_left(name, k):
    return (2.0 * k, 0.0, 0.02 * k)


def test_nuscenes_import(tmp_path, ray_local):
    src = write_nuscenes(tmp_path / "trainval", {"scene-0001": 5}, motion=nuscenes_left,
                         extra_splits={"val": ["scene-0002"]})
    out = str(tmp_path / "n.zarr")
    r = import_dataset(src, out, ImportConfig("occ3d-nuscenes", num_frames=4))
    store = SceneStore.open(out)
    assert r.num_clips == 2 and store.grid.size == OCC_XYZ and store.grid.frame_rate == 2.0
    assert store.grid.num_classes == 12 and "mask_camera" in store.array_names
    table = store.manifest()
    assert table.column("frame_key").to_pylist() == ["scene-0001-tok0", "scene-0001-tok1"]
    assert table.column("pose_source").to_pylist()[0] == "annotations.json ego_pose"
    clip = store.read([1])
    occ = clip["occupancy"][0]
    assert occ[0, 0, 0, 5] == 0 and occ[0, 0, 0, 0] == 6  # free 17 -> 0, driveable surface -> road
    assert occ[0, 92, 101, 1] == 10 and occ[0, 21, 21, 1] == 11 and occ[0, 155, 155, 5] == 1
    assert clip["mask"][0, :, :, :100].all() and not clip["mask"][0, :, :, 100:].any()
    assert clip["mask_camera"][0, :, :100].all() and not clip["mask_camera"][0, :, 100:].any()
    traj = clip["trajectory"][0]
    np.testing.assert_allclose(traj[:, 2], [0.0, 0.02, 0.04, 0.06], atol=1e-5)
    # frame 1 at world (4, 0) seen from frame 0 at (2, 0) with yaw 0.02: rotate (2, 0) by -0.02
    np.testing.assert_allclose(traj[1, :2], [2 * np.cos(0.02), -2 * np.sin(0.02)], atol=1e-4)
    assert int(clip["command"][0]) == 2


def test_waymo_import_with_and_without_poses(tmp_path, ray_local):
    src = tmp_path / "voxel04"
    write_waymo(src, {"000": list(range(5))}, with_pose=True)
    write_waymo(src, {"001": list(range(4))}, with_pose=False, free=15)
    out = str(tmp_path / "w.zarr")
    r = import_dataset(src, out, ImportConfig("occ3d-waymo", num_frames=4))
    store = SceneStore.open(out)
    assert r.num_clips == 3
    assert r.pose_sources == {"ego2global in each npz": 1, "identity (the release has no ego poses)": 1}
    table = store.manifest()
    assert table.column("scene").to_pylist() == ["000", "000", "001"]
    assert table.column("pose_source").to_pylist()[2].startswith("identity")
    got = store.read(range(3))
    assert got["command"].tolist() == [1, 1, 0]
    np.testing.assert_allclose(got["trajectory"][2], 0.0)
    np.testing.assert_allclose(got["trajectory"][0, :, 0], [0, 1, 2, 3], atol=1e-5)
    for i in (0, 2):  # free 23 and free 15 both -> 0
        occ = got["occupancy"][i, 0]
        assert occ[0, 0, 5] == 0 and occ[0, 0, 0] == 6 and occ[61, 101, 1] == 10
        assert occ[30, 30, 1] == 11 and occ[170, 170, 5] == 9
    cam = got["mask_camera"][0, 0]
    assert cam[150, 150].all() and not cam[50, 150].any() and not cam[150, 50].any()
    assert got["mask"][0, 0, :, :, :8].all() and not got["mask"][0, 0, :, :, 8:].any()


# ---- bad input -------------------------------------------------------------------------------------------


def scan_all(fmt, src, split="train"):
    return [fmt.scan_scene(r) for r in fmt.list_scenes(src, split)]


def test_carlasc_bad_files(tmp_path):
    root = write_carlasc(tmp_path, {"Town01_Light": [0, 1, 2]})
    ev = root / "Train" / "Town01_Light" / "cartesian" / "evaluation"
    (ev / "000001.bin").unlink()
    with pytest.raises(ValueError, match=r"000001\.bin: missing point-count file"):
        scan_all(CARLASC, root)
    np.zeros(10, np.uint32).tofile(ev / "000001.bin")
    with pytest.raises(ValueError, match=r"000001\.bin: point-count file .* has 40 bytes, expected 524288"):
        scan_all(CARLASC, root)
    np.zeros(CARLA_XYZ, np.float32).tofile(ev / "000001.bin")
    (ev / "000002.label").write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=r"000002\.label: label file .* has 100 bytes, expected 524288"):
        scan_all(CARLASC, root)


def test_carlasc_bad_poses_and_layout(tmp_path):
    root = write_carlasc(tmp_path, {"Town01_Light": [0, 1, 2]})
    poses = root / "Train" / "Town01_Light" / "cartesian" / "poses.txt"
    poses.write_text(poses.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=r"poses\.txt: 1 poses, but frame 000002 needs at least 3"):
        scan_all(CARLASC, root)
    poses.write_text("1 2 3\n")
    with pytest.raises(ValueError, match=r"poses\.txt:1: 3 numbers, expected 12"):
        scan_all(CARLASC, root)
    poses.unlink()
    with pytest.raises(ValueError, match=r"poses\.txt: missing poses file"):
        scan_all(CARLASC, root)
    with pytest.raises(ValueError, match=r"no directory for split 'val'; expected Val or val"):
        CARLASC.list_scenes(root, "val")
    (root / "Train" / "Town00_stray").mkdir()
    with pytest.raises(ValueError, match=r"Town00_stray: not a CarlaSC scene; expected the directory "
                                         r"cartesian/evaluation"):
        scan_all(CARLASC, root)


def test_class_ids_out_of_range_name_the_file(tmp_path):
    root = write_carlasc(tmp_path / "c", {"Town01_Light": [0]})
    label = root / "Train" / "Town01_Light" / "cartesian" / "evaluation" / "000000.label"
    raw = carlasc_raw(0)
    raw[0, 0, 7] = 30
    raw.tofile(label)
    (scene,) = scan_all(CARLASC, root)
    with pytest.raises(ValueError, match=r"000000\.label: class ids \[30\] are not valid"):
        CARLASC.read_frame(scene.frames[0])
    raw[0, 0, 7] = 70000
    raw.tofile(label)
    with pytest.raises(ValueError, match=r"000000\.label: class id 70000 is outside 0\.\.255"):
        CARLASC.read_frame(scene.frames[0])
    w = write_waymo(tmp_path / "w", {"000": [0]})
    path = w / "training" / "000" / "000_04.npz"
    data = dict(np.load(path))
    data["voxel_label"][0, 0, 0] = 20
    np.savez_compressed(path, **data)
    (scene,) = scan_all(WAYMO, w)
    with pytest.raises(ValueError, match=r"000_04\.npz: class ids \[20\] are not valid"):
        WAYMO.read_frame(scene.frames[0])


def test_nuscenes_bad_input(tmp_path):
    root = write_nuscenes(tmp_path, {"scene-0001": 2})
    with pytest.raises(ValueError, match=r"no scene list 'val_split' for split 'val'; it has \['train_split'\]"):
        NUSCENES.list_scenes(root, "val")
    npz = root / "gts" / "scene-0001" / "scene-0001-tok1" / "labels.npz"
    data = dict(np.load(npz))
    np.savez_compressed(npz, semantics=data["semantics"], mask_lidar=data["mask_lidar"])
    with pytest.raises(ValueError, match=r"tok1/labels\.npz: lacks arrays \['mask_camera'\]"):
        scan_all(NUSCENES, root)
    np.savez_compressed(npz, semantics=data["semantics"][:100], mask_lidar=data["mask_lidar"],
                        mask_camera=data["mask_camera"])
    with pytest.raises(ValueError, match=r"array 'semantics' has shape \[100, 200, 16\], expected \[200, 200, 16\]"):
        scan_all(NUSCENES, root)
    npz.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"tok1/labels\.npz: unreadable \.npz"):
        scan_all(NUSCENES, root)
    npz.unlink()
    with pytest.raises(ValueError, match=r"tok1/labels\.npz: missing file"):
        scan_all(NUSCENES, root)
    index = json.loads((root / "annotations.json").read_text())
    index["scene_infos"]["scene-0001"]["scene-0001-tok0"]["ego_pose"]["rotation"] = [0, 0, 0, 0]
    (root / "annotations.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"tok0'\]\.ego_pose: .* not a finite pose with a non-zero quaternion"):
        NUSCENES.list_scenes(root, "train")
    (root / "annotations.json").unlink()
    with pytest.raises(ValueError, match=r"annotations\.json: missing"):
        NUSCENES.list_scenes(root, "train")


def test_waymo_bad_input(tmp_path):
    root = write_waymo(tmp_path, {"000": [0, 1, 2]})
    path = root / "training" / "000" / "001_04.npz"
    data = dict(np.load(path))
    np.savez_compressed(path, **{k: v for k, v in data.items() if k != "ego2global"})
    with pytest.raises(ValueError, match=r"001_04\.npz: lacks 'ego2global' while other frames of scene 000 have it"):
        scan_all(WAYMO, root)
    np.savez_compressed(path, **{**data, "voxel_label": data["voxel_label"].astype(np.float32)})
    with pytest.raises(ValueError, match=r"001_04\.npz: array 'voxel_label' has dtype float32, expected integer"):
        scan_all(WAYMO, root)
    np.savez_compressed(path, **{**data, "infov": data["infov"][:, :, :8]})
    with pytest.raises(ValueError, match=r"001_04\.npz: array 'infov' has shape \[200, 200, 8\]"):
        scan_all(WAYMO, root)
    with pytest.raises(ValueError, match=r"split 'test'; expected test, found \['training'\]"):
        WAYMO.list_scenes(root, "test")


def test_config_errors():
    with pytest.raises(ValueError, match=r"unknown dataset 'kitti'; expected one of carlasc, occ3d-nuscenes"):
        ImportConfig("kitti")
    with pytest.raises(ValueError, match=r"--stride must be >= 1, got 0"):
        ImportConfig("carlasc", stride=0)
    with pytest.raises(ValueError, match=r"unknown split 'dev'"):
        ImportConfig("carlasc", split="dev")
    with pytest.raises(ValueError, match=r"--frames must be >= 1, got 0"):
        ImportConfig("carlasc", num_frames=0)


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_existing_store_untouched(tmp_path, ray_local):
    src = write_carlasc(tmp_path / "src", {"Town01_Light": list(range(4))})
    out = tmp_path / "c.zarr"
    import_dataset(src, str(out), ImportConfig("carlasc", num_frames=4))
    before = snapshot(out)
    with pytest.raises(ValueError, match=r"c\.zarr: already exists; pass --overwrite"):
        import_dataset(src, str(out), ImportConfig("carlasc", num_frames=4))
    with pytest.raises(ValueError, match=r"no scene of split 'train' has 9 consecutive frames \(longest gap-free"):
        import_dataset(src, str(out), ImportConfig("carlasc", num_frames=9, overwrite=True))
    (src / "Train" / "Town01_Light" / "cartesian" / "evaluation" / "000003.bin").unlink()
    with pytest.raises(ValueError, match=r"000003\.bin: missing point-count file"):
        import_dataset(src, str(out), ImportConfig("carlasc", num_frames=4, overwrite=True))
    assert snapshot(out) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"notes: exists and is not a dcgen scene store; refusing to overwrite"):
        import_dataset(src, str(other), ImportConfig("carlasc", num_frames=3, overwrite=True))
    assert (other / "keep.txt").read_text() == "mine"


def test_overwrite_replaces_store(tmp_path, ray_local):
    src = write_waymo(tmp_path / "src", {"000": list(range(3))})
    out = str(tmp_path / "w.zarr")
    import_dataset(src, out, ImportConfig("occ3d-waymo", num_frames=2))
    r = import_dataset(src, out, ImportConfig("occ3d-waymo", num_frames=3, overwrite=True))
    store = SceneStore.open(out)
    assert r.num_clips == 1 and store.num_clips == 1 and store.grid.num_frames == 3


def test_error_mid_import_writes_nothing(tmp_path, ray_local):
    src = write_waymo(tmp_path / "src", {"000": list(range(9)), "001": list(range(3))})
    bad = src / "training" / "001" / "001_04.npz"
    data = dict(np.load(bad))
    data["voxel_label"][5, 5, 5] = 99
    np.savez_compressed(bad, **data)
    out = tmp_path / "w.zarr"
    with pytest.raises(ValueError, match=r"001/001_04\.npz: class ids \[99\] are not valid .*\(import stopped; "
                                         r"nothing was written to .*w\.zarr\)"):
        import_dataset(src, str(out), ImportConfig("occ3d-waymo", num_frames=2, clips_per_task=8))
    assert not out.exists() and not list(tmp_path.glob(".w.zarr.*"))  # no half store, no leftover build


def corrupt_npz_member(path: Path, member: str) -> None:
    """Flip one byte inside ``member``'s stored bytes so its CRC-32 no longer matches (np.savez stores raw)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(raw[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    data_start = info.header_offset + 30 + name_len + extra_len
    raw[data_start + info.compress_size - 7] ^= 0xFF  # inside the array's data, past the .npy header
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["crc", "class-id"])
def test_failed_overwrite_keeps_the_good_store(tmp_path, ray_local, damage):
    src = write_nuscenes(tmp_path / "trainval", {"scene-0001": 9, "scene-0002": 4})
    out = tmp_path / "n.zarr"
    import_dataset(src, str(out), ImportConfig("occ3d-nuscenes", num_frames=2))
    before = snapshot(out)
    good = SceneStore.open(out)
    assert good.num_clips == 11
    bad = src / "gts" / "scene-0002" / "scene-0002-tok3" / "labels.npz"
    data = dict(np.load(bad))
    if damage == "crc":
        np.savez(bad, **data)  # stored, not deflated: the flipped byte reaches the CRC check, not inflate
        corrupt_npz_member(bad, "semantics.npy")
        expected = r"scene-0002-tok3/labels\.npz.*(CRC|crc)"
    else:
        data["semantics"][1, 2, 3] = 42
        np.savez_compressed(bad, **data)
        expected = r"scene-0002-tok3/labels\.npz.*42"
    with pytest.raises(ValueError, match=expected + r".*\(import stopped; .*n\.zarr is unchanged\)"):
        import_dataset(src, str(out), ImportConfig("occ3d-nuscenes", num_frames=2, overwrite=True,
                                                   clips_per_task=8))
    assert snapshot(out) == before
    again = SceneStore.open(out)
    assert again.num_clips == 11 and again.verify()["ok"]
    assert not list(tmp_path.glob(".n.zarr.*"))
