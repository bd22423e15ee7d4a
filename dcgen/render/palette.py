"""Colours every dcgen picture shares: the class palette of SPEC §1 (``dcgen.data.classes.PALETTE``), the dark
background that free space shows as, brightness shading, and the check that an array holds class ids the palette
can paint.

Shading multiplies a class colour by a factor; a lookup table of shaded colours is built once per render so the
per-pixel work is one fancy index.
"""

from __future__ import annotations

import numpy as np

from dcgen.data.classes import PALETTE

BACKGROUND = np.array([18, 20, 26], dtype=np.uint8)  # free space and everything outside the grid
TEXT = (235, 235, 235)
NUM_PAINTABLE = len(PALETTE)


def shaded(rgb: np.ndarray, factor: np.ndarray | float) -> np.ndarray:
    """``rgb * factor`` rounded and clipped to uint8; ``factor`` broadcasts against ``rgb[..., 0]``."""
    out = rgb.astype(np.float32) * np.asarray(factor, dtype=np.float32)[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def class_ids(occ, ndim: int, axes: str) -> np.ndarray:
    """``occ`` as a uint8 array of ``ndim`` dimensions named by ``axes`` (e.g. "X, Y, Z"), ids in the palette's range.

    Accepts numpy arrays and anything ``np.asarray`` takes (CPU torch tensors included).
    """
    arr = np.asarray(occ)
    if arr.ndim != ndim:
        raise ValueError(f"occupancy must have shape [{axes}] ({ndim} dims), got shape {list(arr.shape)}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"occupancy must hold integer class ids, got dtype {arr.dtype}")
    if min(arr.shape, default=1) == 0:
        raise ValueError(f"occupancy must not be empty, got shape {list(arr.shape)}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= NUM_PAINTABLE:
        bad = lo if lo < 0 else hi
        raise ValueError(f"occupancy holds class id {bad}; expected ids 0..{NUM_PAINTABLE - 1} (0 = free)")
    return arr.astype(np.uint8, copy=False)
