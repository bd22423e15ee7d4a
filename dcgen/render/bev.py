"""Bird's-eye view of occupancy frames (the top-down render of SPEC §4): each ``(x, y)`` column shows the colour of
its top-most occupied class, brightened with height so tall things (buildings, poles, trees) stand out from the
road; empty columns show the dark background.

Image orientation: X (forward) points up and Y (left) points left, so row ``r`` holds ``x = X - 1 - r`` and column
``c`` holds ``y = Y - 1 - c``; the ego sits at the image centre.
"""

from __future__ import annotations

import numpy as np

from dcgen.data.classes import PALETTE
from dcgen.render.marker import draw_ego_marker
from dcgen.render.palette import BACKGROUND, class_ids, shaded

LOW_BRIGHTNESS = 0.6  # factor for a column whose top is the lowest layer; the highest layer gets 1.0


def _height_lut(num_layers: int) -> np.ndarray:
    """``[K + 1, Z, 3]`` colour of class k topping out at layer z; the extra last row is the background."""
    ramp_Z = np.linspace(LOW_BRIGHTNESS, 1.0, num_layers) if num_layers > 1 else np.ones(1)
    lut = shaded(PALETTE[:, None, :], np.broadcast_to(ramp_Z, (len(PALETTE), num_layers)))
    return np.concatenate([lut, np.broadcast_to(BACKGROUND, (1, num_layers, 3))], axis=0)


def bev_rgb(occ_NXYZ) -> np.ndarray:
    """``[N, X, Y, 3]`` uint8 bird's-eye colours of N frames at one pixel per column, in image orientation."""
    occ_NXYZ = class_ids(occ_NXYZ, 4, "N, X, Y, Z")
    num_layers = occ_NXYZ.shape[3]
    occupied_NXYZ = occ_NXYZ != 0
    top_NXY = num_layers - 1 - np.argmax(occupied_NXYZ[..., ::-1], axis=3)
    cls_NXY = np.take_along_axis(occ_NXYZ, top_NXY[..., None], axis=3)[..., 0].astype(np.intp)
    cls_NXY[~occupied_NXYZ.any(axis=3)] = len(PALETTE)  # background row of the lookup table
    rgb_NXY3 = _height_lut(num_layers)[cls_NXY, top_NXY]
    return np.ascontiguousarray(rgb_NXY3[:, ::-1, ::-1])


def render_bev(occ_XYZ, scale: int = 4, ego_marker: bool = True) -> np.ndarray:
    """``[X * scale, Y * scale, 3]`` uint8 bird's-eye image of one frame, the ego marked at the centre."""
    if int(scale) != scale or scale < 1:
        raise ValueError(f"bird's-eye scale must be a positive integer (pixels per voxel), got {scale}")
    occ_XYZ = class_ids(occ_XYZ, 3, "X, Y, Z")
    img_HW3 = bev_rgb(occ_XYZ[None])[0]
    img_HW3 = np.repeat(np.repeat(img_HW3, scale, axis=0), scale, axis=1)
    if ego_marker:
        h, w = img_HW3.shape[:2]
        draw_ego_marker(img_HW3, h / 2, w / 2, size=max(5, min(h, w) // 24))
    return img_HW3
