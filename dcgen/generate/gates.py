"""Per-batch quality gates of ``dcgen synth`` (issue 6): distribution checks of a generated batch against real data.

Checks (each a batch statistic and a threshold; ``min_occupied`` is a lower bound, the rest upper bounds):

- ``min_occupied``: the smallest occupied-voxel fraction of a scene in the batch (empty or near-empty scenes);
- ``class_distance``: Jensen-Shannon divergence (base 2, in [0, 1]) between the batch's class mix over occupied
  voxels and the reference's;
- ``flicker``: mean over scenes and frame pairs of the share of voxels, occupied in either frame, whose class changes
  from one frame to the next (temporal flicker);
- ``fid_3d``/``kid_3d`` (and ``fid_2d``/``kid_2d``): FID and KID (SPEC §4) of the batch's features against the
  reference features, from dcgen's own feature networks.

The FID of a batch of B scenes against reference statistics (μ_r, Σ_r) is exact and cheap: the batch covariance
Σ_b = XᵀX/(B−1) (X the centred features) has rank < B, and the non-zero eigenvalues of Σ_r^½ Σ_b Σ_r^½ are those of
the B×B matrix X Σ_r Xᵀ/(B−1), so Tr((Σ_r Σ_b)^½) needs no D×D decomposition.

Default thresholds come from real-vs-real batches of the same size, calibrated when the job starts: the reference
clips are split in two halves (even/odd positions); the reference distribution and statistics come from one half,
``draws`` batches of B clips are drawn from the other, and each upper-bound threshold is the ``quantile`` (0.99) of
the real batches' values times ``slack`` (1.5), the lower bound the (1 − quantile) value divided by ``slack``. An
explicit threshold (``--gate-*``) replaces the calibrated one. The calibration is deterministic given the reference,
B and the job seed, so a resumed job gets the same thresholds.

Legend: N clips, B batch, T/X/Y/Z clip axes, K classes, D features.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

import numpy as np

from dcgen.metrics.feature_stats import FeatureStats, check_features
from dcgen.metrics.kid import kernel_inception_distance

CHEAP_CHECKS = ("min_occupied", "class_distance", "flicker")
FEATURE_CHECKS = ("fid_3d", "kid_3d", "fid_2d", "kid_2d")
CHECKS = CHEAP_CHECKS + FEATURE_CHECKS
LOWER_BOUNDS = ("min_occupied",)
KID_SUBSETS = 10


# ---- per-clip and per-batch statistics ---------------------------------------------------------------------

def occupied_fraction(occ_NTXYZ: np.ndarray) -> np.ndarray:
    """``[N]`` share of non-free voxels of each clip."""
    occ = np.asarray(occ_NTXYZ)
    return (occ.reshape(occ.shape[0], -1) != 0).mean(axis=1)


def flicker(occ_NTXYZ: np.ndarray) -> np.ndarray:
    """``[N]`` mean over frame pairs of the share of voxels occupied in either frame whose class changes."""
    occ = np.asarray(occ_NTXYZ)
    n, t = occ.shape[:2]
    if t < 2:
        return np.zeros(n)
    a, b = occ[:, :-1].reshape(n, t - 1, -1), occ[:, 1:].reshape(n, t - 1, -1)
    changed_NT = (a != b).sum(axis=2)
    either_NT = ((a != 0) | (b != 0)).sum(axis=2)
    return (changed_NT / np.maximum(either_NT, 1)).mean(axis=1)


def class_counts(occ_NTXYZ: np.ndarray, num_classes: int) -> np.ndarray:
    """``[N, K]`` voxels per class of each clip."""
    occ = np.asarray(occ_NTXYZ)
    flat = occ.reshape(occ.shape[0], -1).astype(np.int64) + num_classes * np.arange(occ.shape[0])[:, None]
    return np.bincount(flat.ravel(), minlength=occ.shape[0] * num_classes).reshape(occ.shape[0], num_classes)


def js_divergence(p_K: np.ndarray, q_K: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2) between two count or probability vectors; 0 for equal mixes, 1 at most."""
    p = np.asarray(p_K, np.float64)
    q = np.asarray(q_K, np.float64)
    p = p / p.sum() if p.sum() > 0 else np.full_like(p, 1.0 / p.size)
    q = q / q.sum() if q.sum() > 0 else np.full_like(q, 1.0 / q.size)
    m = 0.5 * (p + q)

    def kl(a, b):
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / b[nz])).sum())

    return float(min(max(0.5 * kl(p, m) + 0.5 * kl(q, m), 0.0), 1.0))


