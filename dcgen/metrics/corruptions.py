"""Controlled corruptions of real clips, the sanity check of the generation metrics (SPEC §4; issue 5, "metrics move
the right way when samples are corrupted"): a metric that cannot tell real clips from these is not measuring
scene quality.

- ``class_noise``: a share ``p`` of the occupied voxels get a different random non-free class;
- ``shift``: every clip is translated by ``(dx, dy)`` voxels in X and Y, free space entering at the border (the
  ego no longer at the centre, the road off its place);
- ``empty``: a share ``p`` of the clips become all free (a generator that sometimes outputs nothing);
- ``erode``: objects of some classes lose their outer layer in every frame (issue 23's generated vehicles at half
  their real size, poles and pedestrians reduced to single voxels or gone).
Each draws from ``runtime.rng(seed, clip index)``, so a clip's corruption does not depend on the batch it is in.
Legend: N clips, T time, X/Y/Z space.
"""

from __future__ import annotations

import numpy as np

from dcgen.data.classes import FREE
from dcgen.runtime import rng as clip_rng

CORRUPTIONS = ("class_noise", "shift", "empty")


def _clips(occ_NTXYZ) -> np.ndarray:
    arr = np.asarray(occ_NTXYZ)
    if arr.ndim != 5 or arr.dtype.kind not in "iu":
        raise ValueError(f"expected integer class ids of shape [N, T, X, Y, Z], got {arr.dtype} of shape "
                         f"{list(arr.shape)}")
    return arr


def class_noise(occ_NTXYZ, p: float, num_classes: int, seed: int = 0, first_index: int = 0) -> np.ndarray:
    """A copy where each occupied voxel, with probability ``p``, takes another random class in 1..K-1."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"class noise probability must be in [0, 1], got {p}")
    if num_classes < 3:
        raise ValueError(f"class noise needs at least two non-free classes (num_classes >= 3), got {num_classes}")
    out = _clips(occ_NTXYZ).copy()
    for i in range(out.shape[0]):
        g = clip_rng(seed, first_index + i)
        clip = out[i]
        hit = (clip != FREE) & (g.random(clip.shape) < p)
        # an offset in 1..K-2 added modulo the K-1 non-free classes never gives back the same class
        offset = g.integers(1, num_classes - 1, size=int(hit.sum()))
        clip[hit] = ((clip[hit].astype(np.int64) - 1 + offset) % (num_classes - 1) + 1).astype(out.dtype)
    return out


def shift(occ_NTXYZ, dx: int, dy: int) -> np.ndarray:
    """Every clip moved by ``dx`` voxels along X and ``dy`` along Y; uncovered cells become free."""
    occ = _clips(occ_NTXYZ)
    _, _, nx, ny, _ = occ.shape
    if abs(dx) >= nx or abs(dy) >= ny:
        raise ValueError(f"shift ({dx}, {dy}) moves the scene out of the {nx} × {ny} grid; expected |dx| < {nx} "
                         f"and |dy| < {ny}")
    out = np.full_like(occ, FREE)
    src_x, dst_x = (slice(0, nx - dx), slice(dx, nx)) if dx >= 0 else (slice(-dx, nx), slice(0, nx + dx))
    src_y, dst_y = (slice(0, ny - dy), slice(dy, ny)) if dy >= 0 else (slice(-dy, ny), slice(0, ny + dy))
    out[:, :, dst_x, dst_y] = occ[:, :, src_x, src_y]
    return out


def empty(occ_NTXYZ, p: float, seed: int = 0, first_index: int = 0) -> np.ndarray:
    """A copy where each clip, with probability ``p``, is all free."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"empty-scene probability must be in [0, 1], got {p}")
    out = _clips(occ_NTXYZ).copy()
    for i in range(out.shape[0]):
        if clip_rng(seed, first_index + i).random() < p:
            out[i] = FREE
    return out


def erode(occ_NTXYZ, classes) -> np.ndarray:
    """A copy where every voxel of ``classes`` (unified ids) with a 4-neighbour in X/Y of another class becomes free,
    frame by frame: objects shrink by a voxel on each side, those two voxels thin or less vanish. The grid's edge
    counts as the object's own class, so objects cut by the edge are not eaten from there."""
    from scipy import ndimage

    out = _clips(occ_NTXYZ).copy()
    # a plus in X/Y only: erosion never crosses frames (T), clips (N) or heights (Z)
    cross = np.zeros((1, 1, 3, 3, 1), bool)
    cross[0, 0, 1, :, 0] = cross[0, 0, :, 1, 0] = True
    for c in classes:
        mask = out == c
        out[mask & ~ndimage.binary_erosion(mask, structure=cross, border_value=1)] = FREE
    return out


def corrupted_sets(occ_NTXYZ, num_classes: int, seed: int = 0, noise: float = 0.3, offset: int | None = None,
                   empty_share: float = 0.5) -> dict[str, np.ndarray]:
    """The three corruptions of ``occ`` with the defaults of the acceptance check: 30 % class noise, a shift of
    a fifth of the grid in X and Y, half of the clips emptied."""
    occ = _clips(occ_NTXYZ)
    offset = max(1, occ.shape[2] // 5) if offset is None else offset
    return {"class_noise": class_noise(occ, noise, num_classes, seed),
            "shift": shift(occ, offset, offset),
            "empty": empty(occ, empty_share, seed + 1)}


def corruption_check(nets, occ_NTXYZ, seed: int = 0, batch_size: int = 16, config=None) -> dict:
    """Every SPEC §4 metric, in 2D and 3D, of real-vs-real (two disjoint halves: even and odd clips) and
    real-vs-corrupted (the odd half corrupted), with ``nets`` (``FeatureNets``). Returns
    ``{"num_clips_per_half", "real": {...}, "class_noise": {...}, "shift": {...}, "empty": {...}}``."""
    from dcgen.metrics.extract import extract_features
    from dcgen.metrics.gen_eval import compare_features
    from dcgen.metrics.generation import GenerationMetricsConfig

    occ = nets.check_clips(occ_NTXYZ)
    half_a, half_b = occ[0::2], occ[1::2]
    config = config or GenerationMetricsConfig()
    reference = extract_features(nets, half_a, batch_size)
    sets = {"real": half_b, **corrupted_sets(half_b, nets.grid.num_classes, seed)}
    out: dict = {"num_clips_per_half": [int(half_a.shape[0]), int(half_b.shape[0])]}
    for name, clips in sets.items():
        out[name] = compare_features(reference, extract_features(nets, clips, batch_size), config)
    return out
