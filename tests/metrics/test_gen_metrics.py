"""Generation metrics (SPEC §4) against straightforward independent implementations, their behaviour under
corrupted features, and their error paths."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dcgen.metrics.feature_stats import FeatureStats, check_features
from dcgen.metrics.fid import fid_from_features, frechet_distance
from dcgen.metrics.gaussian_precision_recall import gaussian_precision_recall
from dcgen.metrics.generation import GenerationMetricsConfig, generation_metrics
from dcgen.metrics.inception_score import inception_score
from dcgen.metrics.kid import kernel_inception_distance, mmd2_unbiased
from dcgen.metrics.precision_recall import knn_precision_recall

REL = 1e-6


def gaussian_features(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(1000).standard_normal((d, d)) / np.sqrt(d) + np.eye(d)  # shared correlation
    return (rng.standard_normal((n, d)) * scale + shift) @ mix


# ---- FID ---------------------------------------------------------------------------------------------------------

def fid_reference_eigvals(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(cov_a @ cov_b)  # non-symmetric product, general eigen solver
    tr_sqrt = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


def fid_reference_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eig(cov_a @ cov_b)
    sqrtm = (v * np.sqrt(w.astype(complex))) @ np.linalg.inv(v)  # sqrtm by eigendecomposition
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * sqrtm.real))


def test_fid_matches_eigen_references():
    a = gaussian_features(300, 12, 0)
    b = gaussian_features(250, 12, 1, shift=0.3, scale=1.2)
    fid = fid_from_features(a, b)
    assert fid == pytest.approx(fid_reference_eigvals(a, b), rel=REL)
    assert fid == pytest.approx(fid_reference_sqrtm(a, b), rel=REL)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_corruption():
    a = gaussian_features(400, 16, 0)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-9)
    fresh = fid_from_features(a, gaussian_features(400, 16, 1))
    shifted = fid_from_features(a, gaussian_features(400, 16, 1, shift=0.5))
    shifted_more = fid_from_features(a, gaussian_features(400, 16, 1, shift=1.0))
    noised = fid_from_features(a, gaussian_features(400, 16, 1) + np.random.default_rng(5).normal(0, 1, (400, 16)))
    assert fresh < shifted < shifted_more
    assert fresh < noised


def test_feature_stats_save_load_round_trip(tmp_path):
    a = gaussian_features(50, 6, 0)
    stats = FeatureStats.from_features(a)
    path = stats.save(tmp_path / "real_stats")
    assert path.suffix == ".npz"
    loaded = FeatureStats.load(path)
    np.testing.assert_array_equal(loaded.mean_D, stats.mean_D)
    np.testing.assert_array_equal(loaded.cov_DD, stats.cov_DD)
    assert loaded.num_samples == 50
    np.testing.assert_allclose(stats.cov_DD, np.cov(a, rowvar=False), rtol=1e-12)
    assert frechet_distance(loaded, stats) == pytest.approx(0.0, abs=1e-10)


def test_feature_stats_load_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        FeatureStats.load(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", mean=np.zeros(3))
    with pytest.raises(ValueError, match=r"missing \['cov', 'num_samples'\]"):
        FeatureStats.load(tmp_path / "other.npz")


# ---- IS ----------------------------------------------------------------------------------------------------------

def inception_score_reference(p: np.ndarray, splits: int) -> tuple[float, float]:
    n = len(p)
    bounds = [round(i * n / splits) for i in range(splits + 1)]  # equal parts when splits divides n
    scores = []
    for s in range(splits):
        part = p[bounds[s]:bounds[s + 1]]
        marginal = [sum(row[k] for row in part) / len(part) for k in range(p.shape[1])]
        kl = [sum(row[k] * (math.log(row[k]) - math.log(marginal[k])) for k in range(p.shape[1]) if row[k] > 0)
              for row in part]
        scores.append(math.exp(sum(kl) / len(kl)))
    mean = sum(scores) / splits
    return mean, math.sqrt(sum((s - mean) ** 2 for s in scores) / splits)


def test_inception_score_matches_loop_reference():
    logits = np.random.default_rng(0).normal(0, 2, (60, 5))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    p[0] = [1, 0, 0, 0, 0]  # exact zeros contribute nothing
    mean, std = inception_score(p, num_splits=4)
    ref_mean, ref_std = inception_score_reference(p, 4)
    assert mean == pytest.approx(ref_mean, rel=REL)
    assert std == pytest.approx(ref_std, rel=REL)


def test_inception_score_extremes_and_corruption():
    k = 6
    confident = np.eye(k)[np.arange(60) % k]
    assert inception_score(confident, 1)[0] == pytest.approx(k, rel=1e-12)
    assert inception_score(np.full((60, k), 1 / k), 1)[0] == pytest.approx(1.0, rel=1e-12)
    blurred = 0.5 * confident + 0.5 / k
    assert 1.0 < inception_score(blurred, 1)[0] < k
    collapsed = np.eye(k)[np.zeros(60, dtype=int)]
    assert inception_score(collapsed, 1)[0] == pytest.approx(1.0)


@pytest.mark.parametrize("probs, splits, message", [
    (np.full((10, 4), 0.3), 2, "row 0 sums to 1.2"),
    (np.array([[1.5, -0.5]] * 4), 2, "negative probability"),
    (np.full((10, 4), 0.25), 11, r"num_splits must be an integer in 1\.\.10"),
    (np.full((10,), 0.25), 1, r"\[num_samples, dim\]"),
])
def test_inception_score_rejects_bad_input(probs, splits, message):
    with pytest.raises(ValueError, match=message):
        inception_score(probs, splits)


# ---- KID ---------------------------------------------------------------------------------------------------------

def mmd2_loops(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape
    k = lambda a, b: (sum(a[i] * b[i] for i in range(d)) / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_loop_reference_with_the_documented_subsets():
    real, fake = gaussian_features(20, 4, 0), gaussian_features(15, 4, 1, shift=0.4)
    mean, std = kernel_inception_distance(real, fake, num_subsets=3, subset_size=6, seed=7)
    rng = np.random.default_rng(7)
    mmds = []
    for _ in range(3):
        ri = rng.choice(20, 6, replace=False)
        fi = rng.choice(15, 6, replace=False)
        mmds.append(mmd2_loops(real[ri], fake[fi]))
    assert mean == pytest.approx(np.mean(mmds), rel=REL)
    assert std == pytest.approx(np.std(mmds), rel=REL)
    assert mmd2_unbiased(real[:6], fake[:6]) == pytest.approx(mmd2_loops(real[:6], fake[:6]), rel=REL)


def test_kid_is_seeded_and_moves_with_corruption():
    real = gaussian_features(300, 8, 0)
    same = gaussian_features(300, 8, 1)
    args = dict(num_subsets=20, subset_size=100)
    assert kernel_inception_distance(real, same, seed=1, **args) == kernel_inception_distance(real, same, seed=1,
                                                                                              **args)
    assert kernel_inception_distance(real, same, seed=1, **args) != kernel_inception_distance(real, same, seed=2,
                                                                                              **args)
    base, base_std = kernel_inception_distance(real, same, **args)
    shifted = kernel_inception_distance(real, gaussian_features(300, 8, 1, shift=0.5), **args)[0]
    assert abs(base) < base_std and shifted > 20 * base_std  # unbiased: about 0 for one distribution


def test_kid_rejects_bad_input():
    a, b = gaussian_features(10, 4, 0), gaussian_features(10, 4, 1)
    with pytest.raises(ValueError, match="at least 20 are needed for KID subsets of 20"):
        kernel_inception_distance(a, b, subset_size=20)
    with pytest.raises(ValueError, match="subset_size must be an integer >= 2"):
        kernel_inception_distance(a, b, subset_size=1)
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_inception_distance(a, b, num_subsets=0, subset_size=5)
    with pytest.raises(ValueError, match="have 4 features per sample but generated features have 3"):
        kernel_inception_distance(a, b[:, :3], subset_size=5)


# ---- k-NN precision / recall ----------------------------------------------------------------------------------------

def knn_pr_brute_force(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(x):
        return [sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1] for i in range(len(x))]

    r_real, r_fake = radii(real), radii(fake)
    precision = np.mean([any(np.linalg.norm(f - r) <= rr for r, rr in zip(real, r_real)) for f in fake])
    recall = np.mean([any(np.linalg.norm(r - f) <= rf for f, rf in zip(fake, r_fake)) for r in real])
    return float(precision), float(recall)


def test_knn_precision_recall_matches_brute_force():
    real = gaussian_features(40, 5, 0)
    fake = gaussian_features(30, 5, 1, shift=0.7, scale=0.8)
    got = knn_precision_recall(real, fake, k=3, batch_size=7)  # several ragged blocks
    ref = knn_pr_brute_force(real, fake, 3)
    assert got[0] == pytest.approx(ref[0], rel=REL) and got[1] == pytest.approx(ref[1], rel=REL)
    assert 0 < got[0] < 1 and 0 < got[1] < 1


def test_knn_precision_recall_move_with_corruption():
    real = gaussian_features(400, 8, 0)
    p_same, r_same = knn_precision_recall(real, gaussian_features(400, 8, 1))
    p_shift, _ = knn_precision_recall(real, gaussian_features(400, 8, 1, shift=2.0))
    p_coll, r_coll = knn_precision_recall(real, gaussian_features(400, 8, 1, scale=0.1))  # mode collapse
    assert p_same > 0.6 and r_same > 0.6
    assert p_shift < 0.5 * p_same
    assert r_coll < 0.5 * r_same and p_coll > 0.9


def test_knn_precision_recall_float32_agrees_with_float64():
    real, fake = gaussian_features(200, 16, 0), gaussian_features(200, 16, 1, shift=0.3)
    p64, r64 = knn_precision_recall(real, fake)
    p32, r32 = knn_precision_recall(real.astype(np.float32), fake.astype(np.float32))
    assert abs(p64 - p32) <= 0.01 and abs(r64 - r32) <= 0.01


def test_knn_precision_recall_rejects_bad_input():
    a = gaussian_features(10, 4, 0)
    with pytest.raises(ValueError, match=r"3 samples given; at least 4 are needed"):
        knn_precision_recall(a, a[:3])
    with pytest.raises(ValueError, match="positive integer"):
        knn_precision_recall(a, a, k=0)


# ---- Gaussian precision / recall ------------------------------------------------------------------------------------

def gaussian_pr_brute_force(real, fake, quantile, ridge):
    def inside(own, other):
        n, d = own.shape
        lam = ridge * np.trace(np.cov(own, rowvar=False)) / d
        loo = []
        for i in range(n):
            rest = np.delete(own, i, axis=0)
            u = own[i] - rest.mean(0)
            loo.append(u @ np.linalg.solve(np.cov(rest, rowvar=False) + lam * np.eye(d), u))
        tau = np.quantile(loo, quantile)
        cov = np.cov(own, rowvar=False) + lam * np.eye(d)
        dist = [(x - own.mean(0)) @ np.linalg.solve(cov, x - own.mean(0)) for x in other]
        return float(np.mean(np.array(dist) <= tau)), np.array(loo), np.array(dist)

    precision, loo_real, dist_fake = inside(real, fake)
    recall, _, _ = inside(fake, real)
    return precision, recall, loo_real, dist_fake


def test_gaussian_precision_recall_matches_brute_force():
    from dcgen.metrics.gaussian_precision_recall import GaussianFit

    real = gaussian_features(60, 6, 0)
    fake = gaussian_features(50, 6, 1, shift=0.4, scale=1.3)
    precision, recall = gaussian_precision_recall(real, fake, quantile=0.8, ridge=1e-3)
    ref_p, ref_r, loo_real, dist_fake = gaussian_pr_brute_force(real, fake, 0.8, 1e-3)
    assert precision == pytest.approx(ref_p, rel=REL) and recall == pytest.approx(ref_r, rel=REL)
    fit = GaussianFit.from_stats(FeatureStats.from_features(real), ridge=1e-3)
    np.testing.assert_allclose(fit.loo_mahalanobis_sq(real), loo_real, rtol=REL)
    np.testing.assert_allclose(fit.mahalanobis_sq(fake), dist_fake, rtol=REL)


def test_gaussian_precision_recall_move_with_corruption():
    real = gaussian_features(800, 8, 0)
    p_same, r_same = gaussian_precision_recall(real, gaussian_features(800, 8, 1))
    assert abs(p_same - 0.95) < 0.04 and abs(r_same - 0.95) < 0.04  # identical distributions: about the quantile
    p_shift, _ = gaussian_precision_recall(real, gaussian_features(800, 8, 1, shift=1.5))
    p_wide, _ = gaussian_precision_recall(real, gaussian_features(800, 8, 1, scale=1.5))
    p_coll, r_coll = gaussian_precision_recall(real, gaussian_features(800, 8, 1, scale=0.3))
    assert p_shift < 0.5 and p_wide < 0.7
    assert r_coll < 0.1 and p_coll > 0.99


def test_gaussian_precision_recall_handles_rank_deficient_features():
    real = gaussian_features(100, 6, 0)
    real[:, 5] = 0.0  # a dead unit
    fake = gaussian_features(100, 6, 1)
    fake[:, 5] = 0.0
    p, r = gaussian_precision_recall(real, fake)
    assert p > 0.7 and r > 0.7
    fake[:, 5] = 1.0  # generated samples light up a unit the real ones never use
    assert gaussian_precision_recall(real, fake)[0] == 0.0


def test_gaussian_precision_recall_rejects_bad_input():
    a = gaussian_features(10, 4, 0)
    with pytest.raises(ValueError, match="quantile must be in"):
        gaussian_precision_recall(a, a, quantile=1.0)
    with pytest.raises(ValueError, match="at least 3 are needed for a leave-one-out"):
        gaussian_precision_recall(a, a[:2])
    with pytest.raises(ValueError, match="identical"):
        gaussian_precision_recall(np.ones((5, 4)), a)


# ---- shared validation and the combined entry point ----------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    (np.zeros((5,)), r"\[num_samples, dim\]"),
    (np.array([["a", "b"]]), "numeric"),
    (np.zeros((5, 0)), "at least 1 feature"),
])
def test_check_features_shapes(bad, message):
    with pytest.raises(ValueError, match=message):
        check_features(bad, "real features")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_metrics_reject_non_finite_features(value):
    a = gaussian_features(20, 4, 0)
    b = gaussian_features(20, 4, 1)
    b[3, 2] = value
    with pytest.raises(ValueError, match=r"generated features: 1 samples hold NaN or inf features \(first rows: \[3\]"):
        fid_from_features(a, b)
    with pytest.raises(ValueError, match="NaN or inf"):
        knn_precision_recall(a, b)


def test_fid_needs_two_samples_and_matching_dims():
    a = gaussian_features(20, 4, 0)
    with pytest.raises(ValueError, match="1 samples given; at least 2 are needed for a covariance"):
        fid_from_features(a, a[:1])
    with pytest.raises(ValueError, match="real features have 4 features per sample but generated features have 3"):
        fid_from_features(a, a[:, :3])


def test_generation_metrics_combines_all_five_deterministically():
    real, fake = gaussian_features(120, 8, 0), gaussian_features(100, 8, 1, shift=0.2)
    probs = np.random.default_rng(0).dirichlet(np.ones(5), 100)
    config = GenerationMetricsConfig(kid_subsets=5, kid_subset_size=50, seed=3)
    m = generation_metrics(real, fake, probs, config)
    assert m == generation_metrics(real, fake, probs, config)
    assert m.fid == pytest.approx(fid_from_features(real, fake), rel=1e-12)
    assert (m.kid_mean, m.kid_std) == kernel_inception_distance(real, fake, 5, 50, 3)
    assert (m.precision, m.recall) == knn_precision_recall(real, fake)
    assert (m.gaussian_precision, m.gaussian_recall) == gaussian_precision_recall(real, fake)
    assert (m.is_mean, m.is_std) == inception_score(probs, 10)
    assert set(m.to_dict()) >= {"fid", "kid_mean", "precision", "recall", "is_mean"}
    assert generation_metrics(real, fake).is_mean is None
    with pytest.raises(ValueError, match="cover 99 samples"):
        generation_metrics(real, fake, probs[:99], config)
    with pytest.raises(ValueError, match="at least 4 are needed for the k-NN and Gaussian precision/recall"):
        generation_metrics(real, fake[:3], config=config)
    stats_of_other_set = FeatureStats.from_features(real[:100])
    with pytest.raises(ValueError, match="expected a fit of the same set"):
        generation_metrics(real, fake, config=config, real_stats=stats_of_other_set)


@pytest.mark.slow
def test_all_five_metrics_on_10000_by_2048_features():
    """The paper-scale set runs end to end with finite, ordered values; its time is a benchmark's business
    (``dcgen bench metrics`` reports it), not a test's: a loaded 2-core machine took 50 s, a quiet one under 30."""
    rng = np.random.default_rng(0)
    real = np.maximum(rng.standard_normal((10_000, 2048), dtype=np.float32), 0)
    fake = np.maximum(rng.standard_normal((10_000, 2048), dtype=np.float32) * 1.1 + 0.05, 0)
    probs = rng.dirichlet(np.ones(10), 10_000)
    m = generation_metrics(real, fake, probs)
    assert np.isfinite(list(v for v in m.to_dict().values())).all()
    assert m.fid > 0 and not m.collapsed


