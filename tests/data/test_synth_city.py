"""The synthetic city: determinism, every command reachable and read back by derive, plausible classes, moving
traffic, LiDAR masks, the same world at every resolution, speed, bad input, and the parallel store writer."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from dcgen.cli import app
from dcgen.data.classes import CLASS_IDS, VEHICLE
from dcgen.data.derive import command_from_trajectory, pose_from_xyyaw, trajectory_from_poses
from dcgen.data.grid import GRIDS
from dcgen.data.store import SceneStore
from dcgen.data.synth_city import check_grid, generate_clip, split_of, write_synthetic_city
from dcgen.data.synth_lidar import LidarConfig
from dcgen.data.synth_raster import surface_layer
from dcgen.data.synth_traffic import TrafficConfig, boxes_overlap, plan_ego, populate
from dcgen.data.synth_world import CityConfig, plan_city
from dcgen.runtime import rng

DEBUG, SMALL, CARLASC = GRIDS["debug"], GRIDS["small"], GRIDS["carlasc"]


@pytest.fixture(scope="module")
def debug_clips():
    return [generate_clip(DEBUG, 5, i) for i in range(24)]


def test_keys_shapes_dtypes():
    clip = generate_clip(DEBUG, 0, 0)
    t, (x, y, z) = DEBUG.num_frames, DEBUG.size
    lx, ly = DEBUG.layout_size
    want = {"occupancy": ((t, x, y, z), np.uint8), "mask": ((t, x, y, z), np.bool_),
            "ego_pose": ((t, 4, 4), np.float32), "trajectory": ((t, 3), np.float32), "command": ((), np.uint8),
            "layout": ((t, lx, ly), np.uint8), "bev": ((x, y), np.uint8)}
    assert set(clip) == set(want)
    for key, (shape, dtype) in want.items():
        assert clip[key].shape == shape and clip[key].dtype == dtype, key
    assert int(clip["occupancy"].max()) <= 10


def test_same_seed_and_index_give_same_bytes():
    a, b = generate_clip(SMALL, 11, 3), generate_clip(SMALL, 11, 3)
    for key in a:
        assert a[key].tobytes() == b[key].tobytes(), key
    c = generate_clip(SMALL, 11, 4)
    assert a["occupancy"].tobytes() != c["occupancy"].tobytes()
    assert generate_clip(SMALL, 12, 3)["occupancy"].tobytes() != a["occupancy"].tobytes()


@pytest.mark.parametrize("num_frames", [2, 4, 16])
def test_every_command_is_driven_as_intended(num_frames):
    duration = (num_frames - 1) / 10.0
    times = np.arange(num_frames) / 10.0
    for seed in range(12):
        for command in range(4):
            g = rng(seed, command)
            plan = plan_city(g, CityConfig())
            ego = plan_ego(g, plan, command, duration, TrafficConfig())
            x, y, yaw = ego.poses(times)
            poses = np.stack([pose_from_xyyaw(*p) for p in zip(x, y, yaw)]).astype(np.float32)
            assert command_from_trajectory(trajectory_from_poses(poses)) == command, (seed, command)


def test_clips_cover_all_commands_and_store_derives_them(debug_clips):
    commands = [int(c["command"]) for c in debug_clips]
    counts = np.bincount(commands, minlength=4)
    assert (counts >= 3).all(), counts  # uniform over 24 draws: each command several times
    for clip in debug_clips:
        trajectory = trajectory_from_poses(clip["ego_pose"])
        assert command_from_trajectory(trajectory) == int(clip["command"])
        np.testing.assert_allclose(trajectory, clip["trajectory"], atol=1e-3)
        if int(clip["command"]) == 0:
            assert np.array_equal(clip["ego_pose"][0], clip["ego_pose"][-1])


def test_plausible_class_mix():
    hist = sum(np.bincount(generate_clip(CARLASC, 2, i)["occupancy"].ravel(), minlength=11) for i in range(3))
    occupied = hist[1:].sum()
    fractions = hist / occupied
    for name in ("road", "building", "vehicle", "sidewalk"):
        assert fractions[CLASS_IDS[name]] > 0.005, name
    assert fractions[1:].max() < 0.6, fractions
    assert (hist[1:] > 0).sum() >= 8  # most of the ten classes show up


def test_vehicles_move_between_frames():
    moved = 0
    for i in range(40):
        clip = generate_clip(SMALL, 9, i)
        if int(clip["command"]) != 0:
            continue  # with the ego standing still, a change in vehicle voxels is other traffic moving
        veh = clip["occupancy"] == VEHICLE
        assert veh.any()
        moved += int((veh[0] != veh[-1]).any())
        if moved >= 2:
            break
    assert moved >= 2


def test_actors_drive_and_stay_clear_of_the_ego():
    times = np.arange(16) / 10.0
    plan = plan_city(rng(3, 1), CityConfig())
    for command in range(4):
        ego = plan_ego(rng(3, 2), plan, command, float(times[-1]), TrafficConfig())
        actors = populate(plan, ego, times, (-60.0, 60.0, -60.0, 60.0), TrafficConfig())
        assert (actors.speed[actors.cls == VEHICLE] > 0).sum() >= 2
        ex, ey, eyaw = ego.poses(times)
        px, py = actors.positions(times)
        hit = boxes_overlap(ex[:, None], ey[:, None], np.cos(eyaw)[:, None], np.sin(eyaw)[:, None], 4.6, 2.0,
                            px, py, actors.hx[None], actors.hy[None], actors.length[None], actors.width[None])
        assert not hit.any()


def test_mask_sees_the_street_not_behind_it(debug_clips):
    for clip in debug_clips[:6]:
        mask, occ = clip["mask"], clip["occupancy"]
        assert 0.05 < mask.mean() < 0.95
        assert (mask & (occ == 0)).any() and (mask & (occ > 0)).any()
        assert not mask[..., :surface_layer(DEBUG)].any()  # nothing below the ground is seen
    mask = generate_clip(CARLASC, 4, 0)["mask"]
    assert 0.05 < mask.mean() < 0.95


def test_same_world_at_every_resolution():
    for i in range(12):
        coarse, fine = generate_clip(DEBUG, 8, i), generate_clip(SMALL, 8, i)
        if int(coarse["command"]) not in (0, 1):
            continue  # turns start their arc by clip length, so frame 0 differs
        np.testing.assert_allclose(coarse["ego_pose"][0], fine["ego_pose"][0], atol=1e-4)
        # small voxel (2a+1, 2b+1) has its centre 0.4 m from debug voxel (a, b)'s: same ground cover
        ground = surface_layer(DEBUG)
        a = coarse["occupancy"][0, :, :, ground]
        b = fine["occupancy"][0, 1::2, 1::2, surface_layer(SMALL)]
        assert (a == b).mean() > 0.7
        return
    pytest.fail("no static or forward clip among the first 12")


def test_generation_speed_smoke():
    generate_clip(CARLASC, 0, 0)
    start = time.perf_counter()
    for i in range(1, 4):
        generate_clip(CARLASC, 0, i)
    per_clip = (time.perf_counter() - start) / 3
    assert per_clip < 0.5, f"{per_clip:.3f} s per carlasc clip"  # ~0.05 s on one idle core


def test_split_of_is_deterministic_and_proportional():
    splits = [split_of(i, 0.1) for i in range(1000)]
    assert splits == [split_of(i, 0.1) for i in range(1000)]
    assert 90 <= splits.count("val") <= 110
    assert set(split_of(i, 0.0) for i in range(100)) == {"train"}


def test_bad_grids_and_configs_raise():
    with pytest.raises(ValueError, match="num_classes=5.*>= 11"):
        check_grid(dataclasses.replace(DEBUG, num_classes=5))
    with pytest.raises(ValueError, match="num_frames=1.*>= 2 frames"):
        generate_clip(dataclasses.replace(DEBUG, num_frames=1), 0, 0)
    with pytest.raises(ValueError, match="frame_rate=0"):
        check_grid(dataclasses.replace(DEBUG, frame_rate=0.0))
    with pytest.raises(ValueError, match=r"voxel size"):
        check_grid(dataclasses.replace(DEBUG, voxel_size=(0.0, 1.6, 0.75)))
    with pytest.raises(ValueError, match=r"CityConfig.lane_width must be \(min, max\)"):
        CityConfig(lane_width=(4.0, 3.0))
    with pytest.raises(ValueError, match="block_length minimum must be >= 40"):
        CityConfig(block_length=(20.0, 60.0))
    with pytest.raises(ValueError, match="half_size must be >= 100"):
        CityConfig(half_size=50.0)
    with pytest.raises(ValueError, match="block_mix"):
        CityConfig(block_mix=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="p_two_lanes must be a probability"):
        CityConfig(p_two_lanes=1.5)
    with pytest.raises(ValueError, match="TrafficConfig.vehicle_speed"):
        TrafficConfig(vehicle_speed=(0.0, 5.0))
    with pytest.raises(ValueError, match="p_empty_lane"):
        TrafficConfig(p_empty_lane=-0.1)
    with pytest.raises(ValueError, match="pedestrian_spacing"):
        TrafficConfig(pedestrian_spacing=0.0)
    with pytest.raises(ValueError, match="LidarConfig.height must be > 0"):
        LidarConfig(height=0.0)
    with pytest.raises(ValueError, match="field of view"):
        LidarConfig(fov_down_deg=10.0, fov_up_deg=5.0)


def test_writer_rejects_bad_arguments(tmp_path):
    out = str(tmp_path / "c.zarr")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        write_synthetic_city(out, "huge", 4)
    with pytest.raises(ValueError, match="--clips must be >= 1, got 0"):
        write_synthetic_city(out, "debug", 0)
    with pytest.raises(ValueError, match=r"--val-fraction must be in \[0, 1\), got 1.0"):
        write_synthetic_city(out, "debug", 4, val_fraction=1.0)
    with pytest.raises(ValueError, match="--workers must be >= 1, got 0"):
        write_synthetic_city(out, "debug", 4, workers=0)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")
    with pytest.raises(ValueError, match="is not a dcgen scene store; refusing to overwrite"):
        write_synthetic_city(str(foreign), "debug", 4, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "precious"


def test_write_synthetic_city_parallel_blocks(tmp_path, ray_local):
    out = str(tmp_path / "city.zarr")
    seen = []
    write_synthetic_city(out, "debug", 20, seed=3, val_fraction=0.25, workers=2,
                         progress=lambda done, total, s: seen.append((done, total)))
    assert seen[-1] == (20, 20)
    store = SceneStore.open(out)
    assert store.num_clips == 20 and store.capacity == 20 and store.has_mask
    table = store.manifest().to_pydict()
    assert table["index"] == list(range(20)) and set(table["seed"]) == {3}
    assert table["split"] == [split_of(i, 0.25) for i in range(20)]
    assert set(table["split"]) == {"train", "val"}
    assert store.meta["source"] == "synth-city" and store.meta["provenance"]["preset"] == "debug"
    for i in (0, 17):  # the block a clip lands in, and the worker, change nothing
        want = generate_clip(DEBUG, 3, i)
        got = store.read([i])
        for key in want:
            assert np.array_equal(got[key][0], want[key]), key
    with pytest.raises(ValueError, match="already exists"):
        write_synthetic_city(out, "debug", 4)


runner = CliRunner()


def test_cli_synth_city(tmp_path, ray_local):
    out = str(tmp_path / "c.zarr")
    r = runner.invoke(app, ["data", "synth-city", "--clips", "8", "--out", out, "--preset", "debug", "--seed", "2"])
    assert r.exit_code == 0, r.output
    assert f"wrote 8 synthetic debug clips (seed 2) to {out}" in r.output
    assert "[synth-city] clip 8/8 (100%)" in r.output and "done in" in r.output
    assert SceneStore.open(out).num_clips == 8
    r = runner.invoke(app, ["data", "synth-city", "--clips", "0", "--out", str(tmp_path / "d.zarr")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == ["error: --clips must be >= 1, got 0"]
    r = runner.invoke(app, ["data", "synth-city", "--clips", "2", "--out", out, "--preset", "nope"])
    assert r.exit_code == 2 and "unknown preset 'nope'" in r.output
