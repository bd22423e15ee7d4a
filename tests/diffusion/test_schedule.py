"""Noise schedule: golden values, the posterior against Bayes' rule, respacing and subsets, log-SNR, q_sample inverses,
validation."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from dcgen.diffusion.schedule import NoiseSchedule, ScheduleConfig

SCHED = NoiseSchedule.linear()


def test_golden_values():
    ac = SCHED.alphas_cumprod
    assert abs(ac[0] - 0.9999) < 1e-12
    assert abs(ac[500] - 0.07779665836502389) < 1e-9
    assert abs(ac[999] - 4.035829765375676e-05) < 1e-9
    assert abs(SCHED.posterior_variance[500] - 0.010051335778909593) < 1e-9
    assert SCHED.betas[0] == 1e-4 and SCHED.betas[-1] == 0.02 and SCHED.num_steps == 1000
    assert SCHED.posterior_variance[0] == 0.0
    assert SCHED.posterior_log_variance_clipped[0] == SCHED.posterior_log_variance_clipped[1]


def test_posterior_matches_bayes_rule():
    t = 400
    x0, xt = 0.7, -0.4
    a_prev, beta = SCHED.alphas_cumprod[t - 1], SCHED.betas[t]
    # prior x_{t-1} ~ N(√ᾱ_{t-1} x0, 1 − ᾱ_{t-1}); likelihood x_t | x_{t-1} ~ N(√α_t x_{t-1}, β_t)
    precision = 1 / (1 - a_prev) + (1 - beta) / beta
    mean = (math.sqrt(a_prev) * x0 / (1 - a_prev) + math.sqrt(1 - beta) * xt / beta) / precision
    m, var, _ = SCHED.posterior(torch.tensor([[x0]]), torch.tensor([[xt]]), torch.tensor([t]))
    assert abs(m.item() - mean) < 1e-6
    assert abs(var.item() - 1 / precision) < 1e-9


def test_q_sample_inverses():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 2, 4, 4, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([0, 500, 999])
    x_t = SCHED.q_sample(x0, t, noise)
    torch.testing.assert_close(SCHED.predict_x0(x_t, t, noise), x0, atol=2e-3, rtol=1e-4)
    mid = torch.full((3,), 500)
    torch.testing.assert_close(SCHED.predict_eps(SCHED.q_sample(x0, mid, noise), mid, x0), noise,
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(SCHED.q_sample(x0, torch.tensor([0, 0, 0]), torch.zeros_like(x0)),
                       x0 * math.sqrt(0.9999))


def test_learned_log_variance_interpolates_between_beta_and_posterior():
    t = torch.tensor([10, 10])
    v = torch.tensor([[1.0], [-1.0]])
    lv = SCHED.model_log_variance(v, t)
    assert abs(lv[0].item() - math.log(SCHED.betas[10])) < 1e-5
    assert abs(lv[1].item() - SCHED.posterior_log_variance_clipped[10]) < 1e-5


def test_respacing_keeps_alphas_cumprod_of_the_kept_steps():
    fast = SCHED.respace(50)
    assert fast.num_steps == 50 and fast.timesteps[0] == 0 and fast.timesteps[-1] == 999
    assert len(np.unique(fast.timesteps)) == 50
    np.testing.assert_allclose(fast.alphas_cumprod, SCHED.alphas_cumprod[fast.timesteps], rtol=1e-12)
    assert SCHED.respace(1000) is SCHED
    assert list(SCHED.respace(1).timesteps) == [999]
    assert torch.equal(fast.model_timesteps(torch.tensor([0, 49])), torch.tensor([0, 999]))
    with pytest.raises(ValueError, match="respaced step count must be in \\[1, 1000\\], got 0"):
        SCHED.respace(0)


def test_a_subset_keeps_alphas_cumprod_log_snr_and_timesteps():
    sub = SCHED.subset([3, 40, 999])
    np.testing.assert_allclose(sub.alphas_cumprod, SCHED.alphas_cumprod[[3, 40, 999]], rtol=1e-12)
    np.testing.assert_allclose(sub.log_snr, SCHED.log_snr[[3, 40, 999]], rtol=1e-9)
    assert list(sub.subset([0, 2]).timesteps) == [3, 999]
    ac = SCHED.alphas_cumprod
    np.testing.assert_allclose(SCHED.log_snr, np.log(np.sqrt(ac) / np.sqrt(1 - ac)), rtol=1e-12)
    assert (np.diff(SCHED.log_snr) < 0).all()
    for bad in ([5, 5], [3, 1], [0, 1000], [-1, 4], []):
        with pytest.raises(ValueError, match=f"strictly increasing indices in \\[0, 999\\], got {re.escape(str(bad))}"):
            SCHED.subset(bad)


def test_p_mean_variance_checks_channels():
    with pytest.raises(ValueError, match="model output has 3 channels; expected 2 \\(ε\\) or 4"):
        SCHED.p_mean_variance(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, 2), torch.tensor([5]))


def test_config_validation_and_round_trip():
    cfg = ScheduleConfig()
    assert ScheduleConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="0 < beta_start <= beta_end < 1, got 0.03 and 0.02"):
        ScheduleConfig(beta_start=0.03)
    with pytest.raises(ValueError, match="num_steps must be >= 1, got 0"):
        ScheduleConfig(num_steps=0)
    with pytest.raises(ValueError, match="betas must be a 1-D array in \\(0, 1\\)"):
        NoiseSchedule(np.array([0.1, 1.5]))
