"""DDPM, DDIM and DPM-Solver++ samplers: checked against closed forms on Gaussian data, then golden sums on a tiny
seeded DiT, batch independence and validation.

For data x_0 ~ N(μ, s²) the true noise predictor is E[ε | x_t] = √(1−ᾱ)(x_t − √ᾱ μ) / (ᾱ s² + 1 − ᾱ), and every
sampler step is affine in x_t, so DDIM's output and DDPM's output moments have closed forms; the exact
probability-flow ODE, which DDIM and DPM-Solver++ both solve, keeps each sample's standardised value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dcgen.diffusion.samplers import ddim_sample, ddpm_sample, dpmpp_sample, dpmpp_timesteps, per_sample_noise
from dcgen.diffusion.schedule import NoiseSchedule

SCHED = NoiseSchedule.linear()
MU, SD = 0.3, 0.5


def gaussian_eps_model(v: float | None = None, mu: float = MU, sd: float = SD):
    def fn(x, t):
        ac = torch.as_tensor(SCHED.alphas_cumprod, dtype=torch.float64)[t].reshape(-1, 1, 1, 1)
        eps = (torch.sqrt(1 - ac) * (x.double() - torch.sqrt(ac) * mu) / (ac * sd ** 2 + 1 - ac)).float()
        return eps if v is None else torch.cat([eps, torch.full_like(eps, v)], dim=1)
    return fn


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def exact_flow(x_T: torch.Tensor, mu: float = MU, sd: float = SD) -> torch.Tensor:
    """Where the exact probability-flow ODE takes x_T: it keeps (x_t − √ᾱ μ)/√(ᾱ s² + 1 − ᾱ) of every sample fixed."""
    ac_T = SCHED.alphas_cumprod[-1]
    return mu + sd * (x_T.double() - math.sqrt(ac_T) * mu) / math.sqrt(ac_T * sd ** 2 + 1 - ac_T)


def test_ddim_1000_steps_follows_the_probability_flow():
    shape = (2, 1, 32, 32)
    x_T = per_sample_noise(gens([0, 1]), shape[1:]).double()
    out = ddim_sample(gaussian_eps_model(), SCHED, shape, gens([0, 1]), num_steps=1000).double()
    assert float((out - exact_flow(x_T)).abs().max()) < 2e-2


@pytest.mark.parametrize("mu, sd", [(MU, SD), (0.0, 0.1)])
def test_dpmpp_10_steps_reaches_the_data_distribution_where_ddim_10_does_not(mu, sd):
    shape = (4, 1, 64, 64)
    x_T = per_sample_noise(gens(range(4)), shape[1:])
    model = gaussian_eps_model(mu=mu, sd=sd)
    runs = {name: sampler(model, SCHED, shape, gens(range(4)), num_steps=steps).double()
            for name, sampler, steps in (("dpmpp", dpmpp_sample, 10), ("dpmpp_40", dpmpp_sample, 40),
                                         ("ddim", ddim_sample, 10))}
    # the exact output distribution is N(μ, s²): mean to within sampling noise, standard deviation within 8 %
    err = {k: (abs(out.mean().item() - mu) / sd, abs(out.std().item() / sd - 1)) for k, out in runs.items()}
    assert err["dpmpp"][0] < 0.05 and err["dpmpp"][1] < 0.08, err
    assert err["ddim"][1] > 5 * err["dpmpp"][1], err  # DDIM-10 shrinks the spread by 28 % (s = 0.5) to 66 % (0.1)
    # sample by sample against the exact ODE, in units of s; more steps converge (second order, up to rounding λ
    # to whole timesteps)
    dev = {k: float((out - exact_flow(x_T, mu, sd)).abs().max()) / sd for k, out in runs.items()}
    assert dev["dpmpp"] < 0.3 and dev["ddim"] > 4 * dev["dpmpp"] and dev["dpmpp_40"] < dev["dpmpp"] / 4, dev


def test_dpmpp_timesteps_are_uniform_in_log_snr_and_distinct():
    lam = SCHED.log_snr
    keep = dpmpp_timesteps(SCHED, 10)
    assert keep[-1] == 999 and len(keep) == 10
    h = -np.diff(lam[np.append(0, keep)])  # λ steps, index 0 included as the grid's end
    assert np.abs(h / h.mean() - 1).max() < 0.1
    for n in (38, 200, 999):  # where the λ grid is finer than the timesteps near 0: still n distinct steps
        keep = dpmpp_timesteps(SCHED, n)
        assert len(keep) == n and keep[0] >= 1 and keep[-1] == 999 and (np.diff(keep) > 0).all()


def test_dpmpp_clamps_every_x0_and_keeps_the_padding_zero():
    lo = torch.tensor([0.1, -0.2]).view(1, 2, 1, 1)
    hi = torch.tensor([0.4, 0.9]).view(1, 2, 1, 1)
    valid = torch.ones(16, 16, dtype=torch.bool)
    valid[12:, 12:] = False
    out = dpmpp_sample(gaussian_eps_model(), SCHED, (2, 2, 16, 16), gens([1, 2]), num_steps=6, valid_SS=valid,
                       x0_range=(lo, hi))
    inside = out[:, :, valid]
    assert bool((inside >= lo.view(1, 2, 1)).all()) and bool((inside <= hi.view(1, 2, 1)).all())
    # N(0.3, 0.25) data: the tight channel-0 range is reached on both sides, so the clamp did act
    assert bool((inside[:, 0] == 0.1).any()) and bool((inside[:, 0] == 0.4).any())
    assert float(out[:, :, ~valid].abs().max()) == 0.0


@pytest.mark.parametrize("steps", [50, 7])
def test_ddim_steps_match_their_closed_form(steps):
    shape = (2, 1, 8, 8)
    sched = SCHED.respace(steps)
    u = per_sample_noise(gens([3, 4]), shape[1:]).double() - math.sqrt(sched.alphas_cumprod[-1]) * MU
    for i in reversed(range(steps)):
        a, a_prev = sched.alphas_cumprod[i], sched.alphas_cumprod_prev[i]
        u = u * (math.sqrt(a_prev * a) * SD ** 2 + math.sqrt((1 - a_prev) * (1 - a))) / (a * SD ** 2 + 1 - a)
    out = ddim_sample(gaussian_eps_model(), SCHED, shape, gens([3, 4]), num_steps=steps)
    assert float((out.double() - (u + MU)).abs().max()) < 1e-5


@pytest.mark.parametrize("v, steps", [(0.5, 1000), (None, 200)])
def test_ddpm_moments_match_the_linear_gaussian_recursion(v, steps):
    # x_{t-1} = A_t x_t + c_t + σ_t z, so mean and variance follow m ← A m + c, V ← A² V + σ².
    sched = SCHED.respace(steps)
    m, var = 0.0, 1.0
    for i in reversed(range(steps)):
        a = sched.alphas_cumprod[i]
        k = SD ** 2 * math.sqrt(a) / (a * SD ** 2 + 1 - a)
        c1, c2 = sched.posterior_mean_coef1[i], sched.posterior_mean_coef2[i]
        log_var = sched.posterior_log_variance_clipped[i]
        if v is not None:
            f = (v + 1) / 2
            log_var = f * math.log(sched.betas[i]) + (1 - f) * log_var
        m = (c1 * k + c2) * m + c1 * MU * (1 - SD ** 2 * a / (a * SD ** 2 + 1 - a))
        var = (c1 * k + c2) ** 2 * var + (math.exp(log_var) if i > 0 else 0.0)
    out = ddpm_sample(gaussian_eps_model(v), SCHED, (4, 1, 32, 32), gens(range(4)), num_steps=steps).double()
    n = out.numel()
    assert abs(out.mean().item() - m) < 4 * math.sqrt(var / n)
    assert abs(out.var().item() / var - 1) < 4 * math.sqrt(2 / n)
    assert abs(m - MU) < 1e-3 and abs(math.sqrt(var) - SD) < 0.04


def _tiny_fn(model, cond):
    return lambda x, t: model(x, t, cond)


def _golden_fn(model, cond):
    """The tiny DiT as a residual on ε ≈ x_t, so a random network still gives O(1) samples and well-conditioned sums."""
    def fn(x, t):
        out = model(x, t, cond)
        return torch.cat([x + 0.1 * out[:, :16], out[:, 16:]], dim=1)
    return fn


# Recorded once the closed-form tests above passed (torch 2.13 CPU); 10 respaced steps, seeds 10, 11, 12.
DDIM_GOLDEN = ([1.51461, 25.47001, 46.35766], [2318.29565, 2319.60868, 2284.57554])
DDPM_GOLDEN = ([13.41587, -10.76019, -13.18912], [2246.72845, 2230.69392, 2240.32346])
DPMPP_GOLDEN = ([-3.01494, 14.80439, 50.01949], [2642.33657, 2638.97902, 2589.81561])  # recorded likewise


@pytest.mark.parametrize("sampler, golden", [(ddim_sample, DDIM_GOLDEN), (ddpm_sample, DDPM_GOLDEN),
                                             (dpmpp_sample, DPMPP_GOLDEN)])
def test_golden_sums_on_a_tiny_dit(tiny_dit, tiny_cond, sampler, golden):
    valid = tiny_dit.rollout.valid_mask()
    out = sampler(_golden_fn(tiny_dit, tiny_cond), SCHED, (3, 16, 20, 20), gens([10, 11, 12]), num_steps=10,
                  valid_SS=valid).double()
    assert float(out[:, :, ~valid].abs().max()) == 0.0
    sums, abs_sums = golden
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), torch.tensor(sums, dtype=torch.float64), atol=2e-3, rtol=0)
    torch.testing.assert_close(out.abs().sum(dim=(1, 2, 3)), torch.tensor(abs_sums, dtype=torch.float64),
                               atol=0, rtol=1e-5)


@pytest.mark.parametrize("sampler", [ddim_sample, ddpm_sample, dpmpp_sample])
def test_a_scene_does_not_depend_on_its_batch(tiny_dit, tiny_cond, sampler):
    shape = (3, 16, 20, 20)
    batched = sampler(_tiny_fn(tiny_dit, tiny_cond), SCHED, shape, gens([7, 8, 9]), num_steps=4)
    alone = sampler(_tiny_fn(tiny_dit, {k: v[1:2] for k, v in tiny_cond.items()}), SCHED, (1, *shape[1:]),
                    gens([8]), num_steps=4)
    torch.testing.assert_close(batched[1:2], alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(batched[0], batched[1])


def test_ddim_with_eta_is_stochastic_and_seeded(tiny_dit):
    fn = _tiny_fn(tiny_dit, {})
    a = ddim_sample(fn, SCHED, (1, 16, 20, 20), gens([5]), num_steps=4, eta=1.0)
    b = ddim_sample(fn, SCHED, (1, 16, 20, 20), gens([5]), num_steps=4, eta=1.0)
    c = ddim_sample(fn, SCHED, (1, 16, 20, 20), gens([5]), num_steps=4, eta=0.0)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_bad_sampler_arguments_are_rejected():
    fn = gaussian_eps_model()
    with pytest.raises(ValueError, match="need one generator per scene: 1 generators for a batch of 2"):
        ddim_sample(fn, SCHED, (2, 1, 4, 4), gens([0]))
    with pytest.raises(ValueError, match="DDIM eta must be in \\[0, 1\\], got 2.0"):
        ddim_sample(fn, SCHED, (1, 1, 4, 4), gens([0]), eta=2.0)
    with pytest.raises(ValueError, match="valid mask has shape \\[3, 3\\], expected \\[4, 4\\]"):
        ddpm_sample(fn, SCHED, (1, 1, 4, 4), gens([0]), num_steps=2, valid_SS=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="sample shape must be \\[B, C, S, S\\]"):
        ddpm_sample(fn, SCHED, (1, 4, 4), gens([0]))
    for steps in (1, 1000, 0):
        with pytest.raises(ValueError, match=f"DPM-Solver\\+\\+ takes 2..999 steps .*got {steps}"):
            dpmpp_sample(fn, SCHED, (1, 1, 4, 4), gens([0]), num_steps=steps)
    with pytest.raises(ValueError, match="need one generator per scene: 1 generators for a batch of 2"):
        dpmpp_sample(fn, SCHED, (2, 1, 4, 4), gens([0]))
