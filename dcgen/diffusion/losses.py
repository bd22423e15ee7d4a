"""Diffusion training loss (SPEC §3): ε-prediction MSE plus the variational bound term for a learned variance
(improved DDPM, Nichol & Dhariwal 2021, §3.1: L_hybrid = L_simple + λ L_vlb, λ = 1/1000), both averaged over the
valid rollout pixels only.

L_vlb = Σ_t L_t, so for one uniformly drawn t its unbiased estimate is T·L_t, and λ·T·L_t = L_t when T = 1000.
L_t (in bits per element) is KL(q(x_{t-1} | x_t, x_0) ‖ p(x_{t-1} | x_t)) for t > 0 and −log p(x_0 | x_1) at t = 0,
with the mean of p built from a stop-gradient ε so the VLB term trains only the variance. **Decision**: the t = 0 term
is the continuous Gaussian negative log-likelihood; the discretised 256-bin likelihood of improved DDPM assumes 8-bit
pixels in [-1, 1], which VAE latents are not.

A v-prediction DiT (``DiTConfig.prediction``, a recorded Decision there) trains on the same ε-MSE times
``v_loss_weight``: (1 + min(SNR_t, γ)) / SNR_t with SNR_t = ᾱ_t / (1 − ᾱ_t). Since ε̂ − ε = √ᾱ_t (v̂ − v) and
x̂_0 − x_0 = −√(1 − ᾱ_t) (v̂ − v), that is the v-space MSE with the weight of low-noise steps capped, and it weights
x̂_0 errors by 1 + min(SNR_t, γ): never less than 1 at high noise (where the plain ε-MSE gives them ~0, and a
condition's effect goes unlearned), at most 1 + γ at low noise (min-SNR-γ, Hang et al. 2023, keeps the nearly
clean steps from dominating). γ = 5 as in Min-SNR.

Legend: B batch, C channels, S rollout side.
"""

from __future__ import annotations

import math

import torch

from dcgen.diffusion.schedule import NoiseSchedule

VLB_WEIGHT = 1e-3
SNR_GAMMA = 5.0


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


def v_loss_weight(schedule: NoiseSchedule, t_B: torch.Tensor, gamma: float = SNR_GAMMA) -> torch.Tensor:
    """``[B]`` weight that turns the ε-MSE at timesteps ``t_B`` into the min-SNR-γ v-space MSE (module docstring)."""
    if not gamma > 0:
        raise ValueError(f"min-SNR gamma must be > 0, got {gamma}")
    ac = torch.as_tensor(schedule.alphas_cumprod, dtype=torch.float64, device=t_B.device)[t_B.long()]
    snr = ac / (1.0 - ac)
    return ((1.0 + snr.clamp(max=gamma)) / snr).float()


def hybrid_loss(schedule: NoiseSchedule, model_out_BCSS: torch.Tensor, x0_BCSS: torch.Tensor, x_t_BCSS: torch.Tensor,
                t_B: torch.Tensor, noise_BCSS: torch.Tensor, valid_SS: torch.Tensor | None = None,
                vlb_weight: float = VLB_WEIGHT, mse_weight_B: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``{"loss", "mse", "vb"}``, each ``[B]``; ``model_out`` is ε (C channels) or ε ⊕ v (2C, learned variance).
    ``mse_weight_B`` scales the ε-MSE inside ``loss`` (``v_loss_weight``); ``mse`` is reported unweighted."""
    c = x0_BCSS.shape[1]
    if x0_BCSS.shape != x_t_BCSS.shape or x0_BCSS.shape != noise_BCSS.shape:
        raise ValueError(f"x0, x_t and noise must share one shape, got {list(x0_BCSS.shape)}, "
                         f"{list(x_t_BCSS.shape)}, {list(noise_BCSS.shape)}")
    if model_out_BCSS.shape[1] not in (c, 2 * c):
        raise ValueError(f"model output has {model_out_BCSS.shape[1]} channels; expected {c} or {2 * c}")
    eps_BCSS = model_out_BCSS[:, :c]
    mse_B = masked_mean((eps_BCSS.float() - noise_BCSS.float()) ** 2, valid_SS)
    fit_B = mse_B if mse_weight_B is None else mse_B * mse_weight_B.to(mse_B)
    if model_out_BCSS.shape[1] == c:
        zeros_B = torch.zeros_like(mse_B)
        return {"loss": fit_B, "mse": mse_B, "vb": zeros_B}

    frozen_out = torch.cat([eps_BCSS.detach(), model_out_BCSS[:, c:]], dim=1).float()
    x0, x_t = x0_BCSS.float(), x_t_BCSS.float()
    mean_p, log_var_p, _ = schedule.p_mean_variance(frozen_out, x_t, t_B)
    mean_q, _, log_var_q = schedule.posterior(x0, x_t, t_B)
    kl_bits = gaussian_kl(mean_q, log_var_q, mean_p, log_var_p) / math.log(2.0)
    nll_bits = gaussian_nll(x0, mean_p, log_var_p) / math.log(2.0)
    first_B = (t_B == 0).reshape(-1, 1, 1, 1)
    vb_B = masked_mean(torch.where(first_B, nll_bits, kl_bits), valid_SS)
    vb_B = vb_B * (vlb_weight * schedule.num_steps)
    return {"loss": fit_B + vb_B, "mse": mse_B, "vb": vb_B}
