"""Clip pictures for people (SPEC §4 renders): per frame, the bird's-eye and the oblique view side by side, one row
per clip (a single clip, or e.g. ground truth above reconstruction), a header with the title and a frame counter,
and a legend of the classes present. Saved as an animated GIF (all frames) or a PNG (one frame, or a contact sheet
of all frames).

The legend lists every class present in any frame of any row, so it stays put while the GIF plays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from dcgen.data.classes import CLASS_NAMES, PALETTE
from dcgen.render.bev import render_bev
from dcgen.render.oblique import DEFAULT_CAMERA, ObliqueCamera, oblique_image_size, render_oblique
from dcgen.render.palette import BACKGROUND, TEXT, class_ids

MARGIN = 10
GAP = 10
FONT_SIZE = 15
SWATCH = 14
FORMATS = (".gif", ".png")


def _font(size: int = FONT_SIZE) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def view_scales(size_xyz: tuple[int, int, int], camera: ObliqueCamera = DEFAULT_CAMERA,
                target_height: int = 400) -> tuple[int, int]:
    """Integer ``(bird's-eye, oblique)`` pixel scales putting both views near ``target_height`` pixels tall."""
    if target_height < 16:
        raise ValueError(f"target_height must be at least 16 pixels, got {target_height}")
    obl_h, _ = oblique_image_size(size_xyz, camera, 1.0)
    obl_scale = max(1, round(target_height / obl_h))
    bev_scale = max(1, round(obl_scale * obl_h / size_xyz[0]))
    return bev_scale, obl_scale


def classes_present(clips: Sequence[np.ndarray]) -> list[int]:
    """Sorted non-free class ids that occur anywhere in ``clips``."""
    present = np.zeros(len(PALETTE), dtype=bool)
    for occ in clips:
        present |= np.bincount(np.asarray(occ).ravel(), minlength=len(PALETTE))[:len(PALETTE)] > 0
    return [int(k) for k in np.nonzero(present)[0] if k != 0]


def _legend_layout(ids: list[int], width: int, font) -> tuple[list[tuple[int, int, int]], int]:
    """``(class id, x, y)`` of each legend entry wrapped to ``width``, and the legend's height."""
    line_h = max(SWATCH, FONT_SIZE) + 6
    x, y, placed = MARGIN, 0, []
    for k in ids:
        entry_w = SWATCH + 5 + int(font.getlength(CLASS_NAMES[k])) + 16
        if x + entry_w > width - MARGIN and x > MARGIN:
            x, y = MARGIN, y + line_h
        placed.append((k, x, y))
        x += entry_w
    return placed, (y + line_h if ids else 0)


def _validated_rows(named_clips: Sequence[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    if len(named_clips) == 0:
        raise ValueError("expected at least one (label, occ[T, X, Y, Z]) clip to render, got none")
    rows = [(str(label), class_ids(occ, 4, "T, X, Y, Z")) for label, occ in named_clips]
    shape = rows[0][1].shape
    for label, occ in rows[1:]:
        if occ.shape != shape:
            raise ValueError(f"clip {label!r} has shape {list(occ.shape)}; every clip of a comparison must share "
                             f"the first clip's shape {list(shape)}")
    return rows


def compose_frames(named_clips: Sequence[tuple[str, np.ndarray]], title: str = "", target_height: int = 400,
                   camera: ObliqueCamera = DEFAULT_CAMERA, frame_ids: Sequence[int] | None = None) -> list[Image.Image]:
    """One RGB image per frame (all, or those in ``frame_ids``): a row ``[bird's-eye | oblique]`` per
    ``(label, occ[T, X, Y, Z])``, a header with title and frame counter, and the legend."""
    rows = _validated_rows(named_clips)
    num_frames, *size_xyz = rows[0][1].shape
    frame_ids = list(range(num_frames)) if frame_ids is None else [int(t) for t in frame_ids]
    for t in frame_ids:
        if not 0 <= t < num_frames:
            raise ValueError(f"frame {t} is out of range for a clip of {num_frames} frames "
                             f"(expected 0..{num_frames - 1})")
    bev_scale, obl_scale = view_scales(tuple(size_xyz), camera, target_height)
    font = _font()
    bev_w = size_xyz[1] * bev_scale
    obl_h, obl_w = oblique_image_size(tuple(size_xyz), camera, obl_scale)
    row_h = max(size_xyz[0] * bev_scale, obl_h)
    label_h = FONT_SIZE + 6 if any(label for label, _ in rows) else 0
    width = MARGIN + bev_w + GAP + obl_w + MARGIN
    header_h = FONT_SIZE + 2 * 6
    legend, legend_h = _legend_layout(classes_present([occ for _, occ in rows]), width, font)
    height = header_h + len(rows) * (label_h + row_h + GAP) + legend_h + MARGIN

    frames = []
    for t in frame_ids:
        canvas = Image.new("RGB", (width, height), tuple(int(v) for v in BACKGROUND))
        draw = ImageDraw.Draw(canvas)
        counter = f"frame {t + 1}/{num_frames}"
        draw.text((MARGIN, 6), f"{title}    {counter}" if title else counter, fill=TEXT, font=font)
        y = header_h
        for label, occ in rows:
            if label_h:
                draw.text((MARGIN, y), label, fill=TEXT, font=font)
                y += label_h
            canvas.paste(Image.fromarray(render_bev(occ[t], bev_scale)), (MARGIN, y))
            canvas.paste(Image.fromarray(render_oblique(occ[t], camera, obl_scale)), (MARGIN + bev_w + GAP, y))
            y += row_h + GAP
        for k, x, dy in legend:
            top = y + dy
            draw.rectangle([x, top, x + SWATCH - 1, top + SWATCH - 1], fill=tuple(int(v) for v in PALETTE[k]),
                           outline=TEXT)
            draw.text((x + SWATCH + 5, top - 1), CLASS_NAMES[k], fill=TEXT, font=font)
        frames.append(canvas)
    return frames


def contact_sheet(frames: Sequence[Image.Image], columns: int = 4) -> Image.Image:
    """All ``frames`` (equal sizes) tiled left to right, top to bottom, ``columns`` per row."""
    if columns < 1:
        raise ValueError(f"contact sheet columns must be >= 1, got {columns}")
    if not frames:
        raise ValueError("expected at least one frame for a contact sheet, got none")
    cols = min(columns, len(frames))
    rows = -(-len(frames) // cols)
    w, h = frames[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), tuple(int(v) for v in BACKGROUND))
    for i, frame in enumerate(frames):
        sheet.paste(frame, ((i % cols) * w, (i // cols) * h))
    return sheet


def save_frames(path: str | Path, frames: Sequence[Image.Image], frame: int | None = None, fps: float = 4.0,
                columns: int = 4) -> Path:
    """Write ``.gif`` (animated, every frame, ``fps``) or ``.png`` (``frame``, or a contact sheet if None)."""
    path = _checked_output(path, frame, fps, columns)
    if not frames:
        raise ValueError("expected at least one frame to save, got none")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=round(1000 / fps), loop=0)
        return path
    if frame is None:
        contact_sheet(frames, columns).save(path)
    else:
        if not 0 <= frame < len(frames):
            raise ValueError(f"frame {frame} is out of range for a clip of {len(frames)} frames "
                             f"(expected 0..{len(frames) - 1})")
        frames[frame].save(path)
    return path


def save_clip(path: str | Path, occ_TXYZ, title: str = "", frame: int | None = None, fps: float = 4.0,
              columns: int = 4, target_height: int = 400, camera: ObliqueCamera = DEFAULT_CAMERA) -> Path:
    """Render one clip ``occ[T, X, Y, Z]`` and write it as a GIF or PNG (see ``save_frames``)."""
    return _render_and_save(path, [("", occ_TXYZ)], title, frame, fps, columns, target_height, camera)


def save_comparison(path: str | Path, named_clips: Sequence[tuple[str, np.ndarray]], title: str = "",
                    frame: int | None = None, fps: float = 4.0, columns: int = 2, target_height: int = 300,
                    camera: ObliqueCamera = DEFAULT_CAMERA) -> Path:
    """Render clips of one shape one above the other (e.g. ``[("ground truth", gt), ("reconstruction", rec)]``),
    frames in lockstep, and write a GIF or PNG (see ``save_frames``)."""
    return _render_and_save(path, named_clips, title, frame, fps, columns, target_height, camera)


def _checked_output(path: str | Path, frame: int | None, fps: float, columns: int) -> Path:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"cannot write {path.name!r}: expected a file name ending in {' or '.join(FORMATS)}")
    if suffix == ".gif" and frame is not None:
        raise ValueError(f"a GIF holds every frame; got frame={frame} (write a .png for a single frame)")
    if suffix == ".gif" and not fps > 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if columns < 1:
        raise ValueError(f"contact sheet columns must be >= 1, got {columns}")
    return path


def _render_and_save(path, named_clips, title, frame, fps, columns, target_height, camera) -> Path:
    _checked_output(path, frame, fps, columns)
    if frame is None or Path(path).suffix.lower() != ".png":
        return save_frames(path, compose_frames(named_clips, title, target_height, camera), frame, fps, columns)
    frames = compose_frames(named_clips, title, target_height, camera, frame_ids=[frame])
    return save_frames(path, frames, 0, fps, columns)