def batch_fid(reference: FeatureStats, features_BD: np.ndarray) -> float:
    """FID between reference statistics and a batch of B >= 2 feature rows, exact, through the B×B matrix
    X Σ_r Xᵀ/(B−1) (see the module docstring)."""
    feats = check_features(features_BD, "batch features", 2, "a batch covariance").astype(np.float64)
    if feats.shape[1] != reference.dim:
        raise ValueError(f"batch features have {feats.shape[1]} features per sample but the reference has "
                         f"{reference.dim}; expected features from the same network")
    b = feats.shape[0]
    mean_D = feats.mean(axis=0)
    x_BD = feats - mean_D
    gram_BB = x_BD @ reference.cov_DD @ x_BD.T / (b - 1)
    tr_cross = float(np.sqrt(np.clip(np.linalg.eigvalsh((gram_BB + gram_BB.T) * 0.5), 0.0, None)).sum())
    tr_batch = float((x_BD * x_BD).sum() / (b - 1))
    diff_D = mean_D - reference.mean_D
    fid = float(diff_D @ diff_D) + float(np.trace(reference.cov_DD)) + tr_batch - 2.0 * tr_cross
    return max(fid, 0.0)


def batch_kid(reference_ND: np.ndarray, features_BD: np.ndarray, seed: int) -> float:
    """Mean unbiased MMD² (cubic kernel) of the batch against ``KID_SUBSETS`` reference subsets of its size."""
    b = np.asarray(features_BD).shape[0]
    return kernel_inception_distance(reference_ND, features_BD, num_subsets=KID_SUBSETS, subset_size=b, seed=seed)[0]


