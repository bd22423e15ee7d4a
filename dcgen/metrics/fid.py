"""Fréchet distance between Gaussians fitted to two feature sets (FID, SPEC §4; Heusel et al. 2017):

    FID = ||mu_a - mu_b||² + Tr(S_a + S_b - 2 (S_a S_b)^½).

Tr((S_a S_b)^½) is the sum of square roots of the eigenvalues of S_a S_b. That product is not symmetric, so it is
evaluated through the similar matrix S_a^½ S_b S_a^½, which is symmetric positive semi-definite: two symmetric
eigendecompositions in float64, no complex intermediate values. Eigenvalues that rounding pushes below zero are
clamped to zero, and so is a final value of order -1e-12 for identical inputs. The estimate is meaningful only
with more samples than features.
"""

from __future__ import annotations

import numpy as np

from dcgen.metrics.feature_stats import FeatureStats, check_same_dim


def psd_sqrt(mat_DD: np.ndarray, eig: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative rounding eigenvalues -> 0).

    ``eig`` may pass ``(eigenvalues, eigenvectors)`` of ``mat_DD`` already computed elsewhere.
    """
    evals_D, evecs_DD = np.linalg.eigh(mat_DD) if eig is None else eig
    return (evecs_DD * np.sqrt(np.clip(evals_D, 0.0, None))) @ evecs_DD.T


def trace_sqrt_product(cov_a_DD: np.ndarray, cov_b_DD: np.ndarray,
                       eig_a: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Tr((S_a S_b)^½) via the eigenvalues of the symmetric S_a^½ S_b S_a^½."""
    sqrt_a_DD = psd_sqrt(cov_a_DD, eig_a)
    middle_DD = sqrt_a_DD @ cov_b_DD @ sqrt_a_DD
    evals_D = np.linalg.eigvalsh((middle_DD + middle_DD.T) * 0.5)
    return float(np.sqrt(np.clip(evals_D, 0.0, None)).sum())


def frechet_distance(stats_a: FeatureStats, stats_b: FeatureStats,
                     eig_a: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """FID between two sets of feature statistics (float64 throughout); ``eig_a`` as in ``psd_sqrt``."""
    check_same_dim(stats_a.dim, stats_b.dim, "the first feature statistics", "the second")
    diff_D = stats_a.mean_D - stats_b.mean_D
    tr_cross = trace_sqrt_product(stats_a.cov_DD, stats_b.cov_DD, eig_a)
    fid = float(diff_D @ diff_D) + float(np.trace(stats_a.cov_DD) + np.trace(stats_b.cov_DD)) - 2.0 * tr_cross
    return max(fid, 0.0)


def fid_from_features(real_features, fake_features) -> float:
    """FID between the Gaussians of two ``[N, D]`` feature arrays."""
    stats_real = FeatureStats.from_features(real_features, "real features")
    stats_fake = FeatureStats.from_features(fake_features, "generated features")
    check_same_dim(stats_real.dim, stats_fake.dim, "real features", "generated features")
    return frechet_distance(stats_real, stats_fake)
