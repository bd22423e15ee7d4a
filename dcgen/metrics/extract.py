"""Batched feature extraction for the generation metrics (SPEC §4): occupancy clips -> 2D and 3D features and class
probabilities of dcgen's metric feature networks.

``extract_features(nets, occ_NTXYZ)`` is the one function every caller uses (``dcgen eval``, reference statistics,
the synthesis job's per-batch quality gates): each clip is rendered into its metric views (``render_for_metrics``,
CPU numpy), the image network reads every view and the voxel network reads the clip. 2D rows are *images*, clip
major: the ``V`` views of clip ``n`` are rows ``n V .. n V + V - 1``; 3D rows are clips. Features are float32,
probabilities (the proxy task's joint p(y|x), ``FeatureNets.class_probs``, float64) sum to one per row. Networks run in eval mode in float32,
so a clip's features do not depend on the batch it came in (GroupNorm, no batch statistics).
``extract_store`` does the same over the clips of a scene store, reading them in contiguous runs, and counts the
distinct clips it read (by their bytes: a collapsed generator writes one scene many times).
Legend: N clips, M = N V images, D features, K classes.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dcgen.metrics.feature_nets import FeatureNets

DEFAULT_BATCH = 16


@dataclass(frozen=True)
class ClipFeatures:
    """Features and class probabilities of ``num_clips`` clips in both spaces."""

    feat2d_MD: np.ndarray  # [N V, D2] float32
    probs2d_MK: np.ndarray  # [N V, K2] float64
    feat3d_ND: np.ndarray  # [N, D3] float32
    probs3d_NK: np.ndarray  # [N, K3] float64
    views_per_clip: int

    def __post_init__(self) -> None:
        n, v = self.feat3d_ND.shape[0], self.views_per_clip
        if self.feat2d_MD.shape[0] != n * v or self.probs2d_MK.shape[0] != n * v or self.probs3d_NK.shape[0] != n:
            raise ValueError(f"clip features disagree on counts: 2D {self.feat2d_MD.shape[0]} rows and "
                             f"{self.probs2d_MK.shape[0]} probability rows, 3D {n} rows and "
                             f"{self.probs3d_NK.shape[0]} probability rows, {v} views per clip; expected "
                             "N V 2D rows for N 3D rows")

    @property
    def num_clips(self) -> int:
        return int(self.feat3d_ND.shape[0])

    @property
    def num_images(self) -> int:
        return int(self.feat2d_MD.shape[0])

    def take(self, clips: np.ndarray | slice) -> "ClipFeatures":
        """The features of a subset of clips (their views come along)."""
        idx = np.arange(self.num_clips)[clips]
        v = self.views_per_clip
        rows = (idx[:, None] * v + np.arange(v)[None]).reshape(-1)
        return ClipFeatures(self.feat2d_MD[rows], self.probs2d_MK[rows], self.feat3d_ND[idx], self.probs3d_NK[idx], v)

    @staticmethod
    def concat(parts: Sequence["ClipFeatures"]) -> "ClipFeatures":
        if not parts:
            raise ValueError("no clip features to concatenate")
        v = parts[0].views_per_clip
        if any(p.views_per_clip != v for p in parts):
            raise ValueError("clip features with different views per clip cannot be concatenated")
        return ClipFeatures(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                              ("feat2d_MD", "probs2d_MK", "feat3d_ND", "probs3d_NK")), v)

    def as_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(feat2d, probs2d, feat3d, probs3d)``."""
        return self.feat2d_MD, self.probs2d_MK, self.feat3d_ND, self.probs3d_NK


@torch.no_grad()
def extract_features(nets: FeatureNets, occ_NTXYZ, batch_size: int = DEFAULT_BATCH) -> ClipFeatures:
    """2D and 3D features and probabilities of clips ``[N, T, X, Y, Z]`` (numpy or tensor, class ids)."""
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    occ = nets.check_clips(occ_NTXYZ)
    if occ.shape[0] == 0:
        raise ValueError("no clips to extract features from; expected at least one")
    was_training = nets.training
    nets.eval()
    device = next(nets.parameters()).device
    parts = []
    try:
        for a in range(0, occ.shape[0], int(batch_size)):
            chunk = occ[a:a + int(batch_size)]
            images = nets.image_inputs(nets.render(chunk), device)
            f2, logits2, _ = nets.image(images)
            clips = torch.from_numpy(np.ascontiguousarray(chunk)).to(device)
            f3, logits3, _ = nets.voxel(clips)
            parts.append(ClipFeatures(f2.float().cpu().numpy(), nets.class_probs("image", logits2),
                                      f3.float().cpu().numpy(), nets.class_probs("voxel", logits3),
                                      nets.config.views_per_clip))
    finally:
        nets.train(was_training)
    return ClipFeatures.concat(parts)


def extract_store(nets: FeatureNets, path: str, split: str | None = None, batch_size: int = DEFAULT_BATCH,
                  max_clips: int | None = None) -> tuple[ClipFeatures, dict]:
    """Features of the complete clips of a scene store (one ``split``, or all with None), progress on stderr;
    returns them and ``{"path", "split", "num_clips", "distinct_clips", "indices_sha1", "seconds",
    "clips_per_second"}``."""
    from dcgen.data.ray_dataset import contiguous_runs
    from dcgen.data.store import SceneStore
    from dcgen.progress import Progress

    store = SceneStore.open(path)
    g, want = store.grid, nets.grid
    if (g.num_frames, tuple(g.size)) != (want.num_frames, tuple(want.size)) or g.num_classes > want.num_classes:
        raise ValueError(f"{path}: store grid T={g.num_frames} XYZ={list(g.size)} K={g.num_classes} does not match "
                         f"the feature networks' grid T={want.num_frames} XYZ={list(want.size)} "
                         f"K={want.num_classes}; use a features checkpoint trained on this grid")
    indices = store.indices(split)
    if indices.size == 0:
        splits = ", ".join(f"{k} {v}" for k, v in store.describe()["splits"].items()) or "none"
        raise ValueError(f"{path}: {'split ' + repr(split) if split else 'the store'} has no complete clips "
                         f"(splits: {splits})")
    if max_clips is not None:
        if max_clips < 1:
            raise ValueError(f"max_clips must be >= 1 (or None for all), got {max_clips}")
        indices = indices[:max_clips]
    t0 = time.perf_counter()
    parts, digests = [], set()
    name = f"features {path}" + (f":{split}" if split else "")
    with Progress(name, total=int(indices.size), unit="clip") as bar:
        for start, stop in contiguous_runs(indices):
            for a in range(start, stop, int(batch_size)):
                b = min(stop, a + int(batch_size))
                occ = store.read(slice(a, b), ("occupancy",))["occupancy"]
                parts.append(extract_features(nets, occ, batch_size))
                digests.update(hashlib.blake2b(clip.tobytes(), digest_size=16).digest() for clip in occ)
                bar.update(advance=b - a)
    seconds = time.perf_counter() - t0
    info = {"path": str(path), "split": split, "num_clips": int(indices.size), "distinct_clips": len(digests),
            "indices_sha1": hashlib.sha1(indices.astype(np.int64).tobytes()).hexdigest()[:12],
            "seconds": seconds, "clips_per_second": indices.size / max(seconds, 1e-9)}
    return ClipFeatures.concat(parts), info
