"""Rasterise the synthetic city into ego-centred voxel clips ``occ[T, X, Y, Z]`` (SPEC §1: X forward, Y left,
Z up, ego at the XY centre, grid bottom at ``grid.z_min`` relative to the ground).

The static world is painted once per clip into a 2D map of *columns* at half the voxel size, over a window
covering every frame's grid: each column holds a ground-cover class, one solid (class, bottom layer, top layer),
a tree canopy (bottom and top layer) and, for the LiDAR model, the solid's top height and the canopy's bottom in
decimetres, packed in 8 bytes so a frame samples all of it with one nearest-neighbour gather. Moving boxes are
then stamped into each frame's columns in ego coordinates, and the columns expand to voxels layer by layer.
A voxel holds a solid or canopy when its centre height lies inside it; the ground cover fills the one layer
holding the ground surface, and solids standing on the ground (bottom <= 0) replace it.
Shapes: T frames, X/Y/Z voxels, C = the 8 bytes of a packed column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dcgen.data.classes import CLASS_IDS
from dcgen.data.grid import Grid
from dcgen.data.synth_traffic import Actors
from dcgen.data.synth_world import ROAD, Scenery

VEGETATION = CLASS_IDS["vegetation"]
# byte layout of a packed column
SURF, CLS, LO, HI, CROWN_LO, CROWN_HI, TOP_DM, CROWN_DM = range(8)  # C = 8 bytes
NO_CROWN_DM = 255


@dataclass(frozen=True)
class MapWindow:
    """A square-celled 2D raster over map metres [x0, x0 + nx*res) x [y0, y0 + ny*res)."""

    x0: float
    y0: float
    res: float
    nx: int
    ny: int

    @classmethod
    def covering(cls, x0: float, x1: float, y0: float, y1: float, res: float) -> "MapWindow":
        return cls(x0, y0, res, int(np.ceil((x1 - x0) / res)), int(np.ceil((y1 - y0) / res)))

    def span(self, a: float, b: float, axis: int) -> slice:
        """Cells whose centres lie in [a, b) along ``axis``."""
        origin, n = (self.x0, self.nx) if axis == 0 else (self.y0, self.ny)
        i0 = min(max(math.ceil((a - origin) / self.res - 0.5), 0), n)
        i1 = min(max(math.ceil((b - origin) / self.res - 0.5), i0), n)
        return slice(i0, i1)

    def centres(self, s: slice, axis: int) -> np.ndarray:
        origin = self.x0 if axis == 0 else self.y0
        return origin + (np.arange(s.start, s.stop) + 0.5) * self.res


def surface_layer(grid: Grid) -> int:
    """Index of the layer holding the ground surface (may fall outside 0..Z-1 for odd grids)."""
    return int(np.floor((-1e-3 - grid.z_min) / grid.voxel_size[2]))


def height_layers(bottom: np.ndarray, top: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last layer whose centre height lies in [bottom, top); grounded solids start at the
    surface layer."""
    z = grid.size[2]
    vz = grid.voxel_size[2]
    lo = np.ceil((bottom - grid.z_min) / vz - 0.5)
    lo = np.where(bottom <= 0.0, np.minimum(lo, surface_layer(grid)), lo)
    hi = np.maximum(np.ceil((top - grid.z_min) / vz - 0.5), lo)
    return np.clip(lo, 0, z).astype(np.uint8), np.clip(hi, 0, z).astype(np.uint8)


def _decimetres(h: np.ndarray) -> np.ndarray:
    return np.clip(np.round(h * 10.0), 0, 254).astype(np.uint8)


