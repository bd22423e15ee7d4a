"""Renderer tests on small synthetic street clips: a ground layer, a road strip, a box building, a moving vehicle."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from dcgen.data.classes import CLASS_IDS, PALETTE
from dcgen.render.bev import bev_rgb, render_bev
from dcgen.render.clip import classes_present, compose_frames, save_clip, save_comparison
from dcgen.render.metric_views import default_frames, render_for_metrics
from dcgen.render.oblique import (DEFAULT_CAMERA, ObliqueCamera, _shade_lut, _stencil, oblique_image_size,
                                  oblique_rgb, render_oblique)
from dcgen.render.palette import BACKGROUND

GROUND, ROAD, BUILDING, VEHICLE = (CLASS_IDS[n] for n in ("ground", "road", "building", "vehicle"))


def street_clip(num_frames: int = 4, size: tuple[int, int, int] = (32, 32, 4)) -> np.ndarray:
    x, y, z = size
    occ = np.zeros((num_frames, x, y, z), dtype=np.uint8)
    occ[..., 0] = GROUND
    occ[:, :, y // 2 - 4:y // 2 + 4, 0] = ROAD  # road strip along X (forward)
    occ[:, x - 10:x - 3, 2:8, 1:z] = BUILDING  # box building ahead on the right, full height
    for t in range(num_frames):
        occ[t, 4 + 2 * t:8 + 2 * t, y // 2:y // 2 + 2, 1:2] = VEHICLE  # vehicle driving forward
    return occ


def colours_of(img: np.ndarray) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(img.reshape(-1, 3), axis=0)}


# ---- bird's-eye -------------------------------------------------------------------------------------------------

def test_bev_orientation_colours_and_height_shading():
    occ = street_clip()
    img = bev_rgb(occ)
    n, x, y, z = occ.shape
    assert img.shape == (n, x, y, 3) and img.dtype == np.uint8
    # Row r holds x = X-1-r (forward is up), column c holds y = Y-1-c (left is left).
    bx, by = x - 5, 4
    assert tuple(img[0, x - 1 - bx, y - 1 - by]) == tuple(PALETTE[BUILDING])  # top layer: full colour
    road = img[0, x // 2, y - 1 - y // 2 + 3]
    assert np.all(road <= PALETTE[ROAD]) and road.argmax() == PALETTE[ROAD].argmax()  # lowest layer: darker
    empty = np.zeros((1, 4, 4, 2), dtype=np.uint8)
    assert np.all(bev_rgb(empty) == BACKGROUND)


def test_render_bev_scale_and_ego_marker():
    img = render_bev(street_clip()[0], scale=3)
    assert img.shape == (96, 96, 3)
    assert tuple(img[48, 48]) == (255, 255, 255)  # ego marker at the centre
    assert tuple(render_bev(street_clip()[0], scale=3, ego_marker=False)[48, 48]) != (255, 255, 255)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 4), np.uint8), "shape"),
    (np.zeros((4, 4, 2), np.float32), "integer"),
    (np.full((4, 4, 2), 12, np.uint8), "class id 12"),
    (np.full((4, 4, 2), -1, np.int64), "class id -1"),
])
def test_bev_rejects_bad_occupancy(bad, message):
    with pytest.raises(ValueError, match=message):
        render_bev(bad)


def test_bev_rejects_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        render_bev(street_clip()[0], scale=0)


# ---- oblique ----------------------------------------------------------------------------------------------------

def _reference_oblique(occ_XYZ: np.ndarray, camera: ObliqueCamera) -> np.ndarray:
    """Per-face, per-pixel z-test in plain loops: nearest (depth, shade) wins; same depth quantisation."""
    from dcgen.render.oblique import DEPTH_BITS, _frame_box, _orientations

    x_n, y_n, z_n = occ_XYZ.shape
    (h, w), offset, (dmin, dmax) = _frame_box(occ_XYZ.shape, camera, 1.0)
    proj = camera.projection
    view = camera.view_dir / np.linalg.norm(camera.view_dir)
    levels = (1 << DEPTH_BITS) - 1
    best = {}
    for o in _orientations(camera):
        alpha, beta = _stencil(proj[:, o.span[0]], proj[:, o.span[1]], True)
        for vx in range(x_n):
            for vy in range(y_n):
                for vz in range(z_n):
                    cls = int(occ_XYZ[vx, vy, vz])
                    nb = [vx, vy, vz]
                    nb[o.axis] += o.sign
                    inside = all(0 <= nb[a] < occ_XYZ.shape[a] for a in range(3))
                    if cls == 0 or (inside and occ_XYZ[tuple(nb)] != 0):
                        continue
                    corner = np.array([vx, vy, vz], dtype=np.float64)
                    if o.sign > 0:
                        corner[o.axis] += 1
                    shade = (cls * 3 + o.axis) * z_n + vz
                    for a, b in zip(alpha, beta):
                        point = corner.copy()
                        point[o.span[0]] += a
                        point[o.span[1]] += b
                        col, row = np.floor(proj @ point + offset).astype(int)
                        depth_q = int(np.rint((point @ view - dmin) * levels / (dmax - dmin)))
                        key = (depth_q, shade)
                        if (row, col) not in best or key < best[(row, col)]:
                            best[(row, col)] = key
    lut = _shade_lut(camera, z_n)
    img = np.broadcast_to(lut[-1], (h, w, 3)).copy()
    for (row, col), (_, shade) in best.items():
        img[row, col] = lut[shade]
    return img


def test_oblique_matches_loop_reference_zbuffer():
    rng = np.random.default_rng(3)
    occ = (rng.random((6, 5, 3)) < 0.45) * rng.integers(1, 11, (6, 5, 3))
    occ = occ.astype(np.uint8)
    fast = oblique_rgb(occ[None], DEFAULT_CAMERA, 1.0, outline=False)[0]
    np.testing.assert_array_equal(fast, _reference_oblique(occ, DEFAULT_CAMERA))


def test_exact_stencils_tile_the_plane():
    camera = DEFAULT_CAMERA
    proj = camera.projection
    for a, b in ((0, 1), (1, 2), (0, 2)):
        alpha, _ = _stencil(proj[:, a], proj[:, b], True)
        area = abs(np.linalg.det(proj[:, [a, b]]))
        assert len(alpha) == round(area)  # one pixel per unit of area: no gap, no overlap


def test_oblique_shape_colours_and_occlusion():
    occ = street_clip()[0]
    img = render_oblique(occ, ego_marker=False)
    assert img.shape == (*oblique_image_size(occ.shape), 3) and img.dtype == np.uint8
    lut = _shade_lut(DEFAULT_CAMERA, occ.shape[2])
    top = lambda cls, z: tuple(lut[(cls * 3 + 2) * occ.shape[2] + z])  # noqa: E731
    found = colours_of(render_oblique(occ, ego_marker=False, outline=False))
    assert {top(BUILDING, 3), top(ROAD, 0), top(GROUND, 0), top(VEHICLE, 1)} <= found
    # A tall wall right behind the vehicle (further along the view) must not paint over it.
    walled = occ.copy()
    walled[9:10, :, 1:] = BUILDING
    assert top(VEHICLE, 1) in colours_of(render_oblique(walled, ego_marker=False, outline=False))


def test_oblique_empty_grid_is_background():
    img = oblique_rgb(np.zeros((2, 4, 4, 2), np.uint8))
    assert np.all(img == BACKGROUND)


def test_oblique_carlasc_frame_renders_well_under_a_second():
    occ = street_clip(1, (128, 128, 8))[0]
    render_oblique(occ)
    start = time.perf_counter()
    render_oblique(occ)
    assert time.perf_counter() - start < 0.5


def test_oblique_rejects_bad_camera_and_scale():
    with pytest.raises(ValueError, match="onto a line"):
        ObliqueCamera(x_px=(1, 1), y_px=(2, 2), z_px=(3, 3))
    with pytest.raises(ValueError, match="whole pixel steps"):
        ObliqueCamera(x_px=(0.5, -3))
    with pytest.raises(ValueError, match="positive integer"):
        render_oblique(street_clip()[0], scale=1.5)
    with pytest.raises(ValueError, match="positive number"):
        oblique_rgb(street_clip(), scale=0.0)


# ---- clips, comparisons, files -------------------------------------------------------------------------------------

def test_gif_has_one_frame_per_clip_frame(tmp_path):
    occ = street_clip(5)
    path = save_clip(tmp_path / "clip.gif", occ, title="street", target_height=64)
    with Image.open(path) as gif:
        assert gif.n_frames == 5


def test_png_single_frame_and_contact_sheet(tmp_path):
    occ = street_clip(3)
    single = save_clip(tmp_path / "one.png", occ, frame=2, target_height=64)
    sheet = save_clip(tmp_path / "sheet.png", occ, columns=2, target_height=64)
    with Image.open(single) as one, Image.open(sheet) as all_frames:
        w, h = one.size
        assert all_frames.size == (2 * w, 2 * h)


def test_frames_show_views_legend_and_change_over_time():
    occ = street_clip(2)
    frames = compose_frames([("", occ)], title="t", target_height=64)
    assert len(frames) == 2 and frames[0].size == frames[1].size
    pixels = np.asarray(frames[0])
    for cls in (BUILDING, ROAD, VEHICLE):  # legend swatches hold the exact palette colours
        assert np.all(pixels == PALETTE[cls], axis=-1).any()
    assert not np.array_equal(pixels, np.asarray(frames[1]))  # counter and vehicle move
    assert classes_present([occ]) == sorted([GROUND, ROAD, BUILDING, VEHICLE])


def test_comparison_stacks_rows(tmp_path):
    gt = street_clip(2)
    rec = gt.copy()
    rec[rec == VEHICLE] = 0
    single = compose_frames([("", gt)], target_height=64)[0]
    both = compose_frames([("ground truth", gt), ("reconstruction", rec)], target_height=64)[0]
    assert both.size[0] == single.size[0] and both.size[1] > 1.8 * single.size[1] - 100
    path = save_comparison(tmp_path / "cmp.gif", [("ground truth", gt), ("reconstruction", rec)], target_height=64)
    with Image.open(path) as gif:
        assert gif.n_frames == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"path": "clip.jpg"}, "ending in .gif or .png"),
    ({"path": "clip.gif", "frame": 0}, "GIF holds every frame"),
    ({"path": "clip.png", "frame": 9}, "frame 9 is out of range"),
    ({"path": "clip.gif", "fps": 0}, "fps must be positive"),
])
def test_save_clip_rejects_bad_requests(tmp_path, kwargs, message):
    kwargs = dict(kwargs)
    path = tmp_path / kwargs.pop("path")
    with pytest.raises(ValueError, match=message):
        save_clip(path, street_clip(2), target_height=64, **kwargs)


def test_comparison_rejects_mismatched_clips():
    with pytest.raises(ValueError, match="share the first clip's shape"):
        compose_frames([("a", street_clip(2)), ("b", street_clip(3))])
    with pytest.raises(ValueError, match="at least one"):
        compose_frames([])


# ---- metric renders ---------------------------------------------------------------------------------------------

def test_render_for_metrics_shapes_views_and_order():
    occ = np.stack([street_clip(5), street_clip(5)[:, ::-1]])
    views = render_for_metrics(occ, size=48)
    frames = default_frames(5)
    assert frames == (0, 2, 4)
    assert views.shape == (2, 2 * len(frames), 48, 48, 3) and views.dtype == np.uint8
    # View 2i is the bird's-eye image of frames[i]: 32x32 voxels fill 48x48 pixels, 1.5 px per voxel.
    bev = bev_rgb(occ[1, 2][None])[0]
    np.testing.assert_array_equal(views[1, 2][::3, ::3], bev[::2, ::2])
    oblique = views[0, 1]
    assert (oblique != BACKGROUND).any(axis=-1).mean() > 0.3  # the oblique view is not empty
    assert not np.array_equal(views[0], views[1])
    picked = render_for_metrics(occ, size=48, frames=[3])
    assert picked.shape == (2, 2, 48, 48, 3)


def test_render_for_metrics_accepts_a_tensor():
    import torch

    occ = torch.from_numpy(street_clip(2)[None])
    assert render_for_metrics(occ, size=16).shape == (1, 4, 16, 16, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"size": 4}, "size must be an integer >= 8"),
    ({"frames": [7]}, r"indices in 0\.\.3"),
    ({"frames": []}, "non-empty"),
])
def test_render_for_metrics_rejects_bad_requests(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_for_metrics(street_clip(4)[None], **kwargs)
    with pytest.raises(ValueError, match="N, T, X, Y, Z"):
        render_for_metrics(street_clip(4))
