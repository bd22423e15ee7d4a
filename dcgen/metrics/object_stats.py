"""Object-level statistics of sets of occupancy clips, and their real-vs-generated comparison (issue 23).

Feature-space scores (FID, KID, precision/recall) say that generated clips differ from real ones, not how: issue 23
found generated vehicles at half their real size, poles and pedestrians reduced to single voxels and motion halved,
and none of those scores names any of it. These statistics make each measurable, in voxels and shares: per class,
the connected components of every frame (count per frame, median / p90 / mean size, median height, and the raw sizes
for a 1D Wasserstein distance between two sets), the class mix and occupied share, temporal flicker, static
consistency after ego-motion compensation, and the persistence of moving objects from frame to frame (slowed motion
shows as lower mover flicker: an object moving less overlaps itself more from frame to frame). ``clip_stats``
measures one clip, ``SetStats`` pools clips (counts and sizes, never voxels), ``compare`` sets a real and a
generated set side by side.

Definitions, for consecutive frames (t, t+1) pooled over all pairs of all clips of a set:

- component: a 26-connected set of voxels of one class within one frame (see ``CONNECTIVITY``); its height is its
  extent along Z in voxels (a pole, a column, is as tall as the grid; the same voxels lying flat are 1 tall).
- flicker = #{voxels whose class differs} / #{voxels occupied in either frame}; per class c,
  #{voxels holding c in exactly one frame} / #{voxels holding c in either frame}, i.e. 1 - IoU of the class masks.
  Measured on the raw grid, without compensation.
- static change = the same over voxels where either frame holds a static class (``ego_motion.STATIC_CLASSES``),
  after resampling frame t+1 onto frame t's voxel centres (nearest neighbour, planar motion), counting only centres
  inside frame t+1's grid. A faithful static world scores 0. Clips without a trajectory do not contribute
  (generated clips can get one from ``ego_motion.estimate_trajectory``).
- persistence = #{mover components of frame t overlapping or 26-adjacent to a voxel of their class in the
  compensated frame t+1} / #{mover components of frame t with a voxel inside frame t+1's grid}. Movers are
  pedestrian, vehicle and bicycle. The one-voxel reach lets an object move by up to its own length per frame (a
  single-voxel pedestrian by one voxel) and, without a trajectory, absorbs a slow ego's drift.

Legend: T time, X/Y/Z space, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage, stats

from dcgen.data.classes import CLASS_IDS, CLASS_NAMES, FREE, NUM_CLASSES_UNIFIED, check_unified
from dcgen.metrics.ego_motion import STATIC_CLASSES

MOVER_CLASSES = tuple(CLASS_IDS[n] for n in ("pedestrian", "vehicle", "bicycle"))
# Rasterised thin objects (a diagonal barrier, a yawed car, a pole leaning across a voxel boundary) touch only along
# edges or corners; 6-connectivity would shatter them and count real data as "tiny components", the very failure
# measured here. The price, objects touching at a corner merging, under- rather than over-counts small components.
CONNECTIVITY = 26
_K = NUM_CLASSES_UNIFIED
assert _K * _K < 255, "pair codes class * K + class must fit uint8 (see _confusion)"
# 26-neighbours within a frame and nothing across frames, so one ndimage.label call labels every frame at once
_WITHIN_FRAME_3333 = np.zeros((3, 3, 3, 3), bool)
_WITHIN_FRAME_3333[1] = True
_STATIC_K = np.isin(np.arange(_K), STATIC_CLASSES)


def resample_next_frames(occ_TXYZ: np.ndarray, trajectory_T3: np.ndarray,
                         voxel_size: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(next_TXYZ, valid_TXY)`` over the T-1 consecutive pairs: frame t+1 resampled, nearest neighbour, onto frame
    t's voxel centres, and whether each centre lies inside frame t+1's grid (outside, ``next_TXYZ`` is free).

    Frame k's pose in frame 0 is (x, y, yaw) = ``trajectory_T3[k]``: a point p of frame k sits at R(yaw) p + (x, y),
    the convention of ``derive.trajectory_from_poses``. Cell centres are in metres with the ego at the XY centre, as
    in ``ego_motion``; heights are unchanged (planar motion).
    """
    num_frames, nx, ny, _ = occ_TXYZ.shape
    vx, vy = float(voxel_size[0]), float(voxel_size[1])
    traj_T3 = np.asarray(trajectory_T3, np.float64)
    px_XY = ((np.arange(nx) + 0.5 - nx / 2) * vx)[:, None]
    py_XY = ((np.arange(ny) + 0.5 - ny / 2) * vy)[None, :]
    x0, y0, yaw0 = (traj_T3[:-1, i, None, None] for i in range(3))
    x1, y1, yaw1 = (traj_T3[1:, i, None, None] for i in range(3))
    # frame t -> frame 0 -> frame t+1
    wx_TXY = np.cos(yaw0) * px_XY - np.sin(yaw0) * py_XY + x0 - x1
    wy_TXY = np.sin(yaw0) * px_XY + np.cos(yaw0) * py_XY + y0 - y1
    qx_TXY = np.cos(yaw1) * wx_TXY + np.sin(yaw1) * wy_TXY
    qy_TXY = -np.sin(yaw1) * wx_TXY + np.cos(yaw1) * wy_TXY
    ix_TXY = np.floor(qx_TXY / vx + nx / 2).astype(np.int64)
    iy_TXY = np.floor(qy_TXY / vy + ny / 2).astype(np.int64)
    valid_TXY = (ix_TXY >= 0) & (ix_TXY < nx) & (iy_TXY >= 0) & (iy_TXY < ny)
    t_T11 = np.arange(1, num_frames)[:, None, None]
    next_TXYZ = occ_TXYZ[t_T11, np.clip(ix_TXY, 0, nx - 1), np.clip(iy_TXY, 0, ny - 1)]
    next_TXYZ[~valid_TXY] = FREE
    return next_TXYZ, valid_TXY