# ---- a collapsed generated set is reported, a collapsed real set refused ------------------------------------------

def one_vector(n: int, d: int, seed: int, jitter: float = 0.0) -> np.ndarray:
    """``n`` copies of one float32 vector, each entry moved by up to ``jitter`` of its size (as a float32 network
    gives identical inputs in different batch positions: a few ulps apart)."""
    rng = np.random.default_rng(seed)
    row = rng.standard_normal((1, d)).astype(np.float32) + 2.0
    wobble = 1.0 + jitter * rng.uniform(-1, 1, (n, d))
    return (row * wobble).astype(np.float32)


@pytest.mark.parametrize("jitter", [0.0, 1e-6])
def test_feature_stats_call_one_vector_up_to_rounding_collapsed(jitter):
    assert FeatureStats.from_features(one_vector(8, 5, 0, jitter)).collapsed
    assert FeatureStats.from_features(np.zeros((8, 5))).collapsed
    assert not FeatureStats.from_features(one_vector(8, 5, 0, 1e-3)).collapsed  # small but real spread
    assert not FeatureStats.from_features(gaussian_features(8, 5, 0) + 1000.0).collapsed


@pytest.mark.parametrize("jitter", [0.0, 1e-6])
def test_collapsed_generated_set_gives_finite_metrics_and_the_flag(jitter):
    real = gaussian_features(40, 6, 0).astype(np.float32)
    fake = one_vector(12, 6, 1, jitter)
    probs = np.random.default_rng(0).dirichlet(np.ones(4), 12)
    m = generation_metrics(real, fake, probs, GenerationMetricsConfig(kid_subsets=4, kid_subset_size=10))
    assert m.collapsed is True
    values = [v for k, v in m.to_dict().items() if k != "collapsed"]
    assert all(math.isfinite(v) for v in values), m
    assert m.fid > 0 and 0 <= m.precision <= 1 and 0 <= m.gaussian_precision <= 1
    # the point is no real sample: no real sample lies in a manifold shrunk onto it
    assert m.recall == 0.0 and m.gaussian_recall == 0.0
    assert gaussian_precision_recall(real, fake) == (m.gaussian_precision, m.gaussian_recall)
    # a generator that reproduces one real sample covers exactly that sample
    copies = np.repeat(real[3:4], 12, axis=0)
    assert gaussian_precision_recall(real, copies)[1] == pytest.approx(1 / 40)
    assert generation_metrics(real, copies, config=GenerationMetricsConfig(kid_subsets=2, kid_subset_size=10)).collapsed
    assert generation_metrics(real, gaussian_features(12, 6, 1), config=GenerationMetricsConfig(
        kid_subsets=2, kid_subset_size=10)).collapsed is False