def paint_map(scenery: Scenery, win: MapWindow, grid: Grid) -> np.ndarray:
    """The packed ``[nx, ny, 8]`` uint8 column map of the static world."""
    shape = (win.nx, win.ny)
    surf = np.full(shape, ROAD, dtype=np.uint8)
    for x0, x1, y0, y1, radius, cls, outside in scenery.surfaces:
        sx, sy = win.span(x0, x1, 0), win.span(y0, y1, 1)
        if sx.stop == sx.start or sy.stop == sy.start:
            continue
        surf[sx, sy] = cls
        if radius <= 0:
            continue
        for cx, cy, ax, ay in ((x0 + radius, y0 + radius, (x0, x0 + radius), (y0, y0 + radius)),
                               (x1 - radius, y0 + radius, (x1 - radius, x1), (y0, y0 + radius)),
                               (x0 + radius, y1 - radius, (x0, x0 + radius), (y1 - radius, y1)),
                               (x1 - radius, y1 - radius, (x1 - radius, x1), (y1 - radius, y1))):
            cx_s, cy_s = win.span(*ax, 0), win.span(*ay, 1)
            if cx_s.stop == cx_s.start or cy_s.stop == cy_s.start:
                continue
            dx, dy = win.centres(cx_s, 0) - cx, win.centres(cy_s, 1) - cy
            out = dx[:, None] ** 2 + dy[None, :] ** 2 > radius**2
            surf[cx_s, cy_s][out] = outside

    cls_map = np.zeros(shape, dtype=np.uint8)
    bottom = np.zeros(shape, dtype=np.float32)
    top = np.zeros(shape, dtype=np.float32)
    thin = min(grid.voxel_size[:2])  # thinner solids widen to one voxel so every grid sees them
    for x0, x1, y0, y1, cls, b, t in scenery.boxes:
        if x1 - x0 < thin:
            x0, x1 = (x0 + x1 - thin) / 2, (x0 + x1 + thin) / 2
        if y1 - y0 < thin:
            y0, y1 = (y0 + y1 - thin) / 2, (y0 + y1 + thin) / 2
        sx, sy = win.span(x0, x1, 0), win.span(y0, y1, 1)
        cls_map[sx, sy] = cls
        bottom[sx, sy] = b
        top[sx, sy] = t

    crown_b = np.full(shape, np.inf, dtype=np.float32)
    crown_t = np.full(shape, -np.inf, dtype=np.float32)
    for cx, cy, r, b, t in scenery.crowns:
        sx, sy = win.span(cx - r, cx + r, 0), win.span(cy - r, cy + r, 1)
        if sx.stop == sx.start or sy.stop == sy.start:
            continue
        dx, dy = win.centres(sx, 0) - cx, win.centres(sy, 1) - cy
        disc = dx[:, None] ** 2 + dy[None, :] ** 2 <= r * r
        crown_b[sx, sy] = np.where(disc, np.minimum(crown_b[sx, sy], b), crown_b[sx, sy])
        crown_t[sx, sy] = np.where(disc, np.maximum(crown_t[sx, sy], t), crown_t[sx, sy])

    packed = np.zeros((*shape, 8), dtype=np.uint8)
    packed[..., SURF] = surf
    solid = cls_map > 0
    packed[..., CLS] = cls_map
    lo, hi = height_layers(bottom, top, grid)
    packed[..., LO] = np.where(solid, lo, 0)
    packed[..., HI] = np.where(solid, hi, 0)
    has_crown = np.isfinite(crown_b)
    clo, chi = height_layers(np.where(has_crown, crown_b, 1.0), np.where(has_crown, crown_t, 1.0), grid)
    packed[..., CROWN_LO] = np.where(has_crown, clo, 0)
    packed[..., CROWN_HI] = np.where(has_crown, chi, 0)
    packed[..., TOP_DM] = _decimetres(np.where(solid, np.maximum(top, 0.0), 0.0))
    packed[..., CROWN_DM] = np.where(has_crown, _decimetres(np.where(has_crown, crown_b, 0.0)), NO_CROWN_DM)
    return packed


