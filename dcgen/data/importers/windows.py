"""Clips from scenes: stride-s windows of T consecutive frames inside each scene, and the store batch of a block of
them with side information derived as for every other source (SPEC §1, "Clips are stride-1 sliding windows").

Windows are numbered in one deterministic order (scene order, then first frame), so clip ``k`` of an import is the
same whatever the number of workers. A block is a run of consecutive clips that one worker reads and writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from dcgen.data.derive import derive_side_info
from dcgen.data.grid import Grid
from dcgen.data.importers.source_format import Scene, SourceFormat


@dataclass(frozen=True)
class Window:
    scene: int  # position of the scene in the import's scene list
    start: int  # position of the window's first frame in the scene


def plan_windows(scenes: list[Scene], num_frames: int, stride: int) -> list[Window]:
    """Every window of ``num_frames`` frames, ``stride`` frames apart, that stays inside a gap-free run."""
    if num_frames < 1:
        raise ValueError(f"frames per clip must be >= 1, got {num_frames}")
    if stride < 1:
        raise ValueError(f"window stride must be >= 1, got {stride}")
    windows = []
    for i, scene in enumerate(scenes):
        for a, b in scene.runs:
            windows.extend(Window(i, s) for s in range(a, b - num_frames + 1, stride))
    return windows


def blocks(num_windows: int, clips_per_block: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of consecutive clip ranges; every start is a multiple of ``clips_per_block``."""
    return [(a, min(a + clips_per_block, num_windows)) for a in range(0, num_windows, clips_per_block)]


def build_batch(fmt: SourceFormat, scenes: Mapping[int, Scene] | Sequence[Scene], windows: list[Window], grid: Grid,
                split: str, array_names: tuple[str, ...]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Read the frames ``windows`` need (each once) and assemble the store batch and manifest rows.

    ``scenes`` maps each window's scene position to its scene (the full list, or only the scenes of the block).
    """
    t, (x, y, z) = grid.num_frames, grid.size
    n = len(windows)
    lx, ly = grid.layout_size
    shapes = {
        "occupancy": ((n, t, x, y, z), np.uint8), "mask": ((n, t, x, y, z), np.bool_),
        "mask_camera": ((n, t, x, y, z), np.bool_), "trajectory": ((n, t, 3), np.float32),
        "ego_pose": ((n, t, 4, 4), np.float32), "command": ((n,), np.uint8),
        "layout": ((n, t, lx, ly), np.uint8), "bev": ((n, x, y), np.uint8),
    }
    unknown = [a for a in array_names if a not in shapes]
    if unknown:
        raise ValueError(f"the importer cannot fill store arrays {unknown}")
    batch = {a: np.zeros(*shapes[a]) for a in array_names}
    frame_arrays = [a for a in ("occupancy", "mask", "mask_camera") if a in array_names]
    cache: dict[tuple[int, int], dict[str, np.ndarray]] = {}
    rows = []
    for i, w in enumerate(windows):
        scene = scenes[w.scene]
        for k in [key for key in cache if key[0] != w.scene or key[1] < w.start]:
            del cache[k]  # windows come in order: frames behind this one are not needed again
        for dt in range(t):
            key = (w.scene, w.start + dt)
            if key not in cache:
                frame = scene.frames[w.start + dt]
                cache[key] = fmt.read_frame(frame)
                got = cache[key]["occupancy"].shape
                if got != (x, y, z):
                    raise ValueError(f"{frame.path}: grid {list(got)}, expected {[x, y, z]} for preset "
                                     f"{fmt.preset}")
            for a in frame_arrays:
                batch[a][i, dt] = cache[key][a]
        side = derive_side_info(batch["occupancy"][i], scene.ego_pose_F44[w.start:w.start + t],
                                grid.layout_downsample)
        for a in ("trajectory", "ego_pose", "command", "layout", "bev"):
            if a in batch:
                batch[a][i] = side[a]
        first = scene.frames[w.start]
        rows.append({"scene": scene.name, "frame_start": first.number, "split": split, "source": fmt.name,
                     "seed": -1, "frame_key": first.key, "pose_source": scene.pose_source})
    return batch, rows