def _dilate_xyz(mask_TXYZ: np.ndarray) -> np.ndarray:
    """Each frame's mask grown by one voxel towards its 26 neighbours (a 3x3x3 box, done axis by axis)."""
    out = mask_TXYZ.copy()
    for axis in (1, 2, 3):
        grown = out.copy()
        lo = [slice(None)] * 4
        hi = [slice(None)] * 4
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        grown[tuple(lo)] |= out[tuple(hi)]
        grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def _box(mask_TXYZ: np.ndarray) -> tuple[slice, ...]:
    """The mask's XYZ bounding box over all frames, grown by one voxel (what a dilation can reach) and clipped."""
    # reduce over T first: an outer-axis reduction is the cheap one
    seen_XYZ = mask_TXYZ.any(axis=0)
    box = [slice(None)]
    for axis, n in enumerate(seen_XYZ.shape):
        hit = np.flatnonzero(seen_XYZ.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hit[0]) - 1, 0), min(int(hit[-1]) + 2, n)))
    return tuple(box)


@dataclass(frozen=True)
class ClipStats:
    """Counts of one clip. ``*_KK`` are class confusion counts between consecutive frames, ``[k, j]`` = voxels of
    class k in frame t and j in frame t+1 over all pairs; ``*_K`` arrays are indexed by class id."""

    size_XYZ: tuple[int, int, int]
    num_frames: int
    class_voxels_K: np.ndarray
    component_sizes: dict[int, np.ndarray]  # class id -> sizes in voxels of its components, all frames
    # class id -> vertical extent (voxels along Z) of the same components, in the same order: a pole, a column of
    # four voxels, and a four-voxel blob on the ground have one size and different heights
    component_heights: dict[int, np.ndarray]
    flicker_KK: np.ndarray  # raw grid
    static_KK: np.ndarray  # ego-compensated, cells inside frame t+1's grid only; zeros without a trajectory
    persist_kept_K: np.ndarray
    persist_tracked_K: np.ndarray
    compensated: bool  # a trajectory was given: static change measured, persistence ego-compensated


def _check_inputs(occ_TXYZ, trajectory_T3, voxel_size, what: str):
    occ = np.asarray(occ_TXYZ)
    if occ.ndim != 4:
        raise ValueError(f"{what}: expected class ids of shape [T, X, Y, Z], got shape {list(occ.shape)}")
    check_unified(occ, _K, what)
    if trajectory_T3 is None:
        return occ, None, None
    traj = np.asarray(trajectory_T3, np.float64)
    if traj.shape != (occ.shape[0], 3):
        raise ValueError(f"{what}: trajectory has shape {list(traj.shape)}, expected [{occ.shape[0]}, 3] "
                         f"((x, y, yaw) of each of the clip's {occ.shape[0]} frames)")
    if not np.isfinite(traj).all():
        raise ValueError(f"{what}: trajectory holds non-finite values; expected finite (x, y, yaw) per frame")
    if voxel_size is None:
        raise ValueError(f"{what}: a trajectory needs voxel_size (metres per voxel along X, Y, Z) to be applied")
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"{what}: voxel_size {voxel_size} is invalid; expected three positive metres (X, Y, Z)")
    return occ, traj, vs


