"""Precision and recall under Gaussian fits (the "Gaussian variant" SPEC §4 reports beside the k-NN estimate).

Formulation used by dcgen (the paper does not spell its own out): fit N(mu_r, S_r) to the real features. A sample
is *inside* the real distribution when its squared Mahalanobis distance under that Gaussian is at most tau_r, the
``quantile`` (default 0.95) of the real samples' own squared distances. Precision is the fraction of generated
samples inside the real distribution; recall, symmetrically, the fraction of real samples inside the Gaussian
fitted to the generated features, with the generated samples' quantile. Identical distributions score about
``quantile`` on both; a shifted or over-dispersed generator loses precision, a collapsed one loses recall.

Two details keep the threshold honest in high dimension, where a Gaussian fitted to N samples fits those same
samples much better than new ones (in-sample squared distances average about D, fresh ones about D·N/(N-D)):
- tau comes from *leave-one-out* distances, each real sample measured against the Gaussian fitted without it,
  in closed form by Sherman-Morrison: with u = x_i - mean, scatter A = (N-1) S + (N-2) lam I and
  b = uᵀ A⁻¹ u, c = N/(N-1), the distance is (N-2) c² b / (1 - c b);
- a ridge lam = ``ridge`` · tr(S)/D is added to the covariance (fixed from the full set) so rank-deficient
  features (dead units, N < D) give large, finite distances instead of a singular matrix.
Everything is float64, through one symmetric eigendecomposition of S per set.

A *collapsed* generated set (every sample the same vector up to rounding, ``FeatureStats.collapsed``: a sampler
that returns one scene whatever the seed) has no Gaussian to fit. Its precision is still defined (is that one point
inside the real distribution?); its recall is taken as the limit of a Gaussian shrunk onto the point: the fraction
of real samples *at* the point, within the same rounding tolerance, which is 0 unless the generator reproduces a
real sample. Callers report the collapse beside the numbers (``GenerationMetrics.collapsed``). A collapsed *real*
set is an error: there is no reference distribution to compare with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcgen.metrics.feature_stats import (COLLAPSE_RTOL, ROW_BLOCK, FeatureStats, check_features, check_same_dim,
                                         mean_and_covariance)

DEFAULT_QUANTILE = 0.95
DEFAULT_RIDGE = 1e-6
MIN_SAMPLES = 3  # leave-one-out needs a covariance of N - 1 >= 2 samples


@dataclass(frozen=True)
class GaussianFit:
    """A set's mean, eigendecomposition of its unbiased covariance, ridge and sample count."""

    mean_D: np.ndarray
    evals_D: np.ndarray  # eigenvalues of the covariance, clamped at 0
    evecs_DD: np.ndarray
    ridge: float  # lam, absolute, added to every eigenvalue
    num_samples: int

    @classmethod
    def from_stats(cls, stats: FeatureStats, ridge: float = DEFAULT_RIDGE, what: str = "features") -> "GaussianFit":
        """The fit of a set with some spread; ``what`` names the set in errors."""
        if stats.num_samples < MIN_SAMPLES:
            raise ValueError(f"a Gaussian precision/recall fit needs at least {MIN_SAMPLES} samples (leave-one-out "
                             f"covariance of N - 1 >= 2), got {stats.num_samples}")
        if stats.collapsed:
            raise ValueError(f"{what}: all {stats.num_samples} feature vectors are identical (up to rounding: "
                             f"spread at most {COLLAPSE_RTOL:g} of their magnitude); a Gaussian fit needs samples "
                             "that differ (are the clips all the same, or does the feature network map every clip to "
                             "one vector?)")
        evals_D, evecs_DD = np.linalg.eigh(stats.cov_DD)
        return cls(stats.mean_D, np.clip(evals_D, 0.0, None), evecs_DD, ridge * stats.spread, stats.num_samples)

    def _projected_sq(self, feats_ND: np.ndarray) -> np.ndarray:
        """``[N, D]`` squared coordinates of the centred samples along the covariance's eigenvectors."""
        out_ND = np.empty((feats_ND.shape[0], self.mean_D.shape[0]))
        for start in range(0, feats_ND.shape[0], ROW_BLOCK):
            block = feats_ND[start:start + ROW_BLOCK].astype(np.float64) - self.mean_D
            z = block @ self.evecs_DD
            out_ND[start:start + ROW_BLOCK] = z * z
        return out_ND

    def mahalanobis_sq(self, feats_ND: np.ndarray) -> np.ndarray:
        """``[N]`` squared Mahalanobis distances of new samples under N(mean, S + lam I)."""
        return self._projected_sq(feats_ND) @ (1.0 / (self.evals_D + self.ridge))

    def loo_mahalanobis_sq(self, feats_ND: np.ndarray) -> np.ndarray:
        """``[N]`` leave-one-out squared distances of the samples the fit was made from (same order)."""
        n = self.num_samples
        if feats_ND.shape[0] != n:
            raise ValueError(f"leave-one-out distances need the {n} samples of the fit, got {feats_ND.shape[0]}")
        scatter_D = self.evals_D * (n - 1) + (n - 2) * self.ridge
        b_N = self._projected_sq(feats_ND) @ (1.0 / scatter_D)
        c = n / (n - 1)
        return (n - 2) * c * c * b_N / (1.0 - c * b_N)


