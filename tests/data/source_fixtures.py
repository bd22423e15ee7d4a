"""Tiny datasets written in the exact on-disk formats of CarlaSC, Occ3D-nuScenes and Occ3D-Waymo (SPEC §1).

Per-frame shapes are the real ones (128x128x8 and 200x200x16); only the number of scenes and frames is small.
Each frame holds a known pattern so tests can check the remapping: see ``carlasc_raw``, ``nuscenes_raw`` and
``waymo_raw``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CARLA_XYZ = (128, 128, 8)
OCC_XYZ = (200, 200, 16)


def pose_3x4(x: float, y: float, yaw: float) -> list[float]:
    c, s = np.cos(yaw), np.sin(yaw)
    return [c, -s, 0.0, x, s, c, 0.0, y, 0.0, 0.0, 1.0, 0.0]


def carlasc_raw(k: int) -> np.ndarray:
    """Raw CARLA ids: road line (7) floor, a vehicle (10) block whose x moves with k, a wall (11), terrain (22)."""
    raw = np.zeros(CARLA_XYZ, dtype=np.uint32)
    raw[:, :, 0] = 7
    raw[:8, :8, 0] = 22
    raw[40 + k:44 + k, 60:64, 1:3] = 10
    raw[100:104, 10:12, 1:5] = 11
    return raw


def carlasc_points(k: int) -> np.ndarray:
    """LiDAR points per cell: observed (> 0) in the lower half of the columns only."""
    pts = np.zeros(CARLA_XYZ, dtype=np.float32)
    pts[:, :, :4] = 1.0 + k
    return pts


def write_carlasc(root: Path, scenes: dict[str, list[int]], split_dir: str = "Train", motion=None) -> Path:
    """Scenes ``name -> frame numbers`` under ``root/split_dir``; ``motion(name, k) -> (x, y, yaw)`` for poses."""
    motion = motion or (lambda name, k: (0.5 * k, 0.0, 0.0))
    for name, numbers in scenes.items():
        cart = root / split_dir / name / "cartesian"
        ev = cart / "evaluation"
        ev.mkdir(parents=True, exist_ok=True)
        for k in numbers:
            carlasc_raw(k).tofile(ev / f"{k:06d}.label")
            carlasc_points(k).tofile(ev / f"{k:06d}.bin")
        rows = [pose_3x4(*motion(name, k)) for k in range(max(numbers) + 1)]
        (cart / "poses.txt").write_text("\n".join(" ".join(f"{v:.9e}" for v in r) for r in rows) + "\n")
    return root


def nuscenes_raw(k: int) -> np.ndarray:
    """Raw Occ3D-nuScenes ids: free (17) air, driveable surface (11) floor, a car (4), a bicycle (2), manmade (15)."""
    sem = np.full(OCC_XYZ, 17, dtype=np.uint8)
    sem[:, :, 0] = 11
    sem[90 + k:94 + k, 100:104, 1:3] = 4
    sem[20:22, 20:22, 1:3] = 2
    sem[150:160, 150:160, 1:10] = 15
    return sem


def quat_wxyz(yaw: float) -> list[float]:
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def write_nuscenes(root: Path, scenes: dict[str, int], split: str = "train", motion=None,
                   extra_splits: dict[str, list[str]] | None = None) -> Path:
    """``scenes`` name -> frame count; tokens are ``<name>-tok<k>``; ``motion(name, k) -> (x, y, yaw)``."""
    motion = motion or (lambda name, k: (2.0 * k, 0.0, 0.0))
    infos = {}
    for name, count in scenes.items():
        frames = {}
        for k in range(count):
            token = f"{name}-tok{k}"
            d = root / "gts" / name / token
            d.mkdir(parents=True, exist_ok=True)
            lidar = np.zeros(OCC_XYZ, dtype=np.uint8)
            lidar[:, :100] = 1
            camera = np.zeros(OCC_XYZ, dtype=np.uint8)
            camera[:100] = 1
            np.savez_compressed(d / "labels.npz", semantics=nuscenes_raw(k), mask_lidar=lidar, mask_camera=camera)
            x, y, yaw = motion(name, k)
            frames[token] = {"timestamp": 1_000_000 + 500_000 * k, "gt_path": f"gts/{name}/{token}/labels.npz",
                             "ego_pose": {"translation": [x, y, 0.0], "rotation": quat_wxyz(yaw)},
                             "camera_sensor": {}, "prev": "", "next": ""}
        infos[name] = frames
    index = {f"{split}_split": sorted(scenes), **{f"{k}_split": v for k, v in (extra_splits or {}).items()},
             "scene_infos": infos}
    (root / "annotations.json").write_text(json.dumps(index))
    return root


def waymo_raw(k: int, free: int = 23) -> np.ndarray:
    """Raw Occ3D-Waymo ids: free air, road (13) floor, a vehicle (1), a cyclist (4), tree trunk (12)."""
    lab = np.full(OCC_XYZ, free, dtype=np.uint8)
    lab[:, :, 0] = 13
    lab[60 + k:64 + k, 100:104, 1:3] = 1
    lab[30:32, 30:32, 1:3] = 4
    lab[170:172, 170:172, 1:8] = 12
    return lab


def write_waymo(root: Path, scenes: dict[str, list[int]], split_dir: str = "training", with_pose: bool = True,
                free: int = 23, motion=None) -> Path:
    """``scenes`` idx -> frame numbers; poses as ``ego2global`` when ``with_pose``."""
    motion = motion or (lambda name, k: (1.0 * k, 0.0, 0.0))
    for name, numbers in scenes.items():
        d = root / split_dir / name
        d.mkdir(parents=True, exist_ok=True)
        for k in numbers:
            lidar = np.zeros(OCC_XYZ, dtype=np.uint8)
            lidar[:, :, :8] = 1
            camera = np.zeros(OCC_XYZ, dtype=np.uint8)
            camera[100:] = 1
            infov = np.zeros(OCC_XYZ, dtype=np.uint8)
            infov[:, 100:] = 1
            arrays = dict(voxel_label=waymo_raw(k, free), origin_voxel_state=lidar, final_voxel_state=camera,
                          infov=infov)
            if with_pose:
                x, y, yaw = motion(name, k)
                pose = np.eye(4)
                pose[:3, :] = np.asarray(pose_3x4(x, y, yaw)).reshape(3, 4)
                arrays["ego2global"] = pose
            np.savez_compressed(d / f"{k:03d}_04.npz", **arrays)
            np.savez_compressed(d / f"{k:03d}.npz", voxel_label=np.zeros((2, 2, 2), np.uint8))  # 0.1 m: ignored
    return root
