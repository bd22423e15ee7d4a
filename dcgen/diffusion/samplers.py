"""Reverse-diffusion samplers (SPEC §3): ancestral DDPM (Ho et al. 2020, Alg. 2, with the learned variance of
improved DDPM) and deterministic DDIM (Song et al. 2021, eq. 12, η = 0 by default).

Both take a model function ``(x_BCSS, t_B) -> ε`` or ``ε ⊕ v`` (t = the original training timesteps) and one
``torch.Generator`` per scene: every random draw of scene k comes from ``generators[k]`` alone, so a scene does not
depend on what it is batched with. Fewer steps respace the schedule (``NoiseSchedule.respace``). An optional
``valid_SS`` mask keeps the rollout padding at zero; an optional ``Inpainting`` constrains the known region; an
optional ``x0_range`` (lo, hi), broadcastable to the sample, clamps every denoised estimate x̂_0 (DDIM then
re-derives ε from the clamped x̂_0), which keeps a not-yet-precise network from drifting (``LatentNorm``).

Legend: B batch, C latent channels, S rollout side.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import torch

from dcgen.diffusion.schedule import NoiseSchedule, clamp_x0

if TYPE_CHECKING:
    from dcgen.diffusion.inpaint import Inpainting

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
DDIM_STEPS = 50


def per_sample_noise(generators: list[torch.Generator], shape: tuple[int, ...], device=None) -> torch.Tensor:
    """``[B, *shape]`` standard normal noise, row k drawn from ``generators[k]`` only."""
    rows = [torch.randn(shape, generator=g, device=g.device) for g in generators]
    return torch.stack(rows).to(device)


def _start(schedule: NoiseSchedule, shape: tuple[int, ...], generators: list[torch.Generator], num_steps: int,
           valid_SS: torch.Tensor | None, device):
    if len(shape) != 4:
        raise ValueError(f"sample shape must be [B, C, S, S], got {list(shape)}")
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per scene: {len(generators)} generators for a batch of {shape[0]}")
    if valid_SS is not None and tuple(valid_SS.shape) != tuple(shape[2:]):
        raise ValueError(f"valid mask has shape {list(valid_SS.shape)}, expected {list(shape[2:])}")
    sched = schedule.respace(num_steps)
    keep = 1.0 if valid_SS is None else valid_SS.to(device=device, dtype=torch.float32)
    x_BCSS = per_sample_noise(generators, tuple(shape[1:]), device) * keep
    return sched, keep, x_BCSS


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, schedule: NoiseSchedule, shape: tuple[int, ...],
                generators: list[torch.Generator], num_steps: int | None = None, valid_SS: torch.Tensor | None = None,
                inpaint: Inpainting | None = None, device=None,
                x0_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """x_{t-1} = μ_θ(x_t, t) + Σ_θ^{1/2} z for t = T..1, then x_0 = μ_θ(x_1, 1); variance learned if the model
    returns 2C channels, else β̃_t."""
    sched, keep, x = _start(schedule, shape, generators, num_steps or schedule.num_steps, valid_SS, device)
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
    sched, keep, x = _start(schedule, shape, generators, num_steps, valid_SS, device)
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