def test_collapsed_real_set_is_an_error_that_says_why():
    real, fake = one_vector(10, 6, 0), gaussian_features(10, 6, 1)
    with pytest.raises(ValueError, match=r"real features: all 10 feature vectors are identical \(up to rounding"
                                         r".*does the feature network map every clip to one vector"):
        generation_metrics(real, fake, config=GenerationMetricsConfig(kid_subsets=2, kid_subset_size=5))
    with pytest.raises(ValueError, match="real features: all 10 feature vectors are identical"):
        gaussian_precision_recall(real, fake)


# ---- shifting every feature: distances do not move, KID keeps its digits ------------------------------------------

def lattice_features(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """Gaussian features on a 2^-12 grid (|x| < 8), so ``x + 1000`` is still exact in float32: the shifted set is
    exactly the original one moved, and any change in a metric is the metric's own rounding."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal((n, d)) * scale + shift, -7.9, 7.9)
    return np.round(x * 2 ** 12) / 2 ** 12


def kid_float64_reference(real: np.ndarray, fake: np.ndarray, num_subsets: int, m: int, seed: int) -> float:
    """KID exactly as documented (same subsets), every product in float64 on the raw features."""
    rng = np.random.default_rng(seed)
    d, mmds = real.shape[1], []
    for _ in range(num_subsets):
        x = real[rng.choice(len(real), m, replace=False)].astype(np.float64)
        y = fake[rng.choice(len(fake), m, replace=False)].astype(np.float64)
        k_xx, k_yy, k_xy = ((a @ b.T / d + 1.0) ** 3 for a, b in ((x, x), (y, y), (x, y)))
        off = k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)
        mmds.append(off / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))
    return float(np.mean(mmds))


def knn_margin(real: np.ndarray, fake: np.ndarray, k: int = 3) -> float:
    """Smallest |distance - radius| / radius over every comparison the k-NN precision/recall makes (float64)."""
    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    r_real = np.sort(sq(real, real), axis=1)[:, k]
    r_fake = np.sort(sq(fake, fake), axis=1)[:, k]
    cross = sq(fake, real)
    return float(min((abs(cross - r_real[None, :]) / r_real[None, :]).min(),
                     (abs(cross - r_fake[:, None]) / r_fake[:, None]).min()))


@pytest.mark.parametrize("shift", [20.0, 1000.0])
def test_shifting_every_feature_leaves_distances_alone_and_kid_exact(shift):
    real = lattice_features(300, 16, 8)
    fake = lattice_features(300, 16, 9, scale=1.1)  # near the real set: a small KID among large kernel values
    moved_real, moved_fake = (real + shift).astype(np.float32), (fake + shift).astype(np.float32)
    assert np.array_equal(moved_real.astype(np.float64) - shift, real)  # the shift itself is exact
    # every comparison is 1e-5 or more from a tie, two orders above float32 rounding of a distance between centred
    # features (~1e-7 of it), so no CPU's kernels can flip one
    assert knn_margin(real, fake) > 1e-5
    base = knn_precision_recall(real.astype(np.float32), fake.astype(np.float32))
    assert 0.1 < base[0] < 0.95 and 0.1 < base[1] < 0.95
    assert knn_precision_recall(moved_real, moved_fake) == base
    assert knn_precision_recall(real + shift, fake + shift) == base  # float64 input: the same sets
    g_base = gaussian_precision_recall(real.astype(np.float32), fake.astype(np.float32))
    assert gaussian_precision_recall(moved_real, moved_fake) == g_base  # float64, centred: ties ~1e-13 away
    assert fid_from_features(moved_real, moved_fake) == pytest.approx(fid_from_features(real, fake), rel=1e-6)
    # KID's cubic kernel is defined on the raw features and is not translation invariant: compare with float64
    got = kernel_inception_distance(moved_real, moved_fake, num_subsets=4, subset_size=200, seed=5)[0]
    want = kid_float64_reference(real + shift, fake + shift, 4, 200, 5)
    assert got == pytest.approx(want, rel=1e-4)
    unshifted = kernel_inception_distance(real.astype(np.float32), fake.astype(np.float32), 4, 200, 5)[0]
    assert unshifted == pytest.approx(kid_float64_reference(real, fake, 4, 200, 5), rel=1e-4)