def _confusion(cur: np.ndarray, nxt: np.ndarray, counted: np.ndarray | None = None) -> np.ndarray:
    """``[K, K]`` counts of (class in ``cur``, class in ``nxt``) over the voxels where ``counted`` (default all)."""
    # K * K = 144 codes fit uint8, which keeps the pass over the clip at one byte a voxel
    code = cur * np.uint8(_K) + nxt
    if counted is not None:
        code = np.where(counted, code, np.uint8(_K * _K))
    return np.bincount(code.ravel(), minlength=_K * _K + 1)[:_K * _K].reshape(_K, _K).astype(np.int64)


def clip_stats(occ_TXYZ, trajectory_T3=None, voxel_size: tuple[float, float, float] | None = None,
               what: str = "clip") -> ClipStats:
    """The object statistics of one clip ``occ[T, X, Y, Z]`` (uint8 unified ids); ``trajectory_T3`` (frame poses
    in frame 0, metres and radians) and ``voxel_size`` enable ego-motion compensation. ``what`` names the clip in
    errors."""
    occ_TXYZ, traj_T3, vs = _check_inputs(occ_TXYZ, trajectory_T3, voxel_size, what)
    num_frames = occ_TXYZ.shape[0]
    class_voxels_K = np.bincount(occ_TXYZ.ravel(), minlength=_K).astype(np.int64)
    flicker_KK = _confusion(occ_TXYZ[:-1], occ_TXYZ[1:])
    static_KK = np.zeros((_K, _K), np.int64)
    if traj_T3 is not None:
        next_TXYZ, valid_TXY = resample_next_frames(occ_TXYZ, traj_T3, vs)
        valid_TXYZ = np.broadcast_to(valid_TXY[..., None], next_TXYZ.shape)
        static_KK = _confusion(occ_TXYZ[:-1], next_TXYZ, valid_TXYZ)
    else:
        next_TXYZ, valid_TXYZ = occ_TXYZ[1:], np.ones(occ_TXYZ[1:].shape, bool)

    persist_kept_K, persist_tracked_K = np.zeros(_K, np.int64), np.zeros(_K, np.int64)
    sizes: dict[int, np.ndarray] = {}
    heights: dict[int, np.ndarray] = {}
    for c in np.flatnonzero(class_voxels_K[1:]) + 1:
        c = int(c)
        mask_TXYZ = occ_TXYZ == c
        # labelling costs per voxel of the array, so label the class's bounding box only (road or ground: one layer)
        box = _box(mask_TXYZ)
        mask_TXYZ = mask_TXYZ[box]
        # and per line along the last axis: Z, the shortest, goes first (2-3x faster; the structure is symmetric)
        labels_TZYX, num = ndimage.label(np.ascontiguousarray(mask_TXYZ.transpose(0, 3, 2, 1)),
                                         structure=_WITHIN_FRAME_3333)
        sizes[c] = np.bincount(labels_TZYX[labels_TZYX > 0], minlength=num + 1)[1:].astype(np.int64)
        heights[c] = np.array([z.stop - z.start for _, z, _, _ in ndimage.find_objects(labels_TZYX)], np.int64)
        labels_TXYZ = labels_TZYX.transpose(0, 3, 2, 1)
        if c in MOVER_CLASSES and num_frames > 1:
            cur_c, labels_cur = mask_TXYZ[:-1], labels_TXYZ[:-1]
            near_next = _dilate_xyz(next_TXYZ[box] == c)
            tracked = np.unique(labels_cur[valid_TXYZ[box] & cur_c])
            touched = np.unique(labels_cur[near_next & cur_c])
            persist_tracked_K[c] = tracked.size
            persist_kept_K[c] = np.intersect1d(tracked, touched, assume_unique=True).size
    return ClipStats(size_XYZ=tuple(int(n) for n in occ_TXYZ.shape[1:]), num_frames=num_frames,
                     class_voxels_K=class_voxels_K, component_sizes=sizes, component_heights=heights,
                     flicker_KK=flicker_KK, static_KK=static_KK, persist_kept_K=persist_kept_K,
                     persist_tracked_K=persist_tracked_K,
                     compensated=traj_T3 is not None)


