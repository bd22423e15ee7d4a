"""Object statistics on hand-built clips with known components, ego-compensated static worlds, and sets corrupted
the ways issue 23 saw generated clips fail (eroded vehicles, class noise, teleporting objects)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dcgen.data.classes import CLASS_IDS, NUM_CLASSES_UNIFIED
from dcgen.metrics.corruptions import class_noise
from dcgen.metrics.object_stats import SetStats, clip_stats, compare, set_stats

VEHICLE, POLE, PEDESTRIAN = CLASS_IDS["vehicle"], CLASS_IDS["pole"], CLASS_IDS["pedestrian"]
ROAD, SIDEWALK, BUILDING, VEGETATION = CLASS_IDS["road"], CLASS_IDS["sidewalk"], CLASS_IDS["building"], \
    CLASS_IDS["vegetation"]
VOXEL = (0.8, 0.8, 0.375)


def _frames(num_frames: int = 1, x: int = 16, y: int = 16, z: int = 4) -> np.ndarray:
    return np.zeros((num_frames, x, y, z), np.uint8)


def _scene(seed: int, num_frames: int = 6) -> np.ndarray:
    """A 32x32x4 street with a static ego: road and a sidewalk strip at z=0, a building, three 1x1x3 poles, two
    1x1x2 pedestrians and three 4x2x2 vehicles driving +1 voxel along X per frame, all apart from each other."""
    g = np.random.default_rng(seed)
    occ = _frames(num_frames, 32, 32, 4)
    occ[:, :, :, 0] = ROAD
    occ[:, :, 0:4, 0] = SIDEWALK
    occ[:, 0:6, 0:4, 1:4] = BUILDING
    for px in g.choice([8, 12, 16, 20, 24], size=3, replace=False):
        occ[:, px, 29, 1:4] = POLE
    for px in g.choice([6, 10, 14, 18], size=2, replace=False):
        occ[:, px, 26, 1:3] = PEDESTRIAN
    for lane_y in (8, 14, 20):
        x0 = int(g.integers(6, 11))
        for t in range(num_frames):
            occ[t, x0 + t:x0 + t + 4, lane_y:lane_y + 2, 1:3] = VEHICLE
    return occ


def _scene_set(corrupt=lambda occ: occ, num_clips: int = 4) -> SetStats:
    clips = [corrupt(_scene(i)) for i in range(num_clips)]
    return set_stats(clips, [np.zeros((c.shape[0], 3), np.float32) for c in clips], VOXEL)


def test_two_vehicles_and_a_pole_give_exact_components():
    occ = _frames()
    occ[0, 2:4, 2:4, 0:2] = VEHICLE
    occ[0, 8:10, 8:10, 0:2] = VEHICLE
    occ[0, 12, 3, 0:3] = POLE
    cs = clip_stats(occ)
    assert sorted(cs.component_sizes) == [POLE, VEHICLE]
    assert cs.component_sizes[VEHICLE].tolist() == [8, 8] and cs.component_sizes[POLE].tolist() == [3]
    s = SetStats().add(cs).summary()
    assert s["occupied_share"] == 19 / (16 * 16 * 4)
    veh, pole = s["classes"]["vehicle"], s["classes"]["pole"]
    assert (veh["components_per_frame"], veh["size_median"], veh["size_p90"], veh["size_mean"]) == (2, 8, 8, 8)
    assert (pole["components_per_frame"], pole["size_median"], pole["size_p90"]) == (1, 3, 3)
    assert veh["share"] == 16 / 19 and pole["share"] == 3 / 19
    # one frame has no consecutive pair: the temporal rates are undefined, not 0
    assert s["flicker"] is None and veh["flicker"] is None and veh["persistence"] is None


def test_a_column_and_a_flat_blob_of_one_size_differ_in_height():
    occ = _frames(2)
    occ[:, 12, 3, 0:4] = POLE  # a pole: a 1x1x4 column
    occ[0, 2:4, 8:10, 0] = POLE  # in frame 0 a 2x2x1 piece on the ground: the same 4 voxels
    occ[1, 6, 6, 2] = POLE  # in frame 1 a floating voxel
    cs = clip_stats(occ)
    assert cs.component_sizes[POLE].tolist() == [4, 4, 4, 1]
    assert sorted(zip(cs.component_sizes[POLE].tolist(), cs.component_heights[POLE].tolist())) == [
        (1, 1), (4, 1), (4, 4), (4, 4)]
    s = SetStats().add(cs).add(cs)
    assert s.component_heights(POLE).size == 8 and s.component_heights(VEHICLE).size == 0
    pole = s.summary()["classes"]["pole"]
    assert (pole["size_median"], pole["height_median"]) == (4, 2.5)
    # a set whose poles are all whole columns against this one: same median size, taller by 1.5 voxels
    whole = _frames(2)
    whole[:, 12, 3, 0:4] = POLE
    whole[:, 3, 12, 0:4] = POLE
    out = compare(set_stats([whole]), set_stats([occ]))
    assert out["classes"]["pole"]["size_median"]["relative_gap"] == 0.0
    assert out["classes"]["pole"]["height_median"] == {"real": 4.0, "fake": 2.5, "relative_gap": -0.375}


def test_components_join_at_corners_but_never_across_frames():
    occ = _frames(2)
    occ[:, 2:4, 2:4, 0:2] = VEHICLE
    occ[:, 4:6, 4:6, 2:4] = VEHICLE  # touches the first only at the corner voxel (3, 3, 1) / (4, 4, 2)
    sizes = clip_stats(occ).component_sizes[VEHICLE]
    assert sizes.tolist() == [16, 16]  # one 26-connected component per frame


def test_object_moving_one_voxel_persists_and_flickers_as_counted_by_hand():
    occ = _frames(3)
    for t in range(3):
        occ[t, 2 + t:4 + t, 5:7, 0:2] = VEHICLE
    for trajectory in (None, np.zeros((3, 3), np.float32)):
        s = set_stats([occ], None if trajectory is None else [trajectory], VOXEL).summary()
        # each pair: 2x2x2 boxes overlapping in 1x2x2 = 4 voxels; 12 in either frame, 8 of them change
        assert s["classes"]["vehicle"]["persistence"] == 1.0
        assert s["classes"]["vehicle"]["flicker"] == 8 / 12 and s["flicker"] == 8 / 12
        assert s["static_change"] is None  # no static voxel at all


@pytest.mark.parametrize("step, persists", [(2, True), (3, False)])
def test_persistence_tolerates_an_adjacent_next_position_only(step, persists):
    occ = _frames(2)
    occ[0, 2:4, 5:7, 0:2] = VEHICLE
    occ[1, 2 + step:4 + step, 5:7, 0:2] = VEHICLE  # step 2: adjacent to the old box; step 3: one free voxel between
    assert set_stats([occ]).summary()["persistence"] == (1.0 if persists else 0.0)


def test_a_vanishing_vehicle_halves_persistence():
    occ = _frames(2)
    occ[:, 2:4, 2:4, 0:2] = VEHICLE
    occ[0, 9:11, 9:11, 0:2] = VEHICLE
    assert set_stats([occ]).summary()["classes"]["vehicle"]["persistence"] == 0.5


def _static_world_clip(num_frames: int = 5, x: int = 16) -> np.ndarray:
    g = np.random.default_rng(3)
    world = g.choice(np.array([0, BUILDING, ROAD, SIDEWALK, VEGETATION], np.uint8), size=(x + num_frames, 12, 3))
    return np.stack([world[t:t + x] for t in range(num_frames)])  # the ego drives one voxel forward per frame


def test_static_world_is_consistent_once_ego_motion_is_compensated():
    occ = _static_world_clip()
    forward_T3 = np.zeros((occ.shape[0], 3), np.float32)
    forward_T3[:, 0] = np.arange(occ.shape[0]) * VOXEL[0]
    s = set_stats([occ], [forward_T3], VOXEL).summary()
    assert s["flicker"] > 0.3  # in the ego's grid everything slides by a voxel per frame
    assert s["static_change"] == 0.0 and all(c["static_change"] == 0.0 for c in s["classes"].values())
    backward_T3 = forward_T3 * np.array([-1, 1, 1], np.float32)
    assert set_stats([occ], [backward_T3], VOXEL).summary()["static_change"] > 0.3


@pytest.mark.parametrize("yaw, expected_zero", [(np.pi / 2, True), (-np.pi / 2, False)])
def test_a_left_turn_is_compensated_with_positive_yaw(yaw, expected_zero):
    frame_XYZ = _static_world_clip(1)[0, :, :12][:12]
    # the ego turns 90 degrees left: the world turns 90 degrees clockwise in its grid
    occ = np.stack([frame_XYZ, np.rot90(frame_XYZ, k=-1, axes=(0, 1))])
    change = set_stats([occ], [np.array([[0, 0, 0], [0, 0, yaw]], np.float32)], VOXEL).summary()["static_change"]
    assert (change == 0.0) == expected_zero


def test_synthetic_city_static_world_holds_still_under_its_own_trajectory():
    from dcgen.data.grid import grid
    from dcgen.data.synth_city import generate_clip

    g = grid("small")
    clip = generate_clip(g, 0, 1)
    assert np.abs(clip["trajectory"][-1, :2]).max() > 2 * g.voxel_size[0]  # the ego really moves
    compensated = set_stats([clip["occupancy"]], [clip["trajectory"]], g.voxel_size).summary()
    frozen = set_stats([clip["occupancy"]], [np.zeros_like(clip["trajectory"])], g.voxel_size).summary()
    assert compensated["static_change"] < 0.5 * frozen["static_change"]


def _gaps(node):
    if isinstance(node, dict):
        if "relative_gap" in node:
            yield node
        for v in node.values():
            yield from _gaps(v)


def test_identical_sets_compare_with_zero_gaps():
    real, fake = _scene_set(), _scene_set()
    out = compare(real, fake)
    json.dumps(out, allow_nan=False)
    entries = list(_gaps(out))
    assert len(entries) > 30
    for e in entries:
        assert e["real"] == e["fake"]
        assert e["relative_gap"] == (0.0 if e["real"] else None)
    assert out["class_mix_l1"] == 0.0
    assert all(row["size_wasserstein"] == 0.0 for row in out["classes"].values())
    assert out["flicker"]["real"] > 0 and out["persistence"]["real"] == 1.0 and out["static_change"]["real"] == 0.0


def _erode_vehicles(occ: np.ndarray) -> np.ndarray:
    """Vehicles lose their two end voxels along X: 4x2x2 becomes 2x2x2, half the size."""
    veh = occ == VEHICLE
    keep = np.zeros_like(veh)
    keep[:, 1:-1] = veh[:, :-2] & veh[:, 1:-1] & veh[:, 2:]
    return np.where(veh & ~keep, np.uint8(0), occ)


def test_eroded_vehicles_are_half_the_size():
    out = compare(_scene_set(), _scene_set(_erode_vehicles))
    veh = out["classes"]["vehicle"]
    assert veh["size_median"] == {"real": 16.0, "fake": 8.0, "relative_gap": -0.5}
    assert veh["size_wasserstein"] == 8.0  # every component 16 -> 8 voxels
    assert veh["components_per_frame"]["relative_gap"] == 0.0
    assert out["class_mix_l1"] > 0 and out["classes"]["pole"]["size_wasserstein"] == 0.0


def test_class_noise_makes_tiny_components_and_flicker():
    noisy = _scene_set(lambda occ: class_noise(occ[None], 0.05, NUM_CLASSES_UNIFIED, seed=1)[0])
    real = _scene_set()
    out = compare(real, noisy)
    assert out["flicker"]["relative_gap"] > 0.2 and out["static_change"]["fake"] > out["static_change"]["real"] == 0.0
    assert out["classes"]["pole"]["components_per_frame"]["relative_gap"] > 1.0
    tiny = {name: sum(int((s.component_sizes(c) == 1).sum()) for c in s.classes())
            for name, s in (("real", real), ("fake", noisy))}
    assert tiny["real"] == 0 and tiny["fake"] > 100
    assert out["classes"]["vehicle"]["size_wasserstein"] > 1.0 and out["class_mix_l1"] > 0.02


def _teleport_vehicles(occ: np.ndarray) -> np.ndarray:
    """Vehicles of odd frames jump 8 voxels along X: no frame pair keeps a vehicle in reach."""
    out = occ.copy()
    odd = out[1::2]
    veh = odd == VEHICLE
    odd[veh] = 0
    odd[np.roll(veh, 8, axis=1)] = VEHICLE
    return out


def test_teleporting_vehicles_lose_persistence():
    out = compare(_scene_set(), _scene_set(_teleport_vehicles))
    veh = out["classes"]["vehicle"]
    assert veh["persistence"] == {"real": 1.0, "fake": 0.0, "relative_gap": -1.0}
    assert veh["flicker"]["fake"] == 1.0 > veh["flicker"]["real"]
    assert veh["size_wasserstein"] == 0.0  # shapes untouched: only the temporal statistics see it


def test_bad_clip_inputs_name_the_clip_and_what_was_expected():
    good = _frames(2)
    with pytest.raises(ValueError, match=r"clip: expected class ids of shape \[T, X, Y, Z\], got shape \[16, 16, 4\]"):
        clip_stats(good[0])
    with pytest.raises(ValueError, match="clip 1: expected uint8 class ids, got dtype float32"):
        set_stats([good, good.astype(np.float32)])
    bad_class = good.copy()
    bad_class[0, 0, 0, 0] = NUM_CLASSES_UNIFIED
    with pytest.raises(ValueError, match=r"clip: class id 12 is out of range; expected 0..11"):
        clip_stats(bad_class)
    with pytest.raises(ValueError, match=r"clip: trajectory has shape \[2, 2\], expected \[2, 3\]"):
        clip_stats(good, np.zeros((2, 2)), VOXEL)
    with pytest.raises(ValueError, match="clip: trajectory holds non-finite values"):
        clip_stats(good, np.array([[0, 0, 0], [np.nan, 0, 0]]), VOXEL)
    with pytest.raises(ValueError, match="clip: a trajectory needs voxel_size"):
        clip_stats(good, np.zeros((2, 3)))
    for voxel_size in ((0.0, 0.8, 0.4), (0.8, 0.8)):
        with pytest.raises(ValueError, match=r"clip: voxel_size .* is invalid; expected three positive metres"):
            clip_stats(good, np.zeros((2, 3)), voxel_size)
    with pytest.raises(ValueError, match="got 1 trajectories for 2 clips; expected one per clip"):
        set_stats([good, good], [np.zeros((2, 3))], VOXEL)


def test_a_clip_of_another_grid_is_refused_and_the_set_keeps_what_it_had():
    occ = _frames(2)
    occ[:, 2:4, 2:4, 0:2] = VEHICLE
    s = set_stats([occ, occ])
    before = s.summary()
    with pytest.raises(ValueError, match=r"clip of grid \[8, 16, 4\] cannot join a set of \[16, 16, 4\] clips"):
        s.add(clip_stats(occ[:, :8]))
    assert s.summary() == before and s.component_sizes(VEHICLE).tolist() == [8] * 4


def test_compare_refuses_empty_sets_and_mismatched_grids():
    occ = _frames(2)
    occ[:, 2:4, 2:4, 0:2] = VEHICLE
    with pytest.raises(ValueError, match="the fake set holds no clips; expected at least one"):
        compare(set_stats([occ]), SetStats())
    with pytest.raises(ValueError, match=r"real clips are on grid \[16, 16, 4\], fake clips on \[8, 16, 4\]"):
        compare(set_stats([occ]), set_stats([occ[:, :8]]))
