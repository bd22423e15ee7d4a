"""Inception Score from class probabilities (IS, SPEC §4; Salimans et al. 2016):

    IS = exp( E_x[ KL( p(y|x) || p(y) ) ] ),   p(y) = E_x[ p(y|x) ],

computed on each of ``num_splits`` contiguous, near-equal parts of the samples (``np.array_split`` order, no
shuffling, so the result is a pure function of the input) and reported as the mean and standard deviation
(population, ddof 0) over the parts, as in the original evaluation. Terms with p(y|x) = 0 contribute 0.
"""

from __future__ import annotations

import numpy as np

from dcgen.metrics.feature_stats import check_features

PROB_SUM_TOL = 1e-3


def check_probabilities(probs, what: str = "class probabilities") -> np.ndarray:
    """``probs`` as a float64 ``[N, K]`` array of non-negative rows summing to 1 (within ``PROB_SUM_TOL``)."""
    p_NK = check_features(probs, what).astype(np.float64, copy=False)
    if p_NK.min() < 0:
        raise ValueError(f"{what}: found a negative probability {p_NK.min():.3g}; expected softmax outputs >= 0")
    sums_N = p_NK.sum(axis=1)
    worst = int(np.argmax(np.abs(sums_N - 1.0)))
    if abs(sums_N[worst] - 1.0) > PROB_SUM_TOL:
        raise ValueError(f"{what}: row {worst} sums to {sums_N[worst]:.6g}; expected each row to sum to 1 "
                         "(pass softmax probabilities, not logits)")
    return p_NK


def inception_score(probs_NK, num_splits: int = 10) -> tuple[float, float]:
    """``(mean, std)`` of the Inception Score over ``num_splits`` parts of ``[N, K]`` class probabilities."""
    p_NK = check_probabilities(probs_NK)
    if int(num_splits) != num_splits or not 1 <= num_splits <= p_NK.shape[0]:
        raise ValueError(f"num_splits must be an integer in 1..{p_NK.shape[0]} (the number of samples), "
                         f"got {num_splits}")
    scores = []
    for part_NK in np.array_split(p_NK, int(num_splits)):
        marginal_K = part_NK.mean(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms_NK = np.where(part_NK > 0, part_NK * (np.log(part_NK) - np.log(marginal_K)), 0.0)
        scores.append(np.exp(terms_NK.sum(axis=1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
