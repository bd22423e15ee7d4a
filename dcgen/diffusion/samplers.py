"""Reverse-diffusion samplers (SPEC §3): ancestral DDPM (Ho et al. 2020, Alg. 2, with the learned variance of
improved DDPM), deterministic DDIM (Song et al. 2021, eq. 12, η = 0 by default) and DPM-Solver++(2M) (Lu et al.
2022, "DPM-Solver++", Alg. 2: the probability-flow ODE solved multistep, second order in the log-SNR λ, on x̂_0).

All take a model function ``(x_BCSS, t_B) -> ε`` or ``ε ⊕ v`` (t = the original training timesteps) and one
``torch.Generator`` per scene: every random draw of scene k comes from ``generators[k]`` alone, so a scene does not
depend on what it is batched with. Fewer steps respace the schedule (``NoiseSchedule.respace``; DPM-Solver++ picks
its own, ``dpmpp_timesteps``). An optional ``valid_SS`` mask keeps the rollout padding at zero; an optional
``Inpainting`` constrains the known region; an optional ``x0_range`` (lo, hi), broadcastable to the sample, clamps
every denoised estimate x̂_0 (DDIM then re-derives ε from the clamped x̂_0; DPM-Solver++ steps on x̂_0 itself), which
keeps a not-yet-precise network from drifting (``LatentNorm``).

DPM-Solver++ steps are uniform in λ, rounded to whole training timesteps (a v network takes no others): at 10 steps
on Gaussian data and Gaussian mixtures with the exact ε, this spacing came closer to the data (1-Wasserstein) than
uniform or quadratic time spacing. Its last step, from the cleanest evaluated timestep to σ = 0, is first order
(x_0 = x̂_0), the paper's "lower order final" for few steps.

Legend: B batch, C latent channels, S rollout side.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from dcgen.diffusion.schedule import NoiseSchedule, clamp_x0

if TYPE_CHECKING:
    from dcgen.diffusion.inpaint import Inpainting

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DDIM_STEPS = 50
DPMPP_STEPS = 10


def per_sample_noise(generators: list[torch.Generator], shape: tuple[int, ...], device=None) -> torch.Tensor:
    """``[B, *shape]`` standard normal noise, row k drawn from ``generators[k]`` only."""
    rows = [torch.randn(shape, generator=g, device=g.device) for g in generators]
    return torch.stack(rows).to(device)


def _start(shape: tuple[int, ...], generators: list[torch.Generator], valid_SS: torch.Tensor | None, device):
    """The padding mask (1.0 without one) and the starting noise x_T, after checking the arguments."""
    if len(shape) != 4:
        raise ValueError(f"sample shape must be [B, C, S, S], got {list(shape)}")
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per scene: {len(generators)} generators for a batch of {shape[0]}")
    if valid_SS is not None and tuple(valid_SS.shape) != tuple(shape[2:]):
        raise ValueError(f"valid mask has shape {list(valid_SS.shape)}, expected {list(shape[2:])}")
    keep = 1.0 if valid_SS is None else valid_SS.to(device=device, dtype=torch.float32)
    x_BCSS = per_sample_noise(generators, tuple(shape[1:]), device) * keep
    return keep, x_BCSS


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, schedule: NoiseSchedule, shape: tuple[int, ...],
                generators: list[torch.Generator], num_steps: int | None = None, valid_SS: torch.Tensor | None = None,
                inpaint: Inpainting | None = None, device=None,
                x0_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """x_{t-1} = μ_θ(x_t, t) + Σ_θ^{1/2} z for t = T..1, then x_0 = μ_θ(x_1, 1); variance learned if the model
    returns 2C channels, else β̃_t."""
    sched = schedule.respace(num_steps or schedule.num_steps)
    keep, x = _start(shape, generators, valid_SS, device)
    for i in reversed(range(sched.num_steps)):
        t_B = torch.full((shape[0],), i, dtype=torch.long, device=x.device)
        if inpaint is not None:
            x = inpaint.constrain(x, sched, t_B, generators)
        mean, log_var, _ = sched.p_mean_variance(model_fn(x, sched.model_timesteps(t_B)), x, t_B, x0_range)
        x = mean
        if i > 0:
            x = x + torch.exp(0.5 * log_var) * per_sample_noise(generators, tuple(shape[1:]), x.device)
        x = x * keep
    return x if inpaint is None else inpaint.finish(x)


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, schedule: NoiseSchedule, shape: tuple[int, ...],
                generators: list[torch.Generator], num_steps: int = DDIM_STEPS, eta: float = 0.0,
                valid_SS: torch.Tensor | None = None, inpaint: Inpainting | None = None, device=None,
                x0_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 − ᾱ_{t-1} − σ_t²) ε_θ + σ_t z, σ_t = η √((1 − ᾱ_{t-1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t-1})."""
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"DDIM eta must be in [0, 1], got {eta}")
    sched = schedule.respace(num_steps)
    keep, x = _start(shape, generators, valid_SS, device)
    c = shape[1]
    for i in reversed(range(sched.num_steps)):
        t_B = torch.full((shape[0],), i, dtype=torch.long, device=x.device)
        if inpaint is not None:
            x = inpaint.constrain(x, sched, t_B, generators)
        eps = model_fn(x, sched.model_timesteps(t_B))[:, :c].float()
        x0 = sched.predict_x0(x, t_B, eps)
        if x0_range is not None:
            x0 = clamp_x0(x0, x0_range)
            eps = sched.predict_eps(x, t_B, x0)
        # Step coefficients are the same for the whole batch: take them as float64 scalars.
        ac, ac_prev = float(sched.alphas_cumprod[i]), float(sched.alphas_cumprod_prev[i])
        sigma = eta * math.sqrt((1 - ac_prev) / (1 - ac) * (1 - ac / ac_prev))
        x = math.sqrt(ac_prev) * x0 + math.sqrt(1 - ac_prev - sigma ** 2) * eps
        if eta > 0 and i > 0:
            x = x + sigma * per_sample_noise(generators, tuple(shape[1:]), x.device)
        x = x * keep
    return x if inpaint is None else inpaint.finish(x)


