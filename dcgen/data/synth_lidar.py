"""LiDAR-like visibility of a synthetic clip: which voxels a roof sensor on the ego observes (SPEC §1 mask:
unobserved voxels are excluded from mIoU, as CarlaSC's empty-LiDAR cells are).

A ray from the sensor to a voxel is blocked by any nearer column whose solid (ground and whatever stands on
it) reaches above the ray, or whose tree canopy hangs below it. Along one azimuth that is a running maximum of
the solids' elevation slopes, (top - sensor height) / range, and a running minimum of the canopies'; a voxel is
observed when its top lies on or above the first and its bottom on or below the second, and it lies inside the
sensor's vertical field of view. Free voxels in front of the first hit are observed, everything behind it is
not, the ground under the sensor is a blind disc, and the solid ground hides every layer below it. Columns are
resampled on a polar grid around the sensor (one-voxel range steps and arcs), fixed per grid.
Shapes: T frames, Z layers, P = X*Y columns, A azimuth bins, R range bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dcgen.data.grid import Grid
from dcgen.data.synth_raster import surface_layer


@dataclass(frozen=True)
class LidarConfig:
    height: float = 1.8  # sensor above the ground, metres
    fov_down_deg: float = -30.0
    fov_up_deg: float = 20.0

    def __post_init__(self):
        if not self.height > 0:
            raise ValueError(f"LidarConfig.height must be > 0 metres, got {self.height}")
        if not -90.0 < self.fov_down_deg < self.fov_up_deg < 90.0:
            raise ValueError(f"LidarConfig field of view must satisfy -90 < fov_down_deg < fov_up_deg < 90, got "
                             f"({self.fov_down_deg}, {self.fov_up_deg})")


@dataclass(frozen=True)
class _Polar:
    col_az: np.ndarray  # [XY] azimuth bin of each column
    col_prev: np.ndarray  # [XY] last range bin strictly in front of each column, +1 (0 = none)
    col_r: np.ndarray  # [XY] range of each column centre
    polar_col: np.ndarray  # [A, R] column under each polar sample; XY (a sentinel) outside the grid
    inv_r: np.ndarray  # [R] 1 / range of each bin centre
    with_canopy: bool  # whether any voxel lies above the sensor, where canopies can hide it


@lru_cache(maxsize=8)
def _polar(grid: Grid, lidar: LidarConfig) -> _Polar:
    (nx, ny, nz), (vx, vy, vz) = grid.size, grid.voxel_size
    v = min(vx, vy)
    cx = (np.arange(nx) + 0.5) * vx - nx * vx / 2
    cy = (np.arange(ny) + 0.5) * vy - ny * vy / 2
    gx, gy = np.meshgrid(cx, cy, indexing="ij")
    r_col = np.maximum(np.hypot(gx, gy), 1e-3).ravel()
    r_max = float(np.hypot(nx * vx, ny * vy) / 2)
    dr = v
    num_r = int(np.ceil(r_max / dr)) + 1
    num_az = int(np.ceil(2 * np.pi * r_max / v))
    polar_r = (np.arange(num_r) + 0.5) * dr
    az = -np.pi + (np.arange(num_az) + 0.5) * 2 * np.pi / num_az
    px = np.cos(az)[:, None] * polar_r[None, :]
    py = np.sin(az)[:, None] * polar_r[None, :]
    pi = np.floor((px + nx * vx / 2) / vx).astype(np.int64)
    pj = np.floor((py + ny * vy / 2) / vy).astype(np.int64)
    inside = (pi >= 0) & (pi < nx) & (pj >= 0) & (pj < ny)
    polar_col = np.where(inside, pi * ny + pj, nx * ny)
    col_az = (np.floor((np.arctan2(gy, gx).ravel() + np.pi) / (2 * np.pi) * num_az).astype(np.int64)) % num_az
    # a column's own footprint reaches ~0.7 voxel along a diagonal ray: occluders are bins 0.75 voxel nearer
    col_prev = np.clip(np.floor((r_col - 0.75 * v) / dr - 0.5).astype(np.int64) + 1, 0, num_r)
    with_canopy = grid.z_min + (nz - 1) * vz > lidar.height
    return _Polar(col_az, col_prev, r_col.astype(np.float32), polar_col, (1.0 / polar_r).astype(np.float32),
                  bool(with_canopy))


def _running(values_TC: np.ndarray, g: _Polar, height: float, ufunc, empty: float) -> np.ndarray:
    """Per column, the running max/min (``ufunc``) of elevation slopes of everything in front of it: [T, XY]."""
    t = values_TC.shape[0]
    padded = np.concatenate([values_TC, np.full((t, 1), empty, np.float32)], axis=1)
    slopes = (padded[:, g.polar_col] - np.float32(height)) * g.inv_r
    run = ufunc.accumulate(slopes, axis=2)
    run = np.concatenate([np.full((*run.shape[:2], 1), empty, np.float32), run], axis=2)
    return run[:, g.col_az, g.col_prev]


def visibility(top_TXY: np.ndarray, canopy_TXY: np.ndarray, grid: Grid, lidar: LidarConfig) -> np.ndarray:
    """``[T, X, Y, Z]`` bool observed voxels from ``[T, X, Y]`` solid tops and canopy bottoms (metres above the
    ground; +inf where a column has no canopy)."""
    g = _polar(grid, lidar)
    t, nz, vz = top_TXY.shape[0], grid.size[2], grid.voxel_size[2]
    xy = grid.size[0] * grid.size[1]
    floor = np.maximum(_running(top_TXY.reshape(t, xy), g, lidar.height, np.maximum, -np.inf),
                       np.float32(np.tan(np.radians(lidar.fov_down_deg))))
    # observed from layer k_lo up: the voxel's top face z_min + (k + 1) vz reaches the ray grazing the occluders
    k_lo = np.ceil((lidar.height + floor * g.col_r - grid.z_min) / vz - 1.0)
    ceiling = np.float32(np.tan(np.radians(lidar.fov_up_deg)))
    if g.with_canopy:
        ceiling = np.minimum(_running(canopy_TXY.reshape(t, xy), g, lidar.height, np.minimum, np.inf), ceiling)
    # ... up to layer k_hi: the voxel's bottom face z_min + k vz stays under the lowest canopy ray
    k_hi = np.floor((lidar.height + ceiling * g.col_r - grid.z_min) / vz)
    k_lo = np.clip(k_lo, max(surface_layer(grid), 0), nz)  # the ground is solid: nothing below it is seen
    count = np.clip(np.broadcast_to(k_hi, k_lo.shape) - k_lo + 1, 0, nz).astype(np.uint8)
    kz = np.arange(nz, dtype=np.uint8)
    seen_TPZ = (kz - k_lo.astype(np.uint8)[..., None]) < count[..., None]
    return seen_TPZ.reshape(t, *grid.size)
