"""Kernel Inception Distance (KID, SPEC §4; Bińkowski et al. 2018): the unbiased estimate of the squared maximum
mean discrepancy between two feature sets under the cubic polynomial kernel k(x, y) = (x·y / d + 1)³,

    MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m-1)) + Σ_{i≠j} k(y_i, y_j) / (m(m-1)) - 2 Σ_{i,j} k(x_i, y_j) / m²,

averaged over ``num_subsets`` random subsets of ``subset_size`` samples from each set (drawn without replacement,
independently per subset) and reported as mean and standard deviation (ddof 0) over the subsets.

Subset s draws ``rng.choice(n_real, m, replace=False)`` then ``rng.choice(n_fake, m, replace=False)`` from
``np.random.default_rng(seed)``, so the value is a pure function of the inputs and the seed. Kernel matrices are
computed in the input precision (float32 features: float32 matmuls, the speed that 10,000 × 2048 needs) and summed
in float64.
"""

from __future__ import annotations

import numpy as np

from dcgen.metrics.feature_stats import check_features, check_same_dim

MIN_SUBSET = 2


def polynomial_kernel(a_MD: np.ndarray, b_ND: np.ndarray) -> np.ndarray:
    """``[M, N]`` matrix of (a·b / d + 1)³."""
    k_MN = a_MD @ b_ND.T
    k_MN /= a_MD.shape[1]
    k_MN += 1.0
    return k_MN * k_MN * k_MN


def mmd2_unbiased(x_MD: np.ndarray, y_MD: np.ndarray) -> float:
    """Unbiased MMD² between two equally sized samples under the cubic polynomial kernel."""
    m = x_MD.shape[0]
    k_xx = polynomial_kernel(x_MD, x_MD)
    k_yy = polynomial_kernel(y_MD, y_MD)
    k_xy = polynomial_kernel(x_MD, y_MD)
    off_xx = k_xx.sum(dtype=np.float64) - np.trace(k_xx, dtype=np.float64)
    off_yy = k_yy.sum(dtype=np.float64) - np.trace(k_yy, dtype=np.float64)
    return float((off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.sum(dtype=np.float64) / (m * m))


def kernel_inception_distance(real_features, fake_features, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """``(mean, std)`` of unbiased MMD² over ``num_subsets`` random subsets of ``subset_size`` per set."""
    if int(num_subsets) != num_subsets or num_subsets < 1:
        raise ValueError(f"KID num_subsets must be a positive integer, got {num_subsets}")
    if int(subset_size) != subset_size or subset_size < MIN_SUBSET:
        raise ValueError(f"KID subset_size must be an integer >= {MIN_SUBSET}, got {subset_size}")
    why = f"KID subsets of {subset_size} samples"
    real_ND = check_features(real_features, "real features", subset_size, why)
    fake_ND = check_features(fake_features, "generated features", subset_size, why)
    check_same_dim(real_ND.shape[1], fake_ND.shape[1], "real features", "generated features")
    dtype = np.result_type(real_ND.dtype, fake_ND.dtype)
    real_ND, fake_ND = real_ND.astype(dtype, copy=False), fake_ND.astype(dtype, copy=False)
    rng = np.random.default_rng(seed)
    mmds = np.empty(int(num_subsets))
    for s in range(int(num_subsets)):
        real_idx = rng.choice(real_ND.shape[0], int(subset_size), replace=False)
        fake_idx = rng.choice(fake_ND.shape[0], int(subset_size), replace=False)
        mmds[s] = mmd2_unbiased(real_ND[real_idx], fake_ND[fake_idx])
    return float(mmds.mean()), float(mmds.std())
