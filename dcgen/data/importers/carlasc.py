"""CarlaSC (Cartesian release) reader (SPEC §1): raw CARLA labels, LiDAR point counts and ego poses per scene.

Layout read, as the public release and the DynamicCity loader lay it out::

    SRC/<Train|Val|Test>/<Town>_<Light|Medium|Heavy>/cartesian/evaluation/NNNNNN.label   uint32 (128,128,8) C-order
                                                                            NNNNNN.bin     float32 points per cell
    SRC/<Train|Val|Test>/<Town>_<Light|Medium|Heavy>/cartesian/poses.txt   one row-major 3x4 pose per frame

Row ``k`` of ``poses.txt`` is the pose of frame ``k`` (the file number). Raw ids 0..22 map to the 11 unified
CarlaSC classes; a cell with zero LiDAR points is unobserved (mask false, excluded from mIoU only). A split directory
may also be named by the split itself (``train``, ``val``, ``test``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcgen.data.classes import CARLASC_TO_UNIFIED, remap
from dcgen.data.importers.source_format import (Frame, Scene, SceneRef, check_file_size, check_pose,
                                                consecutive_runs, split_dir)

SIZE_XYZ = (128, 128, 8)
NUM_VOXELS = 128 * 128 * 8
RELEASE_SPLITS = {"train": "Train", "val": "Val", "test": "Test"}
EVALUATION_DIR = Path("cartesian") / "evaluation"
POSES_FILE = Path("cartesian") / "poses.txt"


def read_poses(path: Path) -> np.ndarray:
    """``[P, 4, 4]`` float64 from a poses.txt of 12 numbers per line (row-major 3x4)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: missing poses file (one row-major 3x4 pose per frame)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: unreadable poses file ({e})") from None
    poses = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 12:
            raise ValueError(f"{path}:{i}: {len(parts)} numbers, expected 12 (a row-major 3x4 pose)")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ValueError(f"{path}:{i}: not 12 numbers: {line.strip()[:80]!r}") from None
        pose = np.eye(4)
        pose[:3, :] = np.asarray(values).reshape(3, 4)
        poses.append(check_pose(pose, f"{path}:{i}"))
    return np.stack(poses) if poses else np.zeros((0, 4, 4))


class CarlaSCFormat:
    name = "carlasc"
    preset = "carlasc"
    frame_rate = 10.0
    extra_arrays = ()

    def list_scenes(self, src: Path, split: str) -> list[SceneRef]:
        root = split_dir(Path(src), split, RELEASE_SPLITS)
        scenes = sorted(p for p in root.iterdir() if p.is_dir())
        if not scenes:
            raise ValueError(f"{root}: no scene directories (<Town>_<Light|Medium|Heavy>)")
        return [SceneRef(p.name, str(p)) for p in scenes]

    def scan_scene(self, ref: SceneRef) -> Scene:
        scene_dir = Path(ref.path)
        eval_dir = scene_dir / EVALUATION_DIR
        if not eval_dir.is_dir():
            raise ValueError(f"{scene_dir}: not a CarlaSC scene; expected the directory {EVALUATION_DIR}")
        labels = sorted(eval_dir.glob("*.label"))
        if not labels:
            raise ValueError(f"{eval_dir}: no NNNNNN.label files")
        frames = []
        for label in labels:
            if not label.stem.isdigit():
                raise ValueError(f"{label}: file name is not a frame number (expected NNNNNN.label)")
            check_file_size(label, NUM_VOXELS * 4, "label file (uint32 128x128x8)")
            check_file_size(label.with_suffix(".bin"), NUM_VOXELS * 4, "point-count file (float32 128x128x8)")
            frames.append(Frame(label.stem, int(label.stem), str(label)))
        frames.sort(key=lambda f: f.number)
        poses_path = scene_dir / POSES_FILE
        poses = read_poses(poses_path)
        last = frames[-1].number
        if len(poses) <= last:
            raise ValueError(f"{poses_path}: {len(poses)} poses, but frame {frames[-1].key} needs at least "
                             f"{last + 1} (row k is the pose of frame k)")
        numbers = [f.number for f in frames]
        return Scene(ref.name, tuple(frames), poses[numbers], "poses.txt", consecutive_runs(numbers))

    def read_frame(self, frame: Frame) -> dict[str, np.ndarray]:
        raw_XYZ = _read_raw(Path(frame.path), np.uint32)
        points_XYZ = _read_raw(Path(frame.path).with_suffix(".bin"), np.float32)
        return {
            "occupancy": remap(raw_XYZ, CARLASC_TO_UNIFIED, frame.path),
            "mask": points_XYZ > 0,
        }


def _read_raw(path: Path, dtype) -> np.ndarray:
    try:
        flat = np.fromfile(path, dtype=dtype)
    except FileNotFoundError:
        raise ValueError(f"{path}: missing file") from None
    except OSError as e:
        raise ValueError(f"{path}: unreadable ({e.strerror})") from None
    if flat.size != NUM_VOXELS:
        raise ValueError(f"{path}: {flat.size * flat.itemsize} bytes, expected {NUM_VOXELS * flat.itemsize} "
                         f"({np.dtype(dtype).name} 128x128x8)")
    return flat.reshape(SIZE_XYZ)


FORMAT = CarlaSCFormat()
