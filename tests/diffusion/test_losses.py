"""Hybrid diffusion loss: masked ε-MSE, the VLB term against hand-written Gaussians, stop-gradient, λ·T scaling."""

from __future__ import annotations

import math

import pytest
import torch

from dcgen.diffusion.losses import gaussian_kl, hybrid_loss, masked_mean, v_loss_weight
from dcgen.diffusion.schedule import NoiseSchedule

SCHED = NoiseSchedule.linear()


def _batch(t: list[int], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(len(t), 2, 4, 4, generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    t_B = torch.tensor(t)
    return x0, noise, t_B, SCHED.q_sample(x0, t_B, noise)


def test_mse_only_counts_valid_pixels():
    x0, noise, t, x_t = _batch([10, 600])
    valid = torch.zeros(4, 4, dtype=torch.bool)
    valid[:2] = True
    eps = noise.clone()
    eps[:, :, 2:] += 5.0  # error only on padding
    out = hybrid_loss(SCHED, eps, x0, x_t, t, noise, valid)
    assert float(out["mse"].abs().max()) == 0.0
    assert torch.equal(out["loss"], out["mse"]) and float(out["vb"].abs().max()) == 0.0
    eps[:, :, :2] += 1.0
    assert torch.allclose(hybrid_loss(SCHED, eps, x0, x_t, t, noise, valid)["mse"], torch.ones(2))


def test_v_loss_weight_makes_the_eps_mse_a_min_snr_v_mse():
    """ε-MSE · w = v-MSE · (1 + min(SNR, γ)) / (1 + SNR) = x̂_0-MSE · (1 + min(SNR, γ)) for a v network."""
    x0, noise, t, x_t = _batch([0, 200, 500, 999])
    ac = SCHED.coef("alphas_cumprod", t, 4)
    v = ac.sqrt() * noise - (1 - ac).sqrt() * x0
    v_hat = v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(5))
    eps_hat = (1 - ac).sqrt() * x_t + ac.sqrt() * v_hat
    w = v_loss_weight(SCHED, t, gamma=5.0)
    out = hybrid_loss(SCHED, eps_hat, x0, x_t, t, noise, mse_weight_B=w)
    snr = (ac / (1 - ac)).flatten()
    v_mse = ((v_hat - v) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(out["loss"], v_mse * (1 + snr.clamp(max=5.0)) / (1 + snr), rtol=1e-3, atol=0)
    x0_mse = ((SCHED.predict_x0(x_t, t, eps_hat) - x0) ** 2).flatten(1).mean(1)
    torch.testing.assert_close(out["loss"][1:], x0_mse[1:] * (1 + snr[1:].clamp(max=5.0)), rtol=2e-3, atol=0)
    assert torch.equal(out["mse"], hybrid_loss(SCHED, eps_hat, x0, x_t, t, noise)["mse"])  # reported unweighted
    assert float(w[-1]) > 1e4 and float(w[0]) < 1e-3  # high noise counts, nearly clean steps are capped
    with pytest.raises(ValueError, match="gamma must be > 0"):
        v_loss_weight(SCHED, t, gamma=0.0)


def test_vb_is_zero_for_the_true_posterior():
    x0, noise, t, x_t = _batch([5, 300, 999])
    out = torch.cat([noise, -torch.ones_like(noise)], dim=1)  # true ε, v = -1 -> posterior variance
    losses = hybrid_loss(SCHED, out, x0, x_t, t, noise)
    assert float(losses["vb"].abs().max()) < 1e-4
    assert float(losses["mse"].abs().max()) == 0.0


def test_vb_matches_hand_written_kl_with_lambda_t_scaling():
    x0, noise, t, x_t = _batch([200, 201])
    out = torch.cat([noise + 0.1, torch.full_like(noise, 0.3)], dim=1)
    vb = hybrid_loss(SCHED, out, x0, x_t, t, noise)["vb"]
    for k, tk in enumerate(t.tolist()):
        ac, ac_prev, beta = SCHED.alphas_cumprod[tk], SCHED.alphas_cumprod_prev[tk], SCHED.betas[tk]
        x0_hat = (x_t[k].double() - math.sqrt(1 - ac) * (noise[k].double() + 0.1)) / math.sqrt(ac)
        c1 = beta * math.sqrt(ac_prev) / (1 - ac)
        c2 = (1 - ac_prev) * math.sqrt(1 - beta) / (1 - ac)
        post_var = beta * (1 - ac_prev) / (1 - ac)
        log_var_p = 0.65 * math.log(beta) + 0.35 * math.log(post_var)
        mean_q = c1 * x0[k].double() + c2 * x_t[k].double()
        mean_p = c1 * x0_hat + c2 * x_t[k].double()
        kl = 0.5 * (-1 + log_var_p - math.log(post_var) + math.exp(math.log(post_var) - log_var_p)
                    + (mean_q - mean_p) ** 2 / math.exp(log_var_p))
        expected = kl.mean().item() / math.log(2) * (1e-3 * 1000)
        assert abs(vb[k].item() - expected) < 1e-4 * max(1.0, abs(expected))


def test_first_step_uses_the_gaussian_nll():
    x0, noise, t, x_t = _batch([0])
    out = torch.cat([noise, torch.zeros_like(noise)], dim=1)
    vb = hybrid_loss(SCHED, out, x0, x_t, t, noise)["vb"].item()
    log_var = 0.5 * math.log(SCHED.betas[0]) + 0.5 * SCHED.posterior_log_variance_clipped[0]
    # with the true ε the model mean at t = 0 is x0 itself (coef1 = 1, coef2 = 0), so only the log-normaliser is left
    nll = 0.5 * (math.log(2 * math.pi) + log_var)
    assert abs(vb - nll / math.log(2)) < 1e-3


def test_vb_trains_only_the_variance_channels():
    x0, noise, t, x_t = _batch([50, 400])
    out = torch.cat([noise + 0.2, torch.zeros_like(noise)], dim=1).requires_grad_(True)
    hybrid_loss(SCHED, out, x0, x_t, t, noise)["vb"].sum().backward()
    assert float(out.grad[:, :2].abs().max()) == 0.0
    assert float(out.grad[:, 2:].abs().max()) > 0.0


def test_bad_inputs_are_rejected():
    x0, noise, t, x_t = _batch([1])
    with pytest.raises(ValueError, match="model output has 3 channels; expected 2 or 4"):
        hybrid_loss(SCHED, torch.zeros(1, 3, 4, 4), x0, x_t, t, noise)
    with pytest.raises(ValueError, match="x0, x_t and noise must share one shape"):
        hybrid_loss(SCHED, noise, x0, x_t[:, :1], t, noise)
    with pytest.raises(ValueError, match="valid mask has shape \\[3, 3\\], expected \\[4, 4\\]"):
        masked_mean(x0, torch.ones(3, 3, dtype=torch.bool))


def test_gaussian_kl_of_identical_gaussians_is_zero():
    m, lv = torch.randn(5), torch.randn(5)
    assert float(gaussian_kl(m, lv, m, lv).abs().max()) < 1e-6