def column_centres(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Ego-frame x of every X index and y of every Y index (ego at the centre of the grid)."""
    (nx, ny, _), (vx, vy, _) = grid.size, grid.voxel_size
    return (np.arange(nx) + 0.5) * vx - nx * vx / 2, (np.arange(ny) + 0.5) * vy - ny * vy / 2


def sample_frames(map_XYC: np.ndarray, win: MapWindow, ego_x: np.ndarray, ego_y: np.ndarray,
                  ego_yaw: np.ndarray, grid: Grid) -> np.ndarray:
    """``[T, X, Y, 8]`` packed columns seen from each ego pose (map frame), nearest-neighbour."""
    cx, cy = (c.astype(np.float32) for c in column_centres(grid))
    c, s = np.cos(ego_yaw).astype(np.float32), np.sin(ego_yaw).astype(np.float32)
    wx = (ego_x - win.x0).astype(np.float32)[:, None, None] + c[:, None, None] * cx[None, :, None] \
        - s[:, None, None] * cy[None, None, :]
    wy = (ego_y - win.y0).astype(np.float32)[:, None, None] + s[:, None, None] * cx[None, :, None] \
        + c[:, None, None] * cy[None, None, :]
    ix = np.clip((wx / win.res).astype(np.int64), 0, win.nx - 1)
    iy = np.clip((wy / win.res).astype(np.int64), 0, win.ny - 1)
    flat = map_XYC.reshape(-1, 8).view(np.uint64)[:, 0]
    return flat[ix * win.ny + iy].view(np.uint8).reshape(*ix.shape, 8)


def stamp_actors(columns_TXYC: np.ndarray, actors: Actors, times: np.ndarray, ego_x: np.ndarray,
                 ego_y: np.ndarray, ego_yaw: np.ndarray, grid: Grid) -> None:
    """Write every actor's box into the packed ``[T, X, Y, 8]`` columns of the frames that see it, in place."""
    if not len(actors):
        return
    (nx, ny, _), (vx, vy, _) = grid.size, grid.voxel_size
    thin = min(vx, vy)
    length, width = np.maximum(actors.length, thin), np.maximum(actors.width, thin)
    px, py = actors.positions(times)  # [T, N]
    c, s = np.cos(ego_yaw)[:, None], np.sin(ego_yaw)[:, None]
    dx, dy = px - ego_x[:, None], py - ego_y[:, None]
    u, v = c * dx + s * dy, -s * dx + c * dy  # actor centres in ego coordinates
    hu = c * actors.hx[None] + s * actors.hy[None]
    hv = -s * actors.hx[None] + c * actors.hy[None]
    reach = 0.5 * np.hypot(length, width)[None]
    seen = (np.abs(u) < nx * vx / 2 + reach) & (np.abs(v) < ny * vy / 2 + reach)
    t_idx, n_idx = np.nonzero(seen)
    if t_idx.size == 0:
        return
    k = int(np.ceil(2 * reach.max() / thin)) + 2
    off = np.arange(k) - k // 2
    fi = u[t_idx, n_idx] / vx + nx / 2 - 0.5
    fj = v[t_idx, n_idx] / vy + ny / 2 - 0.5
    ii = np.rint(fi).astype(np.int64)[:, None, None] + off[None, :, None]  # [P, K, 1]
    jj = np.rint(fj).astype(np.int64)[:, None, None] + off[None, None, :]  # [P, 1, K]
    qx = (ii + 0.5) * vx - nx * vx / 2 - u[t_idx, n_idx][:, None, None]
    qy = (jj + 0.5) * vy - ny * vy / 2 - v[t_idx, n_idx][:, None, None]
    a, b = hu[t_idx, n_idx][:, None, None], hv[t_idx, n_idx][:, None, None]
    along, across = qx * a + qy * b, -qx * b + qy * a
    inside = (np.abs(along) <= length[n_idx][:, None, None] / 2) & (np.abs(across) <= width[n_idx][:, None, None] / 2)
    inside &= (ii >= 0) & (ii < nx) & (jj >= 0) & (jj < ny)
    p, a_i, b_j = np.nonzero(inside)
    lo, hi = height_layers(actors.bottom, actors.top, grid)
    n_hit = n_idx[p]
    cell = (t_idx[p], ii[p, a_i, 0], jj[p, 0, b_j])
    columns_TXYC[(*cell, CLS)] = actors.cls[n_hit]
    columns_TXYC[(*cell, LO)] = lo[n_hit]
    columns_TXYC[(*cell, HI)] = hi[n_hit]
    columns_TXYC[(*cell, TOP_DM)] = _decimetres(actors.top[n_hit])


def columns_to_voxels(columns_TXYC: np.ndarray, grid: Grid) -> np.ndarray:
    """``[T, X, Y, Z]`` uint8 class ids from packed columns."""
    surf, cls, lo, hi, crown_lo, crown_hi = (np.ascontiguousarray(columns_TXYC[..., c])
                                             for c in (SURF, CLS, LO, HI, CROWN_LO, CROWN_HI))
    num_solid, num_crown = hi - lo, crown_hi - crown_lo
    k_s = surface_layer(grid)
    occ_ZTXY = np.empty((grid.size[2], *surf.shape), dtype=np.uint8)
    for k in range(grid.size[2]):  # layer-major: each step is a long contiguous numpy loop
        # k in [lo, hi) as one unsigned comparison: k - lo wraps around below lo
        layer = np.where(np.uint8(k) - crown_lo < num_crown, np.uint8(VEGETATION), surf if k == k_s else np.uint8(0))
        occ_ZTXY[k] = np.where(np.uint8(k) - lo < num_solid, cls, layer)
    return np.moveaxis(occ_ZTXY, 0, -1).copy()
