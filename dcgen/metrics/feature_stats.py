"""Feature arrays and their Gaussian statistics, the common input of the generation metrics (SPEC §4).

A feature array is ``[N, D]``: one row per sample (a rendered view or a voxel clip), one column per feature of
dcgen's 2D or 3D feature network. ``check_features`` is the single gate every metric passes its inputs through
(shape, finiteness, enough samples); ``FeatureStats`` holds the mean and unbiased covariance in float64, computed
in two passes (mean first, then centred row blocks) so large offsets cost no precision, and is saved as ``.npz`` so
the real split's statistics are computed once and reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_SAMPLES_COVARIANCE = 2
ROW_BLOCK = 4096  # rows converted to float64 at a time when accumulating a covariance
# A set whose spread (root mean variance) is at most this fraction of its root mean square value is *collapsed*:
# its rows are one vector up to rounding. Identical clips can come out of a float32 network a few ulps apart (a
# batch of another size runs other GEMM kernels: copies of one clip in batches of 1, 2, 5 and 16 differed by up to
# 2e-7 of their magnitude on an AVX-512 CPU), so exact equality cannot be the test; genuinely different samples
# differ far more than 1e-5 of their magnitude.
COLLAPSE_RTOL = 1e-5


def check_features(features, what: str, min_samples: int = 1, purpose: str = "") -> np.ndarray:
    """``features`` as a finite ``[N, D]`` float32/float64 array with at least ``min_samples`` rows.

    float32 and float64 are kept as they are (the pairwise metrics compute in that precision); other numeric
    dtypes become float64. ``what`` names the array in errors, ``purpose`` says why ``min_samples`` are needed.
    """
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a [num_samples, dim] feature array, got shape {list(arr.shape)}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{what}: expected numeric features, got dtype {arr.dtype}")
    if arr.shape[1] < 1:
        raise ValueError(f"{what}: expected at least 1 feature per sample, got shape {list(arr.shape)}")
    if arr.shape[0] < min_samples:
        why = f" for {purpose}" if purpose else ""
        raise ValueError(f"{what}: {arr.shape[0]} samples given; at least {min_samples} are needed{why}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    finite_N = np.isfinite(arr).all(axis=1)
    if not finite_N.all():
        bad = np.nonzero(~finite_N)[0]
        raise ValueError(f"{what}: {len(bad)} samples hold NaN or inf features (first rows: {bad[:5].tolist()}); "
                         "expected finite values")
    return arr


def check_same_dim(dim_a: int, dim_b: int, what_a: str, what_b: str) -> None:
    """Raise unless two feature sets have the same number of features per sample."""
    if dim_a != dim_b:
        raise ValueError(f"{what_a} have {dim_a} features per sample but {what_b} have {dim_b}; "
                         "expected features from the same network")


def mean_and_covariance(features_ND: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean ``[D]`` and unbiased covariance ``[D, D]`` (divided by N - 1) of validated features."""
    n, d = features_ND.shape
    mean_D = features_ND.mean(axis=0, dtype=np.float64)
    cov_DD = np.zeros((d, d), dtype=np.float64)
    for start in range(0, n, ROW_BLOCK):
        centred = features_ND[start:start + ROW_BLOCK].astype(np.float64) - mean_D
        cov_DD += centred.T @ centred
    cov_DD /= n - 1
    return mean_D, (cov_DD + cov_DD.T) * 0.5


def common_centre(a_ND: np.ndarray, b_MD: np.ndarray) -> np.ndarray:
    """``[D]`` float64 mean of the union of two feature sets."""
    total_D = a_ND.sum(axis=0, dtype=np.float64) + b_MD.sum(axis=0, dtype=np.float64)
    return total_D / (a_ND.shape[0] + b_MD.shape[0])


def centred(features_ND: np.ndarray, centre_D: np.ndarray) -> np.ndarray:
    """``features - centre`` in the features' own precision: subtracted in float64, rounded once, so the rows lose
    nothing beyond their own last bit while their norms shrink to those of the spread (the pairwise metrics' float32
    products then keep their digits)."""
    out_ND = np.empty_like(features_ND)
    for start in range(0, features_ND.shape[0], ROW_BLOCK):
        out_ND[start:start + ROW_BLOCK] = features_ND[start:start + ROW_BLOCK].astype(np.float64) - centre_D
    return out_ND


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of one feature set, with the sample count they came from."""

    mean_D: np.ndarray
    cov_DD: np.ndarray
    num_samples: int

    def __post_init__(self) -> None:
        d = self.mean_D.shape[0] if self.mean_D.ndim == 1 else -1
        if d < 1 or self.cov_DD.shape != (d, d):
            raise ValueError(f"feature statistics need a mean [D] and covariance [D, D]; got mean "
                             f"{list(self.mean_D.shape)} and covariance {list(self.cov_DD.shape)}")
        if self.num_samples < MIN_SAMPLES_COVARIANCE:
            raise ValueError(f"feature statistics from {self.num_samples} samples; at least "
                             f"{MIN_SAMPLES_COVARIANCE} are needed for a covariance")
        if not (np.isfinite(self.mean_D).all() and np.isfinite(self.cov_DD).all()):
            raise ValueError("feature statistics hold NaN or inf; expected finite mean and covariance")

    @property
    def dim(self) -> int:
        return self.mean_D.shape[0]

    @property
    def spread(self) -> float:
        """Mean variance per feature, tr(S) / D."""
        return float(np.trace(self.cov_DD)) / self.dim

    @property
    def collapsed(self) -> bool:
        """True when every sample is the same vector up to rounding (see ``COLLAPSE_RTOL``)."""
        n = self.num_samples
        mean_square = float(self.mean_D @ self.mean_D) / self.dim + self.spread * (n - 1) / n
        return self.spread <= COLLAPSE_RTOL ** 2 * mean_square

    @classmethod
    def from_features(cls, features, what: str = "features") -> "FeatureStats":
        feats_ND = check_features(features, what, MIN_SAMPLES_COVARIANCE, "a covariance")
        mean_D, cov_DD = mean_and_covariance(feats_ND)
        return cls(mean_D, cov_DD, feats_ND.shape[0])

    def save(self, path: str | Path) -> Path:
        """Write ``mean``, ``cov`` and ``num_samples`` to an ``.npz`` file (the suffix is added if missing)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, mean=self.mean_D, cov=self.cov_DD, num_samples=np.int64(self.num_samples))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"feature statistics file {str(path)!r} does not exist")
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in ("mean", "cov", "num_samples") if k not in data.files]
            if missing:
                raise ValueError(f"{str(path)!r} is not a feature statistics file: missing {missing}; expected "
                                 "arrays mean, cov and num_samples")
            return cls(data["mean"].astype(np.float64), data["cov"].astype(np.float64), int(data["num_samples"]))
