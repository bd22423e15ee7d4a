"""Per-clip side information derived from occupancy and ego poses (SPEC §1): trajectory, command, layouts.

Importers and the synthetic city both call these, so a clip's conditions mean the same whatever its source.
"""

from __future__ import annotations

import numpy as np

from dcgen.data.classes import FREE, VEHICLE

COMMANDS: tuple[str, ...] = ("static", "forward", "left", "right")
YAW_THRESHOLD = 0.0025  # rad
MOVE_THRESHOLD = 0.03  # m


def pose_from_xyyaw(x: float, y: float, yaw: float, z: float = 0.0) -> np.ndarray:
    """A 4x4 ego-to-world pose for a planar position and heading."""
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4, dtype=np.float64)
    pose[:2, :2] = [[c, -s], [s, c]]
    pose[:3, 3] = [x, y, z]
    return pose


def trajectory_from_poses(ego_pose_T44: np.ndarray) -> np.ndarray:
    """``[T, 3]`` (x, y, yaw) of every frame in frame 0's ego coordinates."""
    if ego_pose_T44.ndim != 3 or ego_pose_T44.shape[1:] != (4, 4):
        raise ValueError(f"ego poses must have shape [T, 4, 4], got {list(ego_pose_T44.shape)}")
    rel_T44 = np.linalg.inv(ego_pose_T44[0].astype(np.float64)) @ ego_pose_T44.astype(np.float64)
    yaw_T = np.arctan2(rel_T44[:, 1, 0], rel_T44[:, 0, 0])
    return np.stack([rel_T44[:, 0, 3], rel_T44[:, 1, 3], yaw_T], axis=1).astype(np.float32)


def command_from_trajectory(trajectory_T3: np.ndarray) -> int:
    """0 static, 1 forward, 2 left, 3 right; the turn decision follows the largest yaw change in the clip."""
    yaw_T = trajectory_T3[:, 2].astype(np.float64)
    k = int(np.argmax(np.abs(yaw_T)))
    if yaw_T[k] > YAW_THRESHOLD:
        return 2
    if yaw_T[k] < -YAW_THRESHOLD:
        return 3
    if np.hypot(trajectory_T3[:, 0], trajectory_T3[:, 1]).max() > MOVE_THRESHOLD:
        return 1
    return 0


def vehicle_layout(occ_TXYZ: np.ndarray, downsample: int) -> np.ndarray:
    """``[T, X/d, Y/d]`` uint8: 1 where any voxel of the d×d column block holds a vehicle."""
    t, x, y, _ = occ_TXYZ.shape
    if x % downsample or y % downsample:
        raise ValueError(f"grid {x}x{y} is not divisible by the layout downsampling {downsample}")
    veh_TXY = (occ_TXYZ == VEHICLE).any(axis=3)
    return veh_TXY.reshape(t, x // downsample, downsample, y // downsample, downsample).any(axis=(2, 4)).astype(np.uint8)


def bev_semantics(occ_XYZ: np.ndarray) -> np.ndarray:
    """``[X, Y]`` uint8: the top-most non-free class of each column (0 where the column is empty)."""
    z = occ_XYZ.shape[2]
    occupied = occ_XYZ != FREE
    top_from_above = np.argmax(occupied[:, :, ::-1], axis=2)
    top = z - 1 - top_from_above
    bev = np.take_along_axis(occ_XYZ, top[:, :, None], axis=2)[:, :, 0]
    return np.where(occupied.any(axis=2), bev, FREE).astype(np.uint8)


def derive_side_info(occ_TXYZ: np.ndarray, ego_pose_T44: np.ndarray, layout_downsample: int) -> dict:
    """Everything a clip carries besides occupancy and mask, as store-ready arrays."""
    trajectory = trajectory_from_poses(ego_pose_T44)
    return {
        "ego_pose": ego_pose_T44.astype(np.float32),
        "trajectory": trajectory,
        "command": np.uint8(command_from_trajectory(trajectory)),
        "layout": vehicle_layout(occ_TXYZ, layout_downsample),
        "bev": bev_semantics(occ_TXYZ[0]),
    }