def dpmpp_timesteps(schedule: NoiseSchedule, num_steps: int) -> np.ndarray:
    """The ``num_steps`` schedule indices DPM-Solver++ evaluates, increasing: ``num_steps + 1`` points uniform in λ
    from the noisiest index to index 0, each rounded to the nearest index, less index 0 itself (from the cleanest
    evaluated index the last step goes straight to x̂_0). Where the λ grid is finer than the indices (near 0, from
    38 steps on the linear schedule) a point moves to the next free index, so the steps stay distinct."""
    n = schedule.num_steps
    if int(num_steps) != num_steps or not 2 <= num_steps <= n - 1:
        raise ValueError(f"DPM-Solver++ takes 2..{n - 1} steps (a second-order multistep method: 1 step is a single "
                         f"x̂_0 guess from pure noise), got {num_steps!r}")
    lam_T = schedule.log_snr
    grid = np.linspace(lam_T[0], lam_T[-1], int(num_steps) + 1)  # index 0 .. noisiest, λ decreasing
    keep = np.abs(lam_T[None, :] - grid[:, None]).argmin(axis=1)
    for k in range(1, len(keep)):  # from index 0 up: distinct, strictly increasing
        keep[k] = max(keep[k], keep[k - 1] + 1)
    keep[-1] = n - 1
    for k in range(len(keep) - 2, -1, -1):  # from the noisiest down: within the schedule
        keep[k] = min(keep[k], keep[k + 1] - 1)
    return keep[1:]


@torch.no_grad()
def dpmpp_sample(model_fn: ModelFn, schedule: NoiseSchedule, shape: tuple[int, ...],
                 generators: list[torch.Generator], num_steps: int = DPMPP_STEPS,
                 valid_SS: torch.Tensor | None = None, inpaint: Inpainting | None = None, device=None,
                 x0_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction in λ = log(α/σ), α = √ᾱ, σ = √(1 − ᾱ): from s to t,
    h = λ_t − λ_s, x_t = (σ_t/σ_s) x_s + α_t (1 − e^{−h}) D with D = x̂_0(s) at the first step, else
    (1 + 1/2r) x̂_0(s) − (1/2r) x̂_0(s'), r = h_{s'→s}/h; the last step, to σ = 0, is first order: x_0 = x̂_0."""
    sched = schedule.subset(dpmpp_timesteps(schedule, num_steps))
    keep, x = _start(shape, generators, valid_SS, device)
    c = shape[1]
    alpha, sigma, lam = sched.sqrt_alphas_cumprod, sched.sqrt_one_minus_alphas_cumprod, sched.log_snr
    x0_prev, h_prev = None, None
    for i in reversed(range(sched.num_steps)):
        t_B = torch.full((shape[0],), i, dtype=torch.long, device=x.device)
        if inpaint is not None:
            x = inpaint.constrain(x, sched, t_B, generators)
        eps = model_fn(x, sched.model_timesteps(t_B))[:, :c].float()
        x0 = clamp_x0(sched.predict_x0(x, t_B, eps), x0_range)
        if i == 0:
            x = x0 * keep
            break
        # Step coefficients are the same for the whole batch: float64 scalars.
        h = float(lam[i - 1] - lam[i])
        d = x0 if x0_prev is None else x0 + (x0 - x0_prev) * (h / (2.0 * h_prev))
        x = (float(sigma[i - 1] / sigma[i]) * x - float(alpha[i - 1] * math.expm1(-h)) * d) * keep
        x0_prev, h_prev = x0, h
    return x if inpaint is None else inpaint.finish(x)
