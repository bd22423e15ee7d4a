"""Oblique 3D view of occupancy frames (the fixed-camera render of SPEC §4): every voxel face a fixed camera behind,
to the right of and above the ego can see is painted in its class colour with Lambert shading, the nearest face
winning each pixel.

The camera is a parallel (oblique) projection given by where one voxel step along X, Y and Z moves on screen, in
whole pixels. Integer steps make every face of one orientation the same pixel stencil, so a frame renders exactly by
stamping stencils at the faces' corners: fully vectorised, no per-face loop. The z-buffer is a single sort of
64-bit keys ``pixel | depth | colour`` and keeping the first key of each pixel. At a fractional scale (the small
images the metrics use) faces are sampled on a sub-pixel grid instead of stamped, with the same z-buffer.
Only faces whose neighbour across them is free (or outside the grid) are drawn; silhouettes get a dark outline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dcgen.data.classes import PALETTE
from dcgen.render.marker import draw_ego_marker
from dcgen.render.palette import BACKGROUND, class_ids, shaded

DEPTH_BITS = 20
MAX_CANDIDATES = 1 << 21  # face samples z-buffered per chunk of frames; bounds memory to ~100 MB
OUTLINE_DEPTH = 1.0  # voxels: a neighbour this much farther marks a silhouette
OUTLINE_FACTOR = 0.55
CREASE_FACTOR = 0.8
HEIGHT_TINT = 0.2  # the lowest layer is this much darker than the highest


@dataclass(frozen=True)
class ObliqueCamera:
    """Screen step ``(column, row)`` in pixels of one voxel along X (forward), Y (left) and Z (up); light direction."""

    x_px: tuple[int, int] = (1, -3)
    y_px: tuple[int, int] = (-4, 0)
    z_px: tuple[int, int] = (0, -4)
    light: tuple[float, float, float] = (-0.3, -0.5, 1.0)  # towards the light, world X, Y, Z
    ambient: float = 0.45

    def __post_init__(self) -> None:
        for name in ("x_px", "y_px", "z_px"):
            step = getattr(self, name)
            if len(step) != 2 or any(int(v) != v for v in step):
                raise ValueError(f"camera {name} must be two whole pixel steps (column, row), got {step}")
        if not self.view_dir.any():
            raise ValueError(f"camera steps x_px={self.x_px}, y_px={self.y_px}, z_px={self.z_px} project the "
                             "grid onto a line; expected steps spanning the screen")
        if len(self.light) != 3 or not np.any(self.light):
            raise ValueError(f"camera light must be a non-zero 3-vector, got {self.light}")
        if not 0.0 <= self.ambient <= 1.0:
            raise ValueError(f"camera ambient must be in [0, 1], got {self.ambient}")

    @property
    def projection(self) -> np.ndarray:
        """``[2, 3]`` matrix taking world voxel coordinates (x, y, z) to screen (column, row) at scale 1."""
        return np.array([self.x_px, self.y_px, self.z_px], dtype=np.float64).T

    @property
    def view_dir(self) -> np.ndarray:
        """Direction the camera looks along (into the scene), world coordinates, not normalised.

        With screen (column right, row down, depth into the screen) a right-handed frame, the projection's null space
        oriented by the cross product of its rows points away from the camera.
        """
        p = self.projection
        return np.cross(p[0], p[1])


DEFAULT_CAMERA = ObliqueCamera()


@dataclass(frozen=True)
class _Orientation:
    axis: int  # face normal along this world axis
    sign: int  # +1 or -1: which side of the voxel
    span: tuple[int, int]  # the two world axes the face spans


def _orientations(camera: ObliqueCamera) -> list[_Orientation]:
    view = camera.view_dir
    out = []
    for axis in range(3):
        if view[axis] != 0:  # a face whose normal is perpendicular to the view is edge-on
            span = tuple(a for a in range(3) if a != axis)
            out.append(_Orientation(axis, -int(np.sign(view[axis])), span))
    return out


def _stencil(step_a: np.ndarray, step_b: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """Face coordinates ``(alpha, beta)`` in [0, 1)² of the samples splatted for one face spanned by two screen steps.

    Exact (integer steps): the centres of the pixels the face covers, half-open so neighbouring faces tile without
    gap or overlap. Otherwise: a sub-pixel grid fine enough (spacing < 0.5 px) that every covered pixel gets a sample.
    """
    if not exact:
        n = max(1, math.ceil(2.0 * max(np.hypot(*step_a), np.hypot(*step_b))))
        grid = (np.arange(n) + 0.5) / n
        alpha, beta = np.meshgrid(grid, grid, indexing="ij")
        return alpha.ravel(), beta.ravel()
    au, av = int(step_a[0]), int(step_a[1])
    bu, bv = int(step_b[0]), int(step_b[1])
    det = au * bv - av * bu
    us, vs = [0, au, bu, au + bu], [0, av, bv, av + bv]
    i, j = np.meshgrid(np.arange(min(us), max(us)), np.arange(min(vs), max(vs)), indexing="ij")
    cu, cv = 2 * i.ravel() + 1, 2 * j.ravel() + 1  # twice the pixel centre, integer
    num_a, num_b = cu * bv - cv * bu, au * cv - av * cu  # alpha = num_a / (2 det), beta = num_b / (2 det)
    two_det = 2 * det
    if det > 0:
        keep = (num_a >= 0) & (num_a < two_det) & (num_b >= 0) & (num_b < two_det)
    else:
        keep = (num_a <= 0) & (num_a > two_det) & (num_b <= 0) & (num_b > two_det)
    return num_a[keep] / two_det, num_b[keep] / two_det


def _shade_lut(camera: ObliqueCamera, num_layers: int) -> np.ndarray:
    """``[K * 3 * Z + 1, 3]``: colour of class k on a face normal to axis a at layer z; last row the background."""
    light = np.asarray(camera.light, dtype=np.float64)
    light = light / np.linalg.norm(light)
    factor_3 = np.ones(3)
    for o in _orientations(camera):
        lambert = max(0.0, o.sign * light[o.axis])
        factor_3[o.axis] = camera.ambient + (1.0 - camera.ambient) * lambert
    tint_Z = 1.0 - HEIGHT_TINT + HEIGHT_TINT * (np.arange(num_layers) / max(num_layers - 1, 1))
    factor_K3Z = np.broadcast_to(factor_3[None, :, None] * tint_Z[None, None, :], (len(PALETTE), 3, num_layers))
    lut = shaded(PALETTE[:, None, None, :], factor_K3Z).reshape(-1, 3)
    return np.concatenate([lut, BACKGROUND[None]], axis=0)


def _frame_box(size_xyz: tuple[int, int, int], camera: ObliqueCamera, scale: float):
    """Image ``(H, W)``, the screen offset placing the grid inside it, and the depth range of the grid's box."""
    corners_83 = np.array(np.meshgrid(*[[0, s] for s in size_xyz], indexing="ij"), dtype=np.float64).reshape(3, -1).T
    uv_82 = scale * corners_83 @ camera.projection.T
    lo, hi = np.floor(uv_82.min(axis=0)), np.ceil(uv_82.max(axis=0))
    view = camera.view_dir / np.linalg.norm(camera.view_dir)
    depth_8 = corners_83 @ view
    return (int(hi[1] - lo[1]), int(hi[0] - lo[0])), -lo, (float(depth_8.min()), float(depth_8.max()))


