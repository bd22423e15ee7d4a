"""Bar charts of object statistics for people (issue 23's fidelity report): per class, the distribution of
connected-component sizes of several sets of clips side by side (real, generated, reconstruction), and one panel of
the class mix. Drawn with PIL alone, no plotting library.

Sizes go into powers-of-two bins (1, 2, 3-4, 5-8, ... voxels), the last bin open-ended, so a vehicle of 40 voxels
and a pole of 3 share one axis; each bar is the share of that set's components in the bin, so sets of different
sizes compare. Series keep the order given; their colours are fixed by position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SERIES_COLOURS = ((60, 60, 60), (230, 120, 20), (40, 110, 200), (60, 160, 90))
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GRID = (220, 220, 220)
PANEL_W, PANEL_H = 400, 270
MAX_BINS = 10
FONT_SIZE = 13


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def size_bins(max_size: int, max_bins: int = MAX_BINS) -> list[tuple[int, int | None]]:
    """Powers-of-two bins ``(lo, hi)`` of sizes lo..hi voxels covering 1..``max_size``; the last has ``hi=None``
    (open-ended) when ``max_bins`` would not reach ``max_size``."""
    bins: list[tuple[int, int | None]] = [(1, 1)]
    while bins[-1][1] < max_size and len(bins) < max_bins:
        lo = bins[-1][1] + 1
        bins.append((lo, 2 * bins[-1][1]))
    if bins[-1][1] < max_size:
        bins[-1] = (bins[-1][0], None)
    return bins


def _bin_label(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else str(lo) if lo == hi else f"{lo}-{hi}"


def binned_shares(sizes: np.ndarray, bins: Sequence[tuple[int, int | None]]) -> np.ndarray:
    """Share of ``sizes`` in each bin (zeros for an empty set)."""
    sizes = np.asarray(sizes)
    counts = np.array([((sizes >= lo) & ((sizes <= hi) if hi is not None else True)).sum() for lo, hi in bins],
                      dtype=np.float64)
    return counts / sizes.size if sizes.size else counts


AXIS_TOPS = (0.04, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)  # quarters of each are round percentages


def _nice_top(value: float) -> float:
    """The axis top: the smallest of ``AXIS_TOPS`` at or above ``value``."""
    return next((top for top in AXIS_TOPS if value <= top + 1e-9), 1.0)


def _bars(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], shares_SB: np.ndarray, labels: Sequence[str],
          font) -> None:
    """Grouped bars (one group per label, one bar per series) with a percentage axis inside ``box``."""
    left, top, right, bottom = box
    axis_w, label_h = 34, FONT_SIZE + 4
    x0, y0, y1 = left + axis_w, bottom - label_h, top
    y_top = _nice_top(float(shares_SB.max()) if shares_SB.size else 0.0)
    for k in range(5):  # gridlines at quarters of the axis
        v = y_top * k / 4
        y = y0 - (y0 - y1) * k / 4
        draw.line([x0, y, right, y], fill=GRID)
        draw.text((left, y - FONT_SIZE // 2), f"{round(100 * v, 1):g}%", fill=INK, font=font)
    num_series, num_groups = shares_SB.shape
    group_w = (right - x0) / max(num_groups, 1)
    bar_w = max(1.0, (group_w - 4) / num_series)
    for g in range(num_groups):
        gx = x0 + g * group_w + 2
        for s in range(num_series):
            h = (y0 - y1) * shares_SB[s, g] / y_top
            if h > 0:
                draw.rectangle([gx + s * bar_w, y0 - h, gx + (s + 1) * bar_w - 1, y0], fill=SERIES_COLOURS[s])
        text = labels[g]
        tw = draw.textlength(text, font=font)
        draw.text((gx + (group_w - 4 - tw) / 2, y0 + 2), text, fill=INK, font=font)
    draw.line([x0, y0, right, y0], fill=INK)


def _legend(draw: ImageDraw.ImageDraw, x: int, y: int, entries: Sequence[str], font) -> None:
    for s, text in enumerate(entries):
        draw.rectangle([x, y + s * (FONT_SIZE + 3) + 2, x + 10, y + s * (FONT_SIZE + 3) + 12],
                       fill=SERIES_COLOURS[s])
        draw.text((x + 15, y + s * (FONT_SIZE + 3)), text, fill=INK, font=font)


def _size_panel(name: str, sizes: Mapping[str, np.ndarray]) -> Image.Image:
    font = _font()
    panel = Image.new("RGB", (PANEL_W, PANEL_H), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    draw.text((8, 6), f"{name}: component size (voxels)", fill=INK, font=_font(FONT_SIZE + 2))
    all_sizes = [np.asarray(s) for s in sizes.values()]
    max_size = max((int(s.max()) for s in all_sizes if s.size), default=1)
    bins = size_bins(max_size)
    shares_SB = np.stack([binned_shares(s, bins) for s in all_sizes])
    entries = [f"{series}: {s.size} comp." + (f", median {np.median(s):g}" if s.size else "")
               for series, s in zip(sizes, all_sizes)]
    legend_h = len(entries) * (FONT_SIZE + 3)
    _legend(draw, 12, 28, entries, font)
    _bars(draw, (6, 34 + legend_h, PANEL_W - 8, PANEL_H - 6), shares_SB, [_bin_label(*b) for b in bins], font)
    return panel


def _mix_panel(mix: Mapping[str, Mapping[str, float]], classes: Sequence[str], width: int) -> Image.Image:
    font = _font()
    panel = Image.new("RGB", (width, PANEL_H), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    draw.text((8, 6), "class mix: share of occupied voxels", fill=INK, font=_font(FONT_SIZE + 2))
    shares_SB = np.array([[float(m.get(c) or 0.0) for c in classes] for m in mix.values()])
    _legend(draw, 12, 28, list(mix), font)
    legend_h = len(mix) * (FONT_SIZE + 3)
    labels = [c if len(c) <= 8 else c[:7] + "." for c in classes]
    _bars(draw, (6, 34 + legend_h, width - 8, PANEL_H - 6), shares_SB, labels, font)
    return panel


def object_histograms(path: str | Path, sizes: Mapping[str, Mapping[str, np.ndarray]],
                      class_mix: Mapping[str, Mapping[str, float]], title: str = "", columns: int = 3) -> Path:
    """Write a PNG: one panel per class of ``sizes`` (class name -> series name -> component sizes), then a
    full-width class-mix panel (series name -> class name -> share). Returns the path."""
    if not sizes and not class_mix:
        raise ValueError("nothing to draw: expected component sizes of at least one class or a class mix")
    counts = {f"class {name}": len(per_series) for name, per_series in sizes.items()}
    counts["the class mix"] = len(class_mix)
    for what, num in counts.items():
        if num > len(SERIES_COLOURS):
            raise ValueError(f"{what}: {num} series; at most {len(SERIES_COLOURS)} can be told apart")
    panels = [_size_panel(name, per_series) for name, per_series in sizes.items()]
    cols = max(1, min(columns, len(panels)))
    width = max(cols, 2) * PANEL_W  # the class-mix panel needs two panels' width for its groups of bars
    rows = -(-len(panels) // cols)
    classes = list(dict.fromkeys(c for m in class_mix.values() for c, v in m.items() if v))
    header_h = FONT_SIZE + 16 if title else 0
    height = header_h + rows * PANEL_H + (PANEL_H if classes else 0)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((8, 6), title, fill=INK, font=_font(FONT_SIZE + 2))
    for k, panel in enumerate(panels):
        canvas.paste(panel, ((k % cols) * PANEL_W, header_h + (k // cols) * PANEL_H))
    if classes:
        canvas.paste(_mix_panel(class_mix, classes, width), (0, header_h + rows * PANEL_H))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
