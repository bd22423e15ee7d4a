"""The ego's planar motion over a clip, read back from the occupancy alone (SPEC §1 commands; §3 command condition).

Static classes do not move in the world, so between frame 0 and the last frame they move in the ego's grid by the
inverse of the ego's motion. ``estimate_motion`` searches a grid of (yaw, forward, left) ego motions for the one
under which the last frame's bird's-eye static map, mapped back into frame 0's coordinates, agrees best with frame
0's; ``turn_direction`` turns the yaw into the SPEC's command ids. It checks that a generated clip drives the way
its command asked (a left command should yield left turns), and it works on any grid: cells are voxel centres in
metres, the ego at the XY centre, X forward, Y left.

Legend: T time, X/Y/Z space, H hypotheses, P cells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcgen.data.classes import CLASS_IDS, FREE
from dcgen.data.grid import Grid

# Classes that stay put in the world; moving actors (vehicle, pedestrian, bicycle) would only add noise.
STATIC_CLASSES = tuple(CLASS_IDS[n] for n in ("building", "barrier", "other", "pole", "road", "ground", "sidewalk",
                                              "vegetation"))


@dataclass(frozen=True)
class MotionSearch:
    """The hypotheses searched: yaw in radians, translation in metres (forward = +X, left = +Y)."""

    max_yaw: float = 0.3
    yaw_step: float = 0.02
    max_forward: float = 4.0
    max_backward: float = 1.0
    max_left: float = 1.2
    shift_step: float = 0.4

    @classmethod
    def for_grid(cls, grid: Grid, max_speed: float = 12.0, max_yaw_rate: float = 0.5) -> "MotionSearch":
        """Hypotheses covering what a car can do over the clip's duration, at about half a voxel of resolution."""
        seconds = (grid.num_frames - 1) / grid.frame_rate
        step = 0.5 * min(grid.voxel_size[:2])
        reach = min(max_speed * seconds, 0.5 * grid.extent[0])
        return cls(max_yaw=min(1.0, max_yaw_rate * seconds + 0.05), yaw_step=0.02, max_forward=reach + step,
                   max_backward=2 * step, max_left=max(2 * step, 0.25 * reach), shift_step=step)

    def hypotheses(self) -> np.ndarray:
        """``[H, 3]`` (yaw, forward, left); every axis holds exactly 0."""
        def axis(lo: float, hi: float, step: float) -> np.ndarray:
            return np.arange(-round(lo / step), round(hi / step) + 1) * step

        yaws = axis(self.max_yaw, self.max_yaw, self.yaw_step)
        fwd = axis(self.max_backward, self.max_forward, self.shift_step)
        left = axis(self.max_left, self.max_left, self.shift_step)
        return np.stack(np.meshgrid(yaws, fwd, left, indexing="ij"), axis=-1).reshape(-1, 3)


def static_bev(occ_XYZ: np.ndarray) -> np.ndarray:
    """``[X, Y]`` uint8: the top-most static class of each column, 0 where the column holds none."""
    static_XYZ = np.isin(occ_XYZ, STATIC_CLASSES)
    z = occ_XYZ.shape[2]
    top_Z = z - 1 - np.argmax(static_XYZ[:, :, ::-1], axis=2)
    bev_XY = np.take_along_axis(occ_XYZ, top_Z[:, :, None], axis=2)[:, :, 0]
    return np.where(static_XYZ.any(axis=2), bev_XY, FREE).astype(np.uint8)


def estimate_motion(occ_TXYZ: np.ndarray, grid: Grid, search: MotionSearch | None = None) -> dict[str, float]:
    """The ego motion (yaw, forward, left) from frame 0 to the last frame that best aligns the static classes.

    Returns ``{"yaw", "forward", "left", "agreement", "margin"}``: agreement is the fraction of frame-0 static
    cells whose class the moved last frame reproduces; margin is how much better the best yaw does than the best
    hypothesis of the opposite yaw sign (a confidence for the turn direction).
    """
    occ_TXYZ = np.asarray(occ_TXYZ)
    if occ_TXYZ.ndim != 4 or occ_TXYZ.shape != grid.shape:
        raise ValueError(f"clip has shape {list(occ_TXYZ.shape)}, expected {list(grid.shape)} (T, X, Y, Z)")
    return motion_between(occ_TXYZ[0], occ_TXYZ[-1], grid, search)