def oblique_image_size(size_xyz: tuple[int, int, int], camera: ObliqueCamera = DEFAULT_CAMERA,
                       scale: float = 1.0) -> tuple[int, int]:
    """``(H, W)`` of the oblique image of a grid of ``size_xyz`` voxels at ``scale``."""
    return _frame_box(tuple(int(s) for s in size_xyz), camera, float(scale))[0]


def _exposed_faces(occ_NXYZ: np.ndarray, o: _Orientation):
    """Frame index, voxel coordinates and class of every occupied voxel whose neighbour across face ``o`` is free."""
    occupied = occ_NXYZ != 0
    ax = o.axis + 1
    neighbour = np.zeros_like(occupied)
    src = [slice(None)] * 4
    dst = [slice(None)] * 4
    if o.sign > 0:
        dst[ax], src[ax] = slice(None, -1), slice(1, None)
    else:
        dst[ax], src[ax] = slice(1, None), slice(None, -1)
    neighbour[tuple(dst)] = occupied[tuple(src)]
    n, x, y, z = np.nonzero(occupied & ~neighbour)
    return n, np.stack([x, y, z], axis=1), occ_NXYZ[n, x, y, z]


def _zbuffer(occ_NXYZ: np.ndarray, camera: ObliqueCamera, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """``shade_NHW`` (rows of ``_shade_lut``) and ``depth_NHW`` (voxels along the view; inf on background)."""
    num, *size_xyz = occ_NXYZ.shape
    num_layers = size_xyz[2]
    (h, w), offset_2, (dmin, dmax) = _frame_box(tuple(size_xyz), camera, scale)
    exact = float(scale).is_integer()
    proj_23 = scale * camera.projection
    view_3 = camera.view_dir / np.linalg.norm(camera.view_dir)
    num_shades = len(PALETTE) * 3 * num_layers
    shade_bits = max(1, num_shades.bit_length())
    depth_levels = (1 << DEPTH_BITS) - 1
    depth_span = max(dmax - dmin, 1e-9)

    max_frames = max(1, (1 << (62 - DEPTH_BITS - shade_bits)) // (h * w))  # pixel ids must fit the key

    faces = []
    faces_per_frame = np.zeros(num, dtype=np.int64)
    for o in _orientations(camera):
        n_F, corner_F3, cls_F = _exposed_faces(occ_NXYZ, o)
        shade_F = (cls_F.astype(np.int64) * 3 + o.axis) * num_layers + corner_F3[:, 2]
        corner_F3 = corner_F3.astype(np.float64)
        if o.sign > 0:
            corner_F3[:, o.axis] += 1.0
        step_a, step_b = proj_23[:, o.span[0]], proj_23[:, o.span[1]]
        alpha_S, beta_S = _stencil(step_a, step_b, exact)
        faces.append((n_F, corner_F3, shade_F, step_a, step_b, alpha_S, beta_S, o))
        faces_per_frame += np.bincount(n_F, minlength=num) * len(alpha_S)

    shade_NHW = np.full((num, h, w), num_shades, dtype=np.int64)
    depth_NHW = np.full((num, h, w), np.inf, dtype=np.float32)
    start = 0
    while start < num:
        # Frames [start, stop) hold at most MAX_CANDIDATES samples (at least one frame).
        stop = start + max(1, int(np.searchsorted(np.cumsum(faces_per_frame[start:]), MAX_CANDIDATES, "right")))
        stop = min(stop, start + max_frames)
        keys = []
        for n_F, corner_F3, shade_F, step_a, step_b, alpha_S, beta_S, o in faces:
            lo, hi = np.searchsorted(n_F, [start, stop])
            if lo == hi:
                continue
            # Sample-major [S, F] layout: the inner loop runs over faces, not over a handful of samples.
            c_F3 = corner_F3[lo:hi]
            u_F, v_F = (c_F3 @ proj_23.T + offset_2).T
            col_SF = np.floor(u_F + (alpha_S * step_a[0] + beta_S * step_b[0])[:, None]).astype(np.int64)
            row_SF = np.floor(v_F + (alpha_S * step_a[1] + beta_S * step_b[1])[:, None]).astype(np.int64)
            np.clip(col_SF, 0, w - 1, out=col_SF)
            np.clip(row_SF, 0, h - 1, out=row_SF)
            depth_F = (c_F3 @ view_3 - dmin) * (depth_levels / depth_span)
            depth_S = (alpha_S * view_3[o.span[0]] + beta_S * view_3[o.span[1]]) * (depth_levels / depth_span)
            depth_q_SF = np.rint(depth_F + depth_S[:, None]).astype(np.int64)
            pix_SF = ((n_F[lo:hi] - start) * h + row_SF) * w + col_SF
            keys.append(((pix_SF << DEPTH_BITS | depth_q_SF) << shade_bits | shade_F[lo:hi]).ravel())
        if keys:
            key = np.sort(np.concatenate(keys))
            pix = key >> (DEPTH_BITS + shade_bits)
            first = np.empty(len(key), dtype=bool)
            first[0] = True
            np.not_equal(pix[1:], pix[:-1], out=first[1:])
            key, pix = key[first], pix[first]
            chunk_shade = shade_NHW[start:stop].reshape(-1)
            chunk_depth = depth_NHW[start:stop].reshape(-1)
            chunk_shade[pix] = key & ((1 << shade_bits) - 1)
            chunk_depth[pix] = dmin + ((key >> shade_bits) & depth_levels) * (depth_span / depth_levels)
        start = stop
    return shade_NHW, depth_NHW


def _outline(rgb_NHW3: np.ndarray, depth_NHW: np.ndarray, axis_NHW: np.ndarray) -> None:
    """Darken, in place, the near side of every silhouette (a 4-neighbour much farther) strongly, and creases
    (where the face orientation ``axis_NHW`` changes) lightly, so boxes read as boxes."""
    finite = np.isfinite(depth_NHW)
    crease = np.zeros(depth_NHW.shape, dtype=bool)
    crease[:, :-1] |= axis_NHW[:, 1:] != axis_NHW[:, :-1]
    crease[:, :, :-1] |= axis_NHW[:, :, 1:] != axis_NHW[:, :, :-1]
    crease &= finite
    rgb_NHW3[crease] = shaded(rgb_NHW3[crease], CREASE_FACTOR)
    edge = np.zeros(depth_NHW.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        edge[:, 1:] |= depth_NHW[:, :-1] - depth_NHW[:, 1:] > OUTLINE_DEPTH
        edge[:, :-1] |= depth_NHW[:, 1:] - depth_NHW[:, :-1] > OUTLINE_DEPTH
        edge[:, :, 1:] |= depth_NHW[:, :, :-1] - depth_NHW[:, :, 1:] > OUTLINE_DEPTH
        edge[:, :, :-1] |= depth_NHW[:, :, 1:] - depth_NHW[:, :, :-1] > OUTLINE_DEPTH
    edge &= finite
    rgb_NHW3[edge] = shaded(rgb_NHW3[edge], OUTLINE_FACTOR)


def oblique_rgb(occ_NXYZ, camera: ObliqueCamera = DEFAULT_CAMERA, scale: float = 1.0,
                outline: bool = True) -> np.ndarray:
    """``[N, H, W, 3]`` uint8 oblique views of N frames; ``scale`` multiplies the camera's pixel steps.

    A whole-number scale stamps exact pixel stencils; a fractional one (e.g. 0.2 for small metric images) samples
    faces on a sub-pixel grid. Outlines are drawn only at scale >= 1, where a pixel is smaller than a voxel.
    """
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"oblique scale must be a positive number (multiplier of the camera's pixel steps), "
                         f"got {scale}")
    occ_NXYZ = class_ids(occ_NXYZ, 4, "N, X, Y, Z")
    shade_NHW, depth_NHW = _zbuffer(occ_NXYZ, camera, float(scale))
    rgb_NHW3 = _shade_lut(camera, occ_NXYZ.shape[3])[shade_NHW]
    if outline and scale >= 1:
        num_layers = occ_NXYZ.shape[3]
        _outline(rgb_NHW3, depth_NHW, (shade_NHW // num_layers) % 3)
    return rgb_NHW3


def render_oblique(occ_XYZ, camera: ObliqueCamera = DEFAULT_CAMERA, scale: int = 1, outline: bool = True,
                   ego_marker: bool = True) -> np.ndarray:
    """``[H, W, 3]`` uint8 oblique view of one frame, the ego marked on the ground (or roof) at the grid centre."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"oblique scale must be a positive integer for a display render, got {scale}")
    occ_XYZ = class_ids(occ_XYZ, 3, "X, Y, Z")
    img_HW3 = oblique_rgb(occ_XYZ[None], camera, float(scale), outline)[0]
    if ego_marker:
        x, y, z = occ_XYZ.shape
        centre = occ_XYZ[max(x // 2 - 1, 0):x // 2 + 1, max(y // 2 - 1, 0):y // 2 + 1] != 0
        layers = np.nonzero(centre.any(axis=(0, 1)))[0]
        top = float(layers[-1] + 1) if len(layers) else 0.0
        _, offset_2, _ = _frame_box((x, y, z), camera, float(scale))
        col, row = scale * camera.projection @ np.array([x / 2, y / 2, top]) + offset_2
        draw_ego_marker(img_HW3, row, col, size=max(7, img_HW3.shape[0] // 40))
    return img_HW3
