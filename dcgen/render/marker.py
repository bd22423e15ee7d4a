"""The ego marker: a white arrowhead with a dark rim, pointing up the image (the ego's forward, X, in both views).

Drawn straight into an ``[H, W, 3]`` uint8 array with numpy so renders stay arrays until they are saved.
"""

from __future__ import annotations

import numpy as np

FILL = np.array([255, 255, 255], dtype=np.uint8)
RIM = np.array([0, 0, 0], dtype=np.uint8)


def _triangle_mask(rows: np.ndarray, cols: np.ndarray, tip_r: float, c: float, height: float) -> np.ndarray:
    """Pixels whose centres lie in the upward triangle with tip ``(tip_r, c)``, ``height`` tall and as wide."""
    dr = rows + 0.5 - tip_r
    return (dr >= 0) & (dr <= height) & (np.abs(cols + 0.5 - c) <= 0.5 * dr + 0.5)


def draw_ego_marker(img_HW3: np.ndarray, row: float, col: float, size: int) -> np.ndarray:
    """Draw the marker centred at pixel ``(row, col)``, ``size`` pixels tall, in place; returns ``img_HW3``."""
    if size < 1:
        raise ValueError(f"ego marker size must be >= 1 pixel, got {size}")
    h, w = img_HW3.shape[:2]
    rim = max(1, size // 5)
    r0, r1 = int(np.floor(row - size)), int(np.ceil(row + size)) + 1
    c0, c1 = int(np.floor(col - size)), int(np.ceil(col + size)) + 1
    r0, r1, c0, c1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    if r0 >= r1 or c0 >= c1:
        return img_HW3
    rows = np.arange(r0, r1, dtype=np.float32)[:, None]
    cols = np.arange(c0, c1, dtype=np.float32)[None, :]
    tip = row - 0.5 * size
    outer = _triangle_mask(rows, cols, tip - 1.5 * rim, col, size + 2.0 * rim)
    inner = _triangle_mask(rows, cols, tip, col, size)
    window = img_HW3[r0:r1, c0:c1]
    window[outer] = RIM
    window[inner] = FILL
    return img_HW3
