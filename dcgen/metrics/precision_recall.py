"""Improved precision and recall by k-NN manifold estimates (SPEC §4; Kynkäänniemi et al. 2019, k = 3).

Each set's manifold is the union of balls around its samples, each ball's radius the distance to that sample's
k-th nearest neighbour in the same set (itself excluded). Precision is the fraction of generated samples inside
the real manifold; recall the fraction of real samples inside the generated manifold. A point on a ball's boundary
counts as inside.

Distances are squared Euclidean, ``|a|² + |b|² - 2 a·b`` (radii clipped at 0), computed block by block against
the whole other set (``batch_size`` rows at a time: a 10,000-sample set needs a 1024 × 10,000 block, 40 MB in
float32), in the input precision (float32 features: float32 matmuls). Precision and recall share one pass over
the cross distances. That expansion has an absolute error of order eps·(|a|² + |b|²): features far from the origin
would drown their distances in it. Distances do not depend on where the origin is, so both sets are first centred
on the mean of their union (subtracted in float64, rounded once to the input precision): the norms are then those
of the spread, and shifting every feature changes nothing.
"""

from __future__ import annotations

import numpy as np

from dcgen.metrics.feature_stats import centred, check_features, check_same_dim, common_centre

DEFAULT_K = 3
DEFAULT_BATCH = 1024


def _sq_dists(a_MD: np.ndarray, b_ND: np.ndarray, a_sq_M: np.ndarray, b_sq_N: np.ndarray) -> np.ndarray:
    """``[M, N]`` squared distances ``|a|² + |b|² - 2 a·b``; rounding may leave tiny negatives (compared as is)."""
    d_MN = (-2.0 * a_MD) @ b_ND.T  # scaling the [M, D] block is cheaper than scaling the [M, N] result
    d_MN += a_sq_M[:, None]
    d_MN += b_sq_N[None, :]
    return d_MN


def knn_radii_sq(feats_ND: np.ndarray, k: int = DEFAULT_K, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """``[N]`` squared distance from each sample to its k-th nearest other sample of the same set (pass features
    centred near their mean: see the module docstring)."""
    sq_N = np.einsum("nd,nd->n", feats_ND, feats_ND)
    radii_N = np.empty(feats_ND.shape[0], dtype=feats_ND.dtype)
    for start in range(0, feats_ND.shape[0], batch_size):
        stop = min(start + batch_size, feats_ND.shape[0])
        d_BN = _sq_dists(feats_ND[start:stop], feats_ND, sq_N[start:stop], sq_N)
        d_BN[np.arange(stop - start), np.arange(start, stop)] = 0.0  # self, exactly; index k skips it
        radii_N[start:stop] = np.partition(d_BN, k, axis=1)[:, k]
    return np.maximum(radii_N, 0.0, out=radii_N)


def knn_precision_recall(real_features, fake_features, k: int = DEFAULT_K,
                         batch_size: int = DEFAULT_BATCH) -> tuple[float, float]:
    """``(precision, recall)`` of generated vs real features under the k-NN manifold estimate."""
    if int(k) != k or k < 1:
        raise ValueError(f"k for the k-NN manifold must be a positive integer, got {k}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    k, batch_size = int(k), int(batch_size)
    why = f"a {k}-nearest-neighbour radius (k + 1)"
    real_ND = check_features(real_features, "real features", k + 1, why)
    fake_ND = check_features(fake_features, "generated features", k + 1, why)
    check_same_dim(real_ND.shape[1], fake_ND.shape[1], "real features", "generated features")
    dtype = np.result_type(real_ND.dtype, fake_ND.dtype)
    real_ND, fake_ND = real_ND.astype(dtype, copy=False), fake_ND.astype(dtype, copy=False)
    centre_D = common_centre(real_ND, fake_ND)
    real_ND, fake_ND = centred(real_ND, centre_D), centred(fake_ND, centre_D)

    real_radii_N = knn_radii_sq(real_ND, k, batch_size)
    fake_radii_M = knn_radii_sq(fake_ND, k, batch_size)
    real_sq_N = np.einsum("nd,nd->n", real_ND, real_ND)
    fake_sq_M = np.einsum("nd,nd->n", fake_ND, fake_ND)
    fake_inside_M = np.zeros(fake_ND.shape[0], dtype=bool)
    real_inside_N = np.zeros(real_ND.shape[0], dtype=bool)
    for start in range(0, fake_ND.shape[0], batch_size):
        stop = min(start + batch_size, fake_ND.shape[0])
        d_BN = _sq_dists(fake_ND[start:stop], real_ND, fake_sq_M[start:stop], real_sq_N)
        fake_inside_M[start:stop] = (d_BN <= real_radii_N[None, :]).any(axis=1)
        real_inside_N |= (d_BN <= fake_radii_M[start:stop, None]).any(axis=0)
    return float(fake_inside_M.mean()), float(real_inside_N.mean())