# ---- configuration -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateConfig:
    """What the user asked of the gates; thresholds left None are calibrated (when their reference is given)."""

    reference: str | None = None  # ref.npz of 'dcgen eval reference' (FID/KID)
    features: str | None = None  # feature network checkpoint of that reference
    reference_data: str | None = None  # scene store of real clips (cheap checks; calibration)
    reference_split: str | None = None
    use_2d: bool = False
    thresholds: dict = field(default_factory=dict)  # explicit: check name -> value
    slack: float = 1.5
    quantile: float = 0.99
    draws: int = 200
    max_reference_clips: int = 1024

    def __post_init__(self) -> None:
        unknown = sorted(set(self.thresholds) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown gate check(s) {unknown}; expected some of {', '.join(CHECKS)}")
        for name, v in self.thresholds.items():
            if v is None or not np.isfinite(float(v)) or float(v) < 0:
                raise ValueError(f"--gate-{name.replace('_', '-')} {v!r}: expected a finite number >= 0")
            if name in ("min_occupied", "class_distance", "flicker") and float(v) > 1:
                raise ValueError(f"--gate-{name.replace('_', '-')} {v}: a fraction; expected a value in 0..1")
        if not np.isfinite(self.slack) or self.slack < 1:
            raise ValueError(f"--gate-slack {self.slack}: expected a number >= 1 (1 = exactly the real-vs-real bound)")
        if not 0.5 <= self.quantile < 1:
            raise ValueError(f"gate quantile {self.quantile}: expected a value in [0.5, 1)")
        if self.draws < 10:
            raise ValueError(f"gate calibration draws {self.draws}: expected >= 10")
        if self.features is not None and self.reference is None:
            raise ValueError("--features is the network of a reference; pass --reference ref.npz with it")
        if self.reference is not None and self.features is None:
            raise ValueError(f"--reference {self.reference}: FID/KID gates also need the feature network it was "
                             "made with; pass --features CKPT")
        if self.use_2d and self.reference is None:
            raise ValueError("--gate-2d needs --reference ref.npz and --features CKPT")
        for name in self.thresholds:
            if name in FEATURE_CHECKS and self.reference is None:
                raise ValueError(f"--gate-{name.replace('_', '-')} needs reference statistics; pass --reference "
                                 "ref.npz and --features CKPT")
            if name in CHEAP_CHECKS and self.reference_data is None and self.reference is None:
                raise ValueError(f"--gate-{name.replace('_', '-')} needs real clips to compare with; pass "
                                 "--reference-data STORE (a scene store of real clips) or --reference ref.npz")
            if name.endswith("_2d") and not self.use_2d:
                raise ValueError(f"--gate-{name.replace('_', '-')} is a 2D check; add --gate-2d")

    @property
    def enabled(self) -> bool:
        return self.reference is not None or self.reference_data is not None

    @property
    def checks(self) -> tuple[str, ...]:
        """The checks that run (after ``resolve``: cheap ones need ``reference_data``)."""
        out = list(CHEAP_CHECKS) if self.reference_data is not None else []
        if self.reference is not None:
            out += ["fid_3d", "kid_3d"] + (["fid_2d", "kid_2d"] if self.use_2d else [])
        return tuple(out)

    def resolve(self) -> "GateConfig":
        """With ``--reference`` and no ``--reference-data``: the real clips the reference was made from (recorded
        in ref.npz) feed the cheap checks; a recorded store that is gone is an error, not a silently skipped check."""
        if self.reference is None or self.reference_data is not None:
            return self
        from dcgen.data.store import _exists
        from dcgen.metrics.reference import ReferenceStats

        meta = ReferenceStats.load(self.reference).meta
        data = meta.get("data")
        if not data or not _exists(str(data)):
            raise ValueError(f"--reference {self.reference} was made from the scene store {data!r}, which is not "
                             "there; pass --reference-data STORE (the real clips) for the cheap checks")
        return replace(self, reference_data=str(data), reference_split=meta.get("split"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GateConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})


# ---- the reference -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RealClips:
    """Per-clip summaries of real clips (the cheap checks' reference and calibration)."""

    class_counts_NK: np.ndarray
    occupied_N: np.ndarray
    flicker_N: np.ndarray

    @property
    def num_clips(self) -> int:
        return int(self.occupied_N.shape[0])

    def take(self, rows: np.ndarray) -> "RealClips":
        return RealClips(self.class_counts_NK[rows], self.occupied_N[rows], self.flicker_N[rows])

    def summary(self) -> dict[str, np.ndarray]:
        return {"class_counts_NK": self.class_counts_NK, "occupied_N": self.occupied_N, "flicker_N": self.flicker_N}


@dataclass(frozen=True)
class RealFeatures:
    """Reference features of real clips: ``"3d"`` rows are clips, ``"2d"`` rows are ``views_per_clip`` images per
    clip (clip major, as ``dcgen.metrics.extract.ClipFeatures``), with their statistics."""

    features: dict  # space -> [rows, D] float32
    stats: dict  # space -> FeatureStats
    views_per_clip: int

    @property
    def num_clips(self) -> int:
        return int(self.features["3d"].shape[0])

    def rows(self, space: str, clips: np.ndarray) -> np.ndarray:
        """Feature rows of ``clips`` in ``space``."""
        if space == "3d":
            return self.features["3d"][clips]
        v = self.views_per_clip
        return self.features["2d"][(np.asarray(clips)[:, None] * v + np.arange(v)[None]).reshape(-1)]

    def take(self, clips: np.ndarray) -> "RealFeatures":
        feats = {s: self.rows(s, clips) for s in self.features}
        return RealFeatures(feats, {s: FeatureStats.from_features(f, f"reference {s} features")
                                    for s, f in feats.items()}, self.views_per_clip)


@dataclass(frozen=True)
class GateReference:
    """What a running gate compares each batch with (small enough to ship to every worker)."""

    class_mix_K: np.ndarray | None  # occupied-voxel counts per class of the reference clips
    features: RealFeatures | None


def clip_summaries(occ_NTXYZ: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    return {"class_counts_NK": class_counts(occ_NTXYZ, num_classes), "occupied_N": occupied_fraction(occ_NTXYZ),
            "flicker_N": flicker(occ_NTXYZ)}


def _check_grid(what: str, path: str, have, grid) -> None:
    if grid is not None and (tuple(have.shape), have.num_classes) != (tuple(grid.shape), grid.num_classes):
        raise ValueError(f"{what} {path}: its grid (T={have.num_frames}, XYZ={list(have.size)}, K={have.num_classes}) "
                         f"is not the model's (T={grid.num_frames}, XYZ={list(grid.size)}, K={grid.num_classes})")


def real_clips_from_store(path: str, split: str | None, max_clips: int, grid=None) -> RealClips:
    """Summaries of up to ``max_clips`` clips (evenly spaced) of a real scene store."""
    from dcgen.data.store import SceneStore

    store = SceneStore.open(path)
    _check_grid("--reference-data", path, store.grid, grid)
    idx = store.indices(split)
    if idx.size == 0:
        raise ValueError(f"--reference-data {path}: no complete clips in split {split or 'any'}")
    if idx.size > max_clips:
        idx = idx[np.linspace(0, idx.size - 1, max_clips).round().astype(np.int64)]
    parts: dict[str, list] = {"class_counts_NK": [], "occupied_N": [], "flicker_N": []}
    for a in range(0, idx.size, 64):
        occ = store.read(idx[a:a + 64], ("occupancy",))["occupancy"]
        for k, v in clip_summaries(occ, store.grid.num_classes).items():
            parts[k].append(v)
    return RealClips(**{k: np.concatenate(v) for k, v in parts.items()})


def real_features_from_reference(path: str, features_ckpt: str, grid=None) -> tuple[RealFeatures, dict]:
    """The features of ``dcgen eval reference``'s ``ref.npz``, checked against the features checkpoint (same
    network, the model's grid); returns them and the reference's meta (data path, split, ...)."""
    from dcgen import checkpoint
    from dcgen.metrics.reference import ReferenceStats

    meta = checkpoint.read_meta(features_ckpt, kind="features")
    _check_grid("--features", features_ckpt, _grid_of(meta["config"]["grid"]), grid)
    ref = ReferenceStats.load(path)
    ref.check_network(checkpoint.checkpoint_id(features_ckpt), f"the features of --features {features_ckpt}")
    f = ref.features
    return RealFeatures({"3d": f.feat3d_ND, "2d": f.feat2d_MD}, {"3d": ref.stats3d, "2d": ref.stats2d},
                        f.views_per_clip), dict(ref.meta)


def _grid_of(d: dict):
    from dcgen.data.grid import Grid

    return Grid.from_dict(d)


def feature_function(features_ckpt: str, device: str = "auto", use_2d: bool = False
                     ) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``occ [B, T, X, Y, Z] -> {"3d": [B, D3], "2d": [B V, D2]}`` with dcgen's metric feature networks
    (``dcgen.metrics.extract``); without ``use_2d`` only the voxel network runs (no renders)."""
    import torch

    from dcgen.metrics.extract import extract_features
    from dcgen.metrics.feature_nets import load_feature_nets
    from dcgen.runtime import pick_device

    nets = load_feature_nets(features_ckpt, pick_device(device)).nets

    @torch.no_grad()
    def features(occ_BTXYZ: np.ndarray) -> dict[str, np.ndarray]:
        if use_2d:
            f = extract_features(nets, occ_BTXYZ)
            return {"3d": f.feat3d_ND, "2d": f.feat2d_MD}
        occ = nets.check_clips(occ_BTXYZ, "generated clips")
        f3, _, _ = nets.voxel(torch.from_numpy(np.ascontiguousarray(occ)).to(next(nets.parameters()).device))
        return {"3d": f3.float().cpu().numpy()}

    return features


# ---- calibration ---------------------------------------------------------------------------------------------

def batch_values(summary: dict[str, np.ndarray] | None, features: dict[str, np.ndarray],
                 reference: GateReference, checks: tuple[str, ...], seed: int) -> dict[str, float]:
    """The value of every check for one batch, from the batch's clip summaries and features."""
    out: dict[str, float] = {}
    if summary is not None:
        if "min_occupied" in checks:
            out["min_occupied"] = float(summary["occupied_N"].min())
        if "class_distance" in checks:
            out["class_distance"] = js_divergence(summary["class_counts_NK"][:, 1:].sum(0), reference.class_mix_K[1:])
        if "flicker" in checks:
            out["flicker"] = float(summary["flicker_N"].mean())
    for space in ("3d", "2d"):
        if f"fid_{space}" in checks:
            out[f"fid_{space}"] = batch_fid(reference.features.stats[space], features[space])
        if f"kid_{space}" in checks:
            out[f"kid_{space}"] = batch_kid(reference.features.features[space], features[space], seed)
    return out


def calibrate(config: GateConfig, clips: RealClips | None, feats: RealFeatures | None, batch_size: int,
              seed: int) -> dict:
    """Thresholds for batches of ``batch_size`` (explicit ones kept) and the real-vs-real quantiles behind them."""
    checks = config.checks
    real: dict[str, list[float]] = {c: [] for c in checks}
    g = np.random.default_rng(seed)
    cheap = tuple(c for c in checks if c in CHEAP_CHECKS)
    if cheap:
        n = clips.num_clips
        if n < 2 * batch_size:
            raise ValueError(f"--reference-data holds {n} clips; calibrating gates for batches of {batch_size} needs "
                             f"at least {2 * batch_size} (two disjoint halves of at least a batch each)")
        half_a, half_b = np.arange(0, n, 2), np.arange(1, n, 2)
        ref_a = GateReference(clips.take(half_a).class_counts_NK.sum(0), None)
        for _ in range(config.draws):
            rows = g.choice(half_b, batch_size, replace=False)
            for c, v in batch_values(clips.take(rows).summary(), {}, ref_a, cheap, 0).items():
                real[c].append(v)
    deep = tuple(c for c in checks if c in FEATURE_CHECKS)
    if deep:
        n = feats.num_clips
        if n < 2 * batch_size + 2:
            raise ValueError(f"--reference holds features of {n} clips; calibrating gates for batches of "
                             f"{batch_size} needs at least {2 * batch_size + 2}")
        ref_a = GateReference(None, feats.take(np.arange(0, n, 2)))
        half_b = np.arange(1, n, 2)
        for d in range(max(10, config.draws // 4)):  # KID subsets make these draws the costly ones
            rows = g.choice(half_b, batch_size, replace=False)
            batch = {s: feats.rows(s, rows) for s in feats.features}
            for c, v in batch_values(None, batch, ref_a, deep, seed + d).items():
                real[c].append(v)
    thresholds, quantiles = {}, {}
    for c in checks:
        values = np.asarray(real[c])
        lower = c in LOWER_BOUNDS
        q = float(np.quantile(values, 1.0 - config.quantile if lower else config.quantile))
        quantiles[c] = q
        thresholds[c] = float(config.thresholds[c]) if c in config.thresholds else (
            q / config.slack if lower else q * config.slack)
    return {"thresholds": thresholds, "real_quantiles": quantiles, "batch_size": int(batch_size),
            "explicit": sorted(config.thresholds), "slack": config.slack, "quantile": config.quantile}


# ---- the gate ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GateResult:
    passed: bool
    values: dict  # check -> batch value
    failed: tuple[str, ...]
    occupied_B: np.ndarray  # per scene
    flicker_B: np.ndarray  # per scene
    seconds: float

    def record(self, thresholds: dict, attempt: int) -> dict:
        """The JSON-able gate numbers of this batch (into every manifest row of the block)."""
        return {"attempt": int(attempt), "passed": bool(self.passed), "failed": list(self.failed),
                "values": {k: float(v) for k, v in self.values.items()},
                "thresholds": {k: float(v) for k, v in thresholds.items()}}


class Gate:
    """Evaluates batches against thresholds (no thresholds: every batch passes; per-scene numbers still come back).
    ``features`` is ``feature_function(...)``, needed only for FID/KID checks."""

    def __init__(self, thresholds: dict, reference: GateReference, num_classes: int,
                 features: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None):
        self.thresholds = dict(thresholds)
        self.reference = reference
        self.num_classes = int(num_classes)
        self.features = features
        unknown = sorted(set(self.thresholds) - set(CHECKS))
        if unknown:
            raise ValueError(f"unknown gate check(s) {unknown}; expected some of {', '.join(CHECKS)}")
        if any(c in FEATURE_CHECKS for c in self.thresholds) and (features is None or reference.features is None):
            raise ValueError("FID/KID gates need the feature network and reference features")
        if any(c == "class_distance" for c in self.thresholds) and reference.class_mix_K is None:
            raise ValueError("the class_distance gate needs the reference class mix")

    @property
    def uses_features(self) -> bool:
        return any(c in FEATURE_CHECKS for c in self.thresholds)

    def __call__(self, occ_BTXYZ: np.ndarray, seed: int) -> GateResult:
        t0 = time.perf_counter()
        checks = tuple(self.thresholds)
        summary = clip_summaries(occ_BTXYZ, self.num_classes)
        feats = self.features(occ_BTXYZ) if self.uses_features else {}
        values = batch_values(summary, feats, self.reference, checks, seed)
        failed = tuple(c for c in checks if (values[c] < self.thresholds[c] if c in LOWER_BOUNDS
                                             else values[c] > self.thresholds[c]))
        return GateResult(not failed, values, failed, summary["occupied_N"], summary["flicker_N"],
                          time.perf_counter() - t0)
