"""The input of the downstream scene-completion benchmark: the voxels a roof LiDAR hits in each frame of any clip,
real or generated, computed from its occupancy alone (one sweep, CarlaSC's semantic scene completion task).

``synth_lidar.visibility`` models what a roof sensor sees from every column's solid top and canopy bottom in
metres; a stored clip has only voxels, so the heights are read back from them, with no class-specific rule beyond
the ground: the solid is the run of occupied voxels rising from the ground layer (a flat surface class alone there,
road, ground or sidewalk, is the ground itself, height 0) and its top is the top face of the run's last voxel; the
canopy is the first occupied voxel above a free gap, and its bottom face the canopy's bottom. The hits are the
observed voxels that are occupied. Frame t's input depends on frame t only, and a real clip goes through exactly
what a generated one does.
Shapes: T frames, X/Y/Z voxels.
"""

from __future__ import annotations

import numpy as np

from dcgen.data.classes import CLASS_IDS, FREE
from dcgen.data.grid import Grid
from dcgen.data.synth_lidar import LidarConfig, visibility
from dcgen.data.synth_raster import surface_layer

FLAT_CLASSES = (CLASS_IDS["road"], CLASS_IDS["ground"], CLASS_IDS["sidewalk"])  # the ground's own surface


def column_heights(occ_TXYZ: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """``[T, X, Y]`` float32 solid tops and canopy bottoms in metres above the ground (+inf: no canopy)."""
    if occ_TXYZ.ndim != 4 or tuple(occ_TXYZ.shape[1:]) != tuple(grid.size):
        raise ValueError(f"occupancy of shape {list(occ_TXYZ.shape)}, expected [T, {', '.join(map(str, grid.size))}]")
    nz, vz = grid.size[2], grid.voxel_size[2]
    ks = min(max(surface_layer(grid), 0), nz - 1)
    occupied_TXYZ = occ_TXYZ != FREE
    above_TXYZ = occupied_TXYZ[..., ks:]
    # length of the occupied run starting at the ground layer (argmin finds the first free voxel; a full run has none)
    run_TXY = np.where(above_TXYZ.all(axis=-1), above_TXYZ.shape[-1], np.argmin(above_TXYZ, axis=-1))
    top_TXY = (grid.z_min + (ks + run_TXY) * vz).astype(np.float32)
    flat_ground_TXY = (run_TXY == 1) & np.isin(occ_TXYZ[..., ks], FLAT_CLASSES)
    top_TXY = np.where((run_TXY == 0) | flat_ground_TXY, np.float32(0.0), top_TXY)
    layers = np.arange(nz)
    floating_TXYZ = occupied_TXYZ & (layers > (ks + run_TXY)[..., None])
    first_TXY = np.argmax(floating_TXYZ, axis=-1)
    canopy_TXY = np.where(floating_TXYZ.any(axis=-1), grid.z_min + first_TXY * vz, np.inf).astype(np.float32)
    return top_TXY, canopy_TXY


def lidar_hits(occ_TXYZ: np.ndarray, grid: Grid, lidar: LidarConfig = LidarConfig()) -> np.ndarray:
    """``[T, X, Y, Z]`` bool: the occupied voxels the roof sensor observes in each frame."""
    top_TXY, canopy_TXY = column_heights(occ_TXYZ, grid)
    return visibility(top_TXY, canopy_TXY, grid, lidar) & (occ_TXYZ != FREE)