def estimate_trajectory(occ_TXYZ: np.ndarray, grid: Grid, search: MotionSearch | None = None) -> np.ndarray:
    """``[T, 3]`` float32 (x, y, yaw) of every frame relative to frame 0, as the store's ``trajectory`` holds it,
    estimated frame by frame from the occupancy (for generated clips, which have no poses)."""
    occ_TXYZ = np.asarray(occ_TXYZ)
    if occ_TXYZ.ndim != 4 or occ_TXYZ.shape != grid.shape:
        raise ValueError(f"clip has shape {list(occ_TXYZ.shape)}, expected {list(grid.shape)} (T, X, Y, Z)")
    out_T3 = np.zeros((occ_TXYZ.shape[0], 3), np.float32)
    for t in range(1, occ_TXYZ.shape[0]):
        m = motion_between(occ_TXYZ[0], occ_TXYZ[t], grid, search)
        out_T3[t] = (m["forward"], m["left"], m["yaw"])
    return out_T3


def motion_between(first_XYZ: np.ndarray, last_XYZ: np.ndarray, grid: Grid,
                   search: MotionSearch | None = None) -> dict[str, float]:
    """``estimate_motion`` between two frames of one clip."""
    search = search or MotionSearch.for_grid(grid)
    first_XY, last_XY = static_bev(np.asarray(first_XYZ)), static_bev(np.asarray(last_XYZ))
    nx, ny = grid.size[:2]
    vx, vy = grid.voxel_size[:2]
    cx_P, cy_P = np.nonzero(first_XY != FREE)
    if cx_P.size == 0:
        return {"yaw": 0.0, "forward": 0.0, "left": 0.0, "agreement": 0.0, "margin": 0.0}
    # frame-0 metric coordinates of the static cells
    px_P = ((cx_P + 0.5 - nx / 2) * vx).astype(np.float32)
    py_P = ((cy_P + 0.5 - ny / 2) * vy).astype(np.float32)
    hyp_H3 = search.hypotheses()
    hyp32_H3 = hyp_H3.astype(np.float32)
    yaw_H1, fwd_H1, left_H1 = hyp32_H3[:, 0:1], hyp32_H3[:, 1:2], hyp32_H3[:, 2:3]
    # a world point at p (frame 0) sits at R(-yaw) (p - t) in the last frame's ego coordinates
    dx_HP, dy_HP = px_P[None] - fwd_H1, py_P[None] - left_H1
    c, s = np.cos(yaw_H1), np.sin(yaw_H1)
    qx_HP = c * dx_HP + s * dy_HP
    qy_HP = -s * dx_HP + c * dy_HP
    ix_HP = np.floor(qx_HP / vx + nx / 2).astype(np.int64)
    iy_HP = np.floor(qy_HP / vy + ny / 2).astype(np.int64)
    inside_HP = (ix_HP >= 0) & (ix_HP < nx) & (iy_HP >= 0) & (iy_HP < ny)
    seen_HP = last_XY[np.clip(ix_HP, 0, nx - 1), np.clip(iy_HP, 0, ny - 1)]
    match_HP = inside_HP & (seen_HP == first_XY[cx_P, cy_P][None])
    # agreement over the cells still inside the grid, lightly favouring hypotheses that keep more of them
    inside_H = inside_HP.sum(1)
    score_H = match_HP.sum(1) / np.maximum(inside_H, 1) * np.minimum(1.0, inside_H / (0.5 * cx_P.size))
    # among equally good hypotheses prefer the smallest motion (a static scene aligns under many of them)
    score_H = score_H - 1e-6 * np.abs(hyp_H3).sum(1)
    best = int(np.argmax(score_H))
    yaw = float(hyp_H3[best, 0])
    opposite = score_H[np.sign(hyp_H3[:, 0]) == -np.sign(yaw)] if yaw != 0 else score_H
    margin = float(score_H[best] - opposite.max()) if opposite.size else 0.0
    return {"yaw": yaw, "forward": float(hyp_H3[best, 1]), "left": float(hyp_H3[best, 2]),
            "agreement": float(score_H[best]), "margin": margin}


def turn_direction(occ_TXYZ: np.ndarray, grid: Grid, threshold: float | None = None,
                   search: MotionSearch | None = None) -> int:
    """2 (left) or 3 (right) when the estimated yaw passes ``threshold`` either way, else 1 (straight or static).

    The default threshold is 1.5 yaw steps of the search: below that the estimate cannot tell a turn from noise.
    """
    search = search or MotionSearch.for_grid(grid)
    threshold = 1.5 * search.yaw_step if threshold is None else threshold
    yaw = estimate_motion(occ_TXYZ, grid, search)["yaw"]
    if yaw > threshold:
        return 2
    if yaw < -threshold:
        return 3
    return 1