def _ratio(num, den) -> float | None:
    return float(num) / float(den) if den else None


def _class_change(pairs_KK: np.ndarray, c: int) -> float | None:
    """#{c in exactly one frame} / #{c in either frame} (1 - IoU of the class masks), from pair confusion counts."""
    either = int(pairs_KK[c].sum() + pairs_KK[:, c].sum() - pairs_KK[c, c])
    return _ratio(either - pairs_KK[c, c], either)


def _change(pairs_KK: np.ndarray, counted_K: np.ndarray) -> float | None:
    """Share of the voxels holding a counted class in either frame whose class differs between the frames."""
    either_KK = counted_K[:, None] | counted_K[None, :]
    return _ratio(pairs_KK[either_KK & ~np.eye(_K, dtype=bool)].sum(), pairs_KK[either_KK].sum())


@dataclass
class SetStats:
    """Statistics pooled over a set of clips of one grid shape: counts are summed, component sizes concatenated.

    Rates (flicker, static change, persistence) are ratios of pooled counts, so a clip weighs by its voxels and
    components, not one vote per clip.
    """

    size_XYZ: tuple[int, int, int] | None = None
    num_clips: int = 0
    num_frames: int = 0
    num_compensated: int = 0
    class_voxels_K: np.ndarray = field(default_factory=lambda: np.zeros(_K, np.int64))
    sizes: dict[int, list[np.ndarray]] = field(default_factory=dict)
    heights: dict[int, list[np.ndarray]] = field(default_factory=dict)
    flicker_KK: np.ndarray = field(default_factory=lambda: np.zeros((_K, _K), np.int64))
    static_KK: np.ndarray = field(default_factory=lambda: np.zeros((_K, _K), np.int64))
    persist_kept_K: np.ndarray = field(default_factory=lambda: np.zeros(_K, np.int64))
    persist_tracked_K: np.ndarray = field(default_factory=lambda: np.zeros(_K, np.int64))

    def add(self, cs: ClipStats) -> "SetStats":
        """Pool one clip's statistics; a clip of another grid shape is refused and leaves the set unchanged."""
        if self.size_XYZ is not None and cs.size_XYZ != self.size_XYZ:
            raise ValueError(f"clip of grid {list(cs.size_XYZ)} cannot join a set of {list(self.size_XYZ)} clips; "
                             f"component sizes in voxels compare only on one grid")
        self.size_XYZ = cs.size_XYZ
        self.num_clips += 1
        self.num_frames += cs.num_frames
        self.num_compensated += int(cs.compensated)
        for c, s in cs.component_sizes.items():
            self.sizes.setdefault(c, []).append(s)
            self.heights.setdefault(c, []).append(cs.component_heights[c])
        for name in ("class_voxels_K", "flicker_KK", "static_KK", "persist_kept_K", "persist_tracked_K"):
            setattr(self, name, getattr(self, name) + getattr(cs, name))
        return self

    def component_sizes(self, c: int) -> np.ndarray:
        """Sizes in voxels of every component of class ``c`` in the set (empty when the class never occurs)."""
        return np.concatenate(self.sizes[c]) if c in self.sizes else np.zeros(0, np.int64)

    def component_heights(self, c: int) -> np.ndarray:
        """Vertical extents in voxels of every component of class ``c`` in the set (empty when it never occurs)."""
        return np.concatenate(self.heights[c]) if c in self.heights else np.zeros(0, np.int64)

    def classes(self) -> list[int]:
        """Non-free class ids with at least one voxel in the set."""
        return [int(c) for c in np.flatnonzero(self.class_voxels_K[1:]) + 1]

    def class_summary(self, c: int) -> dict:
        """One class's statistics; size statistics are None where the class has no component."""
        s = self.component_sizes(c)
        out = {
            "share": _ratio(self.class_voxels_K[c], self.class_voxels_K[1:].sum()),
            "components_per_frame": _ratio(s.size, self.num_frames),
            "size_median": float(np.median(s)) if s.size else None,
            "size_p90": float(np.percentile(s, 90)) if s.size else None,
            "size_mean": float(s.mean()) if s.size else None,
            "height_median": float(np.median(self.component_heights(c))) if s.size else None,
            "flicker": _class_change(self.flicker_KK, c),
        }
        if c in MOVER_CLASSES:
            out["persistence"] = _ratio(self.persist_kept_K[c], self.persist_tracked_K[c])
        if _STATIC_K[c]:
            out["static_change"] = _class_change(self.static_KK, c)
        return out

    def summary(self) -> dict:
        """JSON-able statistics of the set; rates whose denominator is empty are None."""
        movers = list(MOVER_CLASSES)
        return {
            "num_clips": self.num_clips,
            "num_frames": self.num_frames,
            "num_compensated_clips": self.num_compensated,
            "grid": list(self.size_XYZ) if self.size_XYZ else None,
            "connectivity": CONNECTIVITY,
            "occupied_share": _ratio(self.class_voxels_K[1:].sum(), self.class_voxels_K.sum()),
            "flicker": _change(self.flicker_KK, np.arange(_K) != FREE),
            "static_change": _change(self.static_KK, _STATIC_K),
            "persistence": _ratio(self.persist_kept_K[movers].sum(), self.persist_tracked_K[movers].sum()),
            "classes": {CLASS_NAMES[c]: self.class_summary(c) for c in self.classes()},
        }


