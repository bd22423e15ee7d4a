"""Diffusion training loss (SPEC §3): ε-prediction MSE plus the variational bound term for a learned variance
(improved DDPM, Nichol & Dhariwal 2021, §3.1: L_hybrid = L_simple + λ L_vlb, λ = 1/1000), both averaged over the
valid rollout pixels only.

L_vlb = Σ_t L_t, so for one uniformly drawn t its unbiased estimate is T·L_t, and λ·T·L_t = L_t when T = 1000.
L_t (in bits per element) is KL(q(x_{t-1} | x_t, x_0) ‖ p(x_{t-1} | x_t)) for t > 0 and −log p(x_0 | x_1) at t = 0,
with the mean of p built from a stop-gradient ε so the VLB term trains only the variance. **Decision**: the t = 0 term
is the continuous Gaussian negative log-likelihood; the discretised 256-bin likelihood of improved DDPM assumes 8-bit
pixels in [-1, 1], which VAE latents are not.

Legend: B batch, C channels, S rollout side.
"""

from __future__ import annotations

import math

import torch

from dcgen.diffusion.schedule import NoiseSchedule

VLB_WEIGHT = 1e-3


def gaussian_kl(mean1, log_var1, mean2, log_var2) -> torch.Tensor:
    """KL(N(mean1, e^log_var1) ‖ N(mean2, e^log_var2)) per element, in nats."""
    return 0.5 * (-1.0 + log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2))


def gaussian_nll(x, mean, log_var) -> torch.Tensor:
    """−log N(x; mean, e^log_var) per element, in nats."""
    return 0.5 * (math.log(2.0 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def masked_mean(value_BCSS: torch.Tensor, valid_SS: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean over channels and the valid pixels: ``[B, C, S, S]`` -> ``[B]``."""
    if valid_SS is None:
        return value_BCSS.flatten(1).mean(1)
    if tuple(valid_SS.shape) != tuple(value_BCSS.shape[2:]):
        raise ValueError(f"valid mask has shape {list(valid_SS.shape)}, expected {list(value_BCSS.shape[2:])}")
    w_SS = valid_SS.to(value_BCSS.dtype)
    return (value_BCSS * w_SS).sum(dim=(1, 2, 3)) / (w_SS.sum() * value_BCSS.shape[1])


def hybrid_loss(schedule: NoiseSchedule, model_out_BCSS: torch.Tensor, x0_BCSS: torch.Tensor, x_t_BCSS: torch.Tensor,
                t_B: torch.Tensor, noise_BCSS: torch.Tensor, valid_SS: torch.Tensor | None = None,
                vlb_weight: float = VLB_WEIGHT) -> dict[str, torch.Tensor]:
    """``{"loss", "mse", "vb"}``, each ``[B]``; ``model_out`` is ε (C channels) or ε ⊕ v (2C, learned variance)."""
    c = x0_BCSS.shape[1]
    if x0_BCSS.shape != x_t_BCSS.shape or x0_BCSS.shape != noise_BCSS.shape:
        raise ValueError(f"x0, x_t and noise must share one shape, got {list(x0_BCSS.shape)}, "
                         f"{list(x_t_BCSS.shape)}, {list(noise_BCSS.shape)}")
    if model_out_BCSS.shape[1] not in (c, 2 * c):
        raise ValueError(f"model output has {model_out_BCSS.shape[1]} channels; expected {c} or {2 * c}")
    eps_BCSS = model_out_BCSS[:, :c]
    mse_B = masked_mean((eps_BCSS.float() - noise_BCSS.float()) ** 2, valid_SS)
    if model_out_BCSS.shape[1] == c:
        zeros_B = torch.zeros_like(mse_B)
        return {"loss": mse_B, "mse": mse_B, "vb": zeros_B}

    frozen_out = torch.cat([eps_BCSS.detach(), model_out_BCSS[:, c:]], dim=1).float()
    x0, x_t = x0_BCSS.float(), x_t_BCSS.float()
    mean_p, log_var_p, _ = schedule.p_mean_variance(frozen_out, x_t, t_B)
    mean_q, _, log_var_q = schedule.posterior(x0, x_t, t_B)
    kl_bits = gaussian_kl(mean_q, log_var_q, mean_p, log_var_p) / math.log(2.0)
    nll_bits = gaussian_nll(x0, mean_p, log_var_p) / math.log(2.0)
    first_B = (t_B == 0).reshape(-1, 1, 1, 1)
    vb_B = masked_mean(torch.where(first_B, nll_bits, kl_bits), valid_SS)
    vb_B = vb_B * (vlb_weight * schedule.num_steps)
    return {"loss": mse_B + vb_B, "mse": mse_B, "vb": vb_B}
