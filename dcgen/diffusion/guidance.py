"""Classifier-free guidance (SPEC §3; Ho & Salimans 2022): ε̃ = ε_uncond + s · (ε_cond − ε_uncond).

Guidance acts on the ε channels only; the learned-variance channels come from the conditional pass. At s = 1 the
unconditional pass is skipped, so the result is the conditional model exactly. The unconditional pass calls the
model with no conditions, which a DiT treats as every condition dropped.

Legend: B batch, C latent channels, S rollout side.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guide(out_cond_BCSS: torch.Tensor, out_uncond_BCSS: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """Combine a conditional and an unconditional output; channels past ``channels`` are taken from ``out_cond``."""
    eps_c, rest = out_cond_BCSS[:, :channels], out_cond_BCSS[:, channels:]
    eps_u = out_uncond_BCSS[:, :channels]
    return torch.cat([eps_u + scale * (eps_c - eps_u), rest], dim=1)


def guided_model_fn(model: Callable[..., torch.Tensor], cond: dict | None, scale: float) -> ModelFn:
    """A sampler model function for ``model(x, t, cond)`` under guidance scale ``scale`` (>= 0; 0 = unconditional,
    1 = plain conditional)."""
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"guidance scale must be a finite number >= 0, got {scale}")
    cond = dict(cond or {})
    if scale == 1.0 or not cond:
        return lambda x_BCSS, t_B: model(x_BCSS, t_B, cond)
    if scale == 0.0:
        return lambda x_BCSS, t_B: model(x_BCSS, t_B, {})

    def fn(x_BCSS: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        return guide(model(x_BCSS, t_B, cond), model(x_BCSS, t_B, {}), scale, x_BCSS.shape[1])

    return fn