def set_stats(occ_NTXYZ, trajectories_NT3=None, voxel_size: tuple[float, float, float] | None = None) -> SetStats:
    """``SetStats`` of a list or array of clips, optionally with one trajectory per clip."""
    if trajectories_NT3 is not None and len(trajectories_NT3) != len(occ_NTXYZ):
        raise ValueError(f"got {len(trajectories_NT3)} trajectories for {len(occ_NTXYZ)} clips; expected one per "
                         f"clip")
    out = SetStats()
    for i, occ_TXYZ in enumerate(occ_NTXYZ):
        traj_T3 = None if trajectories_NT3 is None else trajectories_NT3[i]
        out.add(clip_stats(occ_TXYZ, traj_T3, voxel_size, what=f"clip {i}"))
    return out


def _entry(real, fake) -> dict:
    """Both values and the fake's relative gap (fake - real) / real; None where undefined (a value missing or the
    real value 0)."""
    gap = (fake - real) / real if real is not None and fake is not None and real != 0 else None
    return {"real": real, "fake": fake, "relative_gap": gap}


def compare(real: SetStats, fake: SetStats) -> dict:
    """Real against generated, statistic by statistic: ``{"real", "fake", "relative_gap"}`` entries (a flicker
    gap of +1 is twice the real flicker, a vehicle median gap of -0.5 half the real size), the L1 distance of the
    class mixes (0..2) and, per class, the 1D Wasserstein distance between component size distributions in voxels.
    Classes present in either set are listed; a class absent from one side has share 0 and no sizes there."""
    for name, s in (("real", real), ("fake", fake)):
        if s.num_clips == 0:
            raise ValueError(f"the {name} set holds no clips; expected at least one to compare")
    if real.size_XYZ != fake.size_XYZ:
        raise ValueError(f"real clips are on grid {list(real.size_XYZ)}, fake clips on {list(fake.size_XYZ)}; "
                         f"expected one grid (component sizes are in voxels)")
    sr, sf = real.summary(), fake.summary()
    mix_r = real.class_voxels_K[1:] / max(int(real.class_voxels_K[1:].sum()), 1)
    mix_f = fake.class_voxels_K[1:] / max(int(fake.class_voxels_K[1:].sum()), 1)
    both_occupied = real.class_voxels_K[1:].any() and fake.class_voxels_K[1:].any()
    classes = {}
    for c in sorted(set(real.classes()) | set(fake.classes())):
        cr, cf = real.class_summary(c), fake.class_summary(c)
        row = {key: _entry(cr[key], cf[key]) for key in cr}
        size_r, size_f = real.component_sizes(c), fake.component_sizes(c)
        row["size_wasserstein"] = (float(stats.wasserstein_distance(size_r, size_f))
                                   if size_r.size and size_f.size else None)
        classes[CLASS_NAMES[c]] = row
    return {
        "num_clips": {"real": real.num_clips, "fake": fake.num_clips},
        "occupied_share": _entry(sr["occupied_share"], sf["occupied_share"]),
        "class_mix_l1": float(np.abs(mix_r - mix_f).sum()) if both_occupied else None,
        "flicker": _entry(sr["flicker"], sf["flicker"]),
        "static_change": _entry(sr["static_change"], sf["static_change"]),
        "persistence": _entry(sr["persistence"], sf["persistence"]),
        "classes": classes,
    }