def _inside_fraction(fit: GaussianFit, own_ND: np.ndarray, other_ND: np.ndarray, quantile: float) -> float:
    """Fraction of ``other`` within the ``quantile`` of ``own``'s leave-one-out distances under ``fit``."""
    tau = np.quantile(fit.loo_mahalanobis_sq(own_ND), quantile)
    return float((fit.mahalanobis_sq(other_ND) <= tau).mean())


def fraction_at_point(point_D: np.ndarray, feats_ND: np.ndarray) -> float:
    """Fraction of samples equal to ``point`` up to rounding: mean squared difference per feature at most
    ``COLLAPSE_RTOL``² of the point's mean square (the tolerance that calls a set collapsed)."""
    tol = COLLAPSE_RTOL ** 2 * float(point_D @ point_D)
    inside = [((feats_ND[a:a + ROW_BLOCK].astype(np.float64) - point_D) ** 2).sum(axis=1) <= tol
              for a in range(0, feats_ND.shape[0], ROW_BLOCK)]
    return float(np.concatenate(inside).mean())


def gaussian_precision_recall(real_features, fake_features, quantile: float = DEFAULT_QUANTILE,
                              ridge: float = DEFAULT_RIDGE, real_fit: GaussianFit | None = None,
                              fake_fit: GaussianFit | None = None) -> tuple[float, float]:
    """``(precision, recall)`` of generated vs real features under Gaussian fits (see the module docstring; a
    collapsed generated set gets the limit recall, a collapsed real set raises).

    ``real_fit`` / ``fake_fit`` may pass fits already made from the same arrays (saves a covariance and an
    eigendecomposition each); ``ridge`` is then theirs.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if not ridge > 0.0:
        raise ValueError(f"ridge must be positive (a fraction of the mean variance), got {ridge}")
    why = "a leave-one-out Gaussian fit"
    real_ND = check_features(real_features, "real features", MIN_SAMPLES, why)
    fake_ND = check_features(fake_features, "generated features", MIN_SAMPLES, why)
    check_same_dim(real_ND.shape[1], fake_ND.shape[1], "real features", "generated features")
    real_fit = _fit_of(real_ND, real_fit, ridge, "real")
    precision = _inside_fraction(real_fit, real_ND, fake_ND, quantile)
    if fake_fit is None:
        fake_stats = FeatureStats(*mean_and_covariance(fake_ND), fake_ND.shape[0])
        if fake_stats.collapsed:
            return precision, fraction_at_point(fake_stats.mean_D, real_ND)
        fake_fit = GaussianFit.from_stats(fake_stats, ridge, "generated features")
    fake_fit = _fit_of(fake_ND, fake_fit, ridge, "generated")
    return precision, _inside_fraction(fake_fit, fake_ND, real_ND, quantile)


def _fit_of(feats_ND: np.ndarray, fit: GaussianFit | None, ridge: float, what: str) -> GaussianFit:
    """``fit`` checked against the set it must describe, or a new fit of that set."""
    if fit is None:
        return GaussianFit.from_stats(FeatureStats(*mean_and_covariance(feats_ND), feats_ND.shape[0]), ridge,
                                      f"{what} features")
    if fit.num_samples != feats_ND.shape[0] or fit.mean_D.shape[0] != feats_ND.shape[1]:
        raise ValueError(f"the {what} Gaussian fit describes {fit.num_samples} × {fit.mean_D.shape[0]} "
                         f"features but the {what} features are {feats_ND.shape[0]} × {feats_ND.shape[1]}; "
                         "expected a fit of the same set")
    return fit
