"""The DiT's latent space: VAE μ rollouts standardised per channel, and the range a denoised estimate may take.

The VAE's μ has a per-channel offset and a spread well below 1 (about 0.3-0.6 on the synthetic city), while the
noise schedule assumes data of unit scale. Diffusion therefore runs on ``(μ - mean_C) / std_C`` (the latent
store's statistics, recorded in the DiT config so a checkpoint carries them), and the pipeline maps samples back
before decoding. Padding pixels of the rollout stay exactly zero in both spaces.

A DiT that is not yet precise at high noise levels predicts ε slightly off where x̂₀ = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t
amplifies the error ~150× (ᾱ_T ≈ 4e-5): without a bound the sampler drifts to latents 30× too large, which decode
to noise. The samplers clamp x̂₀ to ``[lo_C, hi_C]``, the per-channel range of the training latents widened by
``margin`` of its width on each side (the latent-space analogue of clipping images to [-1, 1] in DDPM).

Legend: B batch, C latent channels, S rollout side.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

DEFAULT_MARGIN = 0.1


@dataclass(frozen=True)
class LatentNorm:
    mean: tuple[float, ...]  # [C] of the raw μ over valid rollout pixels
    std: tuple[float, ...]  # [C]
    lo: tuple[float, ...] | None = None  # [C] lowest standardised value x̂₀ may take; None: unbounded
    hi: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        c = len(self.mean)
        if c < 1 or len(self.std) != c or any(not s > 0 for s in self.std):
            raise ValueError(f"latent normalisation needs C means and C positive stds, got {len(self.mean)} means "
                             f"and stds {list(self.std)}")
        if (self.lo is None) != (self.hi is None):
            raise ValueError("latent range needs both lo and hi, or neither")
        if self.lo is not None and (len(self.lo) != c or len(self.hi) != c
                                    or any(a >= b for a, b in zip(self.lo, self.hi))):
            raise ValueError(f"latent range needs C values with lo < hi, got lo={self.lo} hi={self.hi}")

    @classmethod
    def from_statistics(cls, mean_C, std_C, min_C=None, max_C=None, margin: float = DEFAULT_MARGIN) -> "LatentNorm":
        """From raw per-channel statistics; ``min_C``/``max_C`` (raw) give the x̂₀ range, widened by ``margin``."""
        mean = tuple(float(v) for v in mean_C)
        std = tuple(max(float(v), 1e-6) for v in std_C)
        if min_C is None or max_C is None:
            return cls(mean, std)
        lo = [(float(a) - m) / s for a, m, s in zip(min_C, mean, std)]
        hi = [(float(b) - m) / s for b, m, s in zip(max_C, mean, std)]
        width = [max(b - a, 1e-3) for a, b in zip(lo, hi)]
        return cls(mean, std, tuple(a - margin * w for a, w in zip(lo, width)),
                   tuple(b + margin * w for b, w in zip(hi, width)))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "LatentNorm | None":
        if d is None:
            return None
        tup = (lambda v: None if v is None else tuple(float(x) for x in v))
        return cls(tup(d["mean"]), tup(d["std"]), tup(d.get("lo")), tup(d.get("hi")))

    def _view(self, values, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    def normalize(self, raw_BCSS: torch.Tensor, valid_SS: torch.Tensor) -> torch.Tensor:
        """Raw μ rollouts -> DiT space (padding stays zero)."""
        return (raw_BCSS - self._view(self.mean, raw_BCSS)) / self._view(self.std, raw_BCSS) * valid_SS

    def denormalize(self, x_BCSS: torch.Tensor, valid_SS: torch.Tensor) -> torch.Tensor:
        """DiT-space rollouts -> raw μ (padding stays zero)."""
        return (x_BCSS * self._view(self.std, x_BCSS) + self._view(self.mean, x_BCSS)) * valid_SS

    def x0_range(self, device=None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``([1, C, 1, 1], [1, C, 1, 1])`` bounds of x̂₀ in DiT space, or None when unbounded."""
        if self.lo is None:
            return None
        like = torch.zeros((), device=device)
        return self._view(self.lo, like), self._view(self.hi, like)
