"""Batched small renders that feed the 2D generation metrics (SPEC §4: "render each clip to images with the class
colours, bird's-eye and a fixed oblique camera").

For every clip ``n`` and every selected frame ``t`` (default: first, middle, last) two square views are made:
view ``2 i`` is the bird's-eye image of frame ``frames[i]`` and view ``2 i + 1`` its oblique image from the default
fixed camera. Both keep their aspect ratio, are centred on the background colour and carry no ego marker, outline
or text: only scene content differs between clips. Everything is vectorised over clips and frames (one z-buffer
sort per chunk of frames), with no per-clip Python loop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dcgen.render.bev import bev_rgb
from dcgen.render.oblique import DEFAULT_CAMERA, ObliqueCamera, oblique_image_size, oblique_rgb
from dcgen.render.palette import BACKGROUND, class_ids

MIN_SIZE = 8


def default_frames(num_frames: int) -> tuple[int, ...]:
    """First, middle and last frame (fewer when the clip is shorter than three frames)."""
    return tuple(sorted({0, num_frames // 2, num_frames - 1}))


def _fit_nearest(img_MHW3: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize keeping the aspect ratio, centred in ``[M, size, size, 3]`` background."""
    m, h, w, _ = img_MHW3.shape
    scale = size / max(h, w)
    out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
    rows = np.minimum((np.arange(out_h) + 0.5) * h / out_h, h - 1).astype(np.intp)
    cols = np.minimum((np.arange(out_w) + 0.5) * w / out_w, w - 1).astype(np.intp)
    return _centre(img_MHW3[:, rows][:, :, cols], size)


def _centre(img_MHW3: np.ndarray, size: int) -> np.ndarray:
    m, h, w, _ = img_MHW3.shape
    out = np.empty((m, size, size, 3), dtype=np.uint8)
    out[:] = BACKGROUND
    top, left = (size - h) // 2, (size - w) // 2
    out[:, top:top + h, left:left + w] = img_MHW3
    return out


def render_for_metrics(occ_NTXYZ, size: int = 128, frames: Sequence[int] | None = None,
                       camera: ObliqueCamera = DEFAULT_CAMERA) -> np.ndarray:
    """``[N, V, size, size, 3]`` uint8 views, ``V = 2 * len(frames)``: (bird's-eye, oblique) per selected frame.

    ``occ_NTXYZ`` is a numpy array (or CPU tensor) of class ids; ``frames`` are frame indices, default
    ``default_frames(T)``.
    """
    occ_NTXYZ = class_ids(occ_NTXYZ, 5, "N, T, X, Y, Z")
    if int(size) != size or size < MIN_SIZE:
        raise ValueError(f"metric render size must be an integer >= {MIN_SIZE} pixels, got {size}")
    n, t, *size_xyz = occ_NTXYZ.shape
    frames = default_frames(t) if frames is None else tuple(int(f) for f in frames)
    if not frames or any(not 0 <= f < t for f in frames):
        raise ValueError(f"frames {list(frames)} must be a non-empty list of indices in 0..{t - 1}")
    occ_MXYZ = occ_NTXYZ[:, list(frames)].reshape(n * len(frames), *size_xyz)

    bev_M = _fit_nearest(bev_rgb(occ_MXYZ), size)
    obl_h, obl_w = oblique_image_size(tuple(size_xyz), camera, 1.0)
    # Two pixels under the exact fit: the projected box is rounded outwards at both ends.
    obl_M = _centre(oblique_rgb(occ_MXYZ, camera, (size - 2) / max(obl_h, obl_w), outline=False), size)
    views_M2 = np.stack([bev_M, obl_M], axis=1)
    return views_M2.reshape(n, 2 * len(frames), size, size, 3)
