"""All generation metrics of SPEC §4 on one pair of feature sets: IS (from the generated samples' class
probabilities), FID, KID, k-NN precision/recall and the Gaussian precision/recall, in the units of the paper's
Table 2. Each covariance is computed once and eigendecomposed once, shared by FID and the Gaussian precision/recall;
the real set's statistics can be passed in precomputed (``FeatureStats.load``), but must describe the very
``real_features`` given, since the Gaussian precision/recall measures those samples against them.

A generated set whose features are all one vector (up to rounding: a collapsed sampler) is a finding, not an error:
every metric still has a value (the Gaussian recall its limit, see ``gaussian_precision_recall``) and ``collapsed``
says so. A collapsed real set raises: there is nothing to compare with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from dcgen.metrics.feature_stats import FeatureStats, check_features, check_same_dim
from dcgen.metrics.fid import frechet_distance
from dcgen.metrics.gaussian_precision_recall import (DEFAULT_QUANTILE, DEFAULT_RIDGE, GaussianFit,
                                                     gaussian_precision_recall)
from dcgen.metrics.gaussian_precision_recall import MIN_SAMPLES as GAUSSIAN_MIN_SAMPLES
from dcgen.metrics.inception_score import inception_score
from dcgen.metrics.kid import kernel_inception_distance
from dcgen.metrics.precision_recall import DEFAULT_BATCH, DEFAULT_K, knn_precision_recall


@dataclass(frozen=True)
class GenerationMetricsConfig:
    """Knobs of the five metrics; defaults follow the original papers (IS 10 splits, KID 100 × 1000, k = 3)."""

    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = DEFAULT_K
    gaussian_quantile: float = DEFAULT_QUANTILE
    gaussian_ridge: float = DEFAULT_RIDGE
    batch_size: int = DEFAULT_BATCH
    seed: int = 0


@dataclass(frozen=True)
class GenerationMetrics:
    fid: float
    kid_mean: float
    kid_std: float
    precision: float
    recall: float
    gaussian_precision: float
    gaussian_recall: float
    is_mean: float | None = None  # None when no class probabilities were given
    is_std: float | None = None
    collapsed: bool = False  # every generated feature vector is the same up to rounding (FeatureStats.collapsed)

    def to_dict(self) -> dict:
        return asdict(self)


def generation_metrics(real_features, fake_features, fake_probs=None,
                       config: GenerationMetricsConfig = GenerationMetricsConfig(),
                       real_stats: FeatureStats | None = None) -> GenerationMetrics:
    """Every SPEC §4 metric of generated ``[M, D]`` features against real ``[N, D]`` features.

    ``fake_probs`` ``[M, K]`` are the feature network's class probabilities for the generated samples (IS).
    KID uses subsets of ``min(kid_subset_size, N, M)`` samples so small evaluations still run.
    """
    need = max(config.pr_k + 1, GAUSSIAN_MIN_SAMPLES)
    why = "the k-NN and Gaussian precision/recall"
    real_ND = check_features(real_features, "real features", need, why)
    fake_MD = check_features(fake_features, "generated features", need, why)
    check_same_dim(real_ND.shape[1], fake_MD.shape[1], "real features", "generated features")
    if real_stats is None:
        real_stats = FeatureStats.from_features(real_ND, "real features")
    fake_stats = FeatureStats.from_features(fake_MD, "generated features")
    check_same_dim(real_stats.dim, fake_stats.dim, "real statistics", "generated features")

    # One eigendecomposition per covariance serves both FID (S_real^½) and the Gaussian precision/recall; a
    # collapsed generated set has no Gaussian to fit (gaussian_precision_recall takes its limit instead).
    real_fit = GaussianFit.from_stats(real_stats, config.gaussian_ridge, "real features")
    collapsed = fake_stats.collapsed
    fake_fit = None if collapsed else GaussianFit.from_stats(fake_stats, config.gaussian_ridge, "generated features")
    fid = frechet_distance(real_stats, fake_stats, (real_fit.evals_D, real_fit.evecs_DD))
    subset = min(config.kid_subset_size, real_ND.shape[0], fake_MD.shape[0])
    kid_mean, kid_std = kernel_inception_distance(real_ND, fake_MD, config.kid_subsets, subset, config.seed)
    precision, recall = knn_precision_recall(real_ND, fake_MD, config.pr_k, config.batch_size)
    g_precision, g_recall = gaussian_precision_recall(real_ND, fake_MD, config.gaussian_quantile,
                                                      config.gaussian_ridge, real_fit, fake_fit)
    is_mean = is_std = None
    if fake_probs is not None:
        probs = check_features(fake_probs, "generated class probabilities")
        if probs.shape[0] != fake_MD.shape[0]:
            raise ValueError(f"generated class probabilities cover {probs.shape[0]} samples but there are "
                             f"{fake_MD.shape[0]} generated feature rows; expected one row per sample")
        is_mean, is_std = inception_score(probs, min(config.is_splits, probs.shape[0]))
    return GenerationMetrics(fid, kid_mean, kid_std, precision, recall, g_precision, g_recall, is_mean, is_std,
                             collapsed)
