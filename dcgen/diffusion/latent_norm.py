"""The DiT's latent space: VAE μ rollouts standardised per channel, and the range a denoised estimate may take.

The VAE's μ has a per-channel offset and a spread well below 1 (about 0.3-0.6 on the synthetic city), while the
noise schedule assumes data of unit scale. Diffusion therefore runs on ``(μ - mean_C) / std_C`` (the latent
store's statistics, recorded in the DiT config so a checkpoint carries them), and the pipeline maps samples back
before decoding. Padding pixels of the rollout stay exactly zero in both spaces.

A DiT that is not yet precise at high noise levels predicts ε slightly off where x̂₀ = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t
amplifies the error ~150× (ᾱ_T ≈ 4e-5): without a bound the sampler drifts to latents 30× too large, which decode
to noise. The samplers clamp x̂₀ to ``[lo_C, hi_C]``, the per-channel range of the training latents widened by
``margin`` of its width on each side (the latent-space analogue of clipping images to [-1, 1] in DDPM).

**Per plane** (``PlaneLatentNorm``, what new DiT runs use): each of the six planes is standardised by its own
per-channel statistics. The time planes (tx, ty, tz) hold a nearly constant code per channel whose small change
along t is all the clip's motion: on the small preset's latents, standardised per channel over every plane, their
spread along t is 0.04-0.07 around offsets of 0.7-1.6, so a DiT error of a few hundredths in DiT space is flicker.
Standardising them by their own mean and spread gives that motion unit scale, as the noise schedule assumes.

Legend: B batch, C latent channels, S rollout side, P planes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from dcgen.data.grid import PLANE_NAMES, LatentDims

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


@dataclass(frozen=True)
class PlaneLatentNorm:
    """``LatentNorm`` per plane: the block of plane ``p`` of the rollout is standardised by ``planes[p]``."""

    dims: LatentDims
    planes: dict[str, LatentNorm]
    # the [1, C, S, S] maps built so far, by (statistic, padding value, dtype, device): one per training run and
    # device, not one per batch
    _maps: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if sorted(self.planes) != sorted(PLANE_NAMES):
            raise ValueError(f"per-plane latent normalisation needs the planes {list(PLANE_NAMES)}, got "
                             f"{sorted(self.planes)}")
        bad = [n for n, p in self.planes.items() if len(p.mean) != self.dims.channels]
        if bad:
            raise ValueError(f"planes {bad} have statistics of other than the latents' {self.dims.channels} channels")
        if len({p.lo is None for p in self.planes.values()}) != 1:
            raise ValueError("latent range needs lo and hi on every plane, or on none")

    @classmethod
    def from_statistics(cls, dims: LatentDims, stats: dict[str, dict], margin: float = DEFAULT_MARGIN
                        ) -> "PlaneLatentNorm":
        """From raw per-plane, per-channel statistics ``{plane: {mean, std, min, max}}`` (``plane_statistics``)."""
        missing = [n for n in PLANE_NAMES if n not in stats]
        if missing:
            raise ValueError(f"per-plane latent statistics lack the planes {missing}")
        return cls(dims, {n: LatentNorm.from_statistics(stats[n]["mean"], stats[n]["std"], stats[n].get("min"),
                                                        stats[n].get("max"), margin) for n in PLANE_NAMES})

    def to_dict(self) -> dict:
        return {"dims": asdict(self.dims), "planes": {n: self.planes[n].to_dict() for n in PLANE_NAMES}}

    def _map(self, stat: str, pad: float, like: torch.Tensor) -> torch.Tensor:
        """``[1, C, S, S]`` of one statistic, each plane's values over its block, ``pad`` on the padding (built once
        per dtype and device; callers must not write into it)."""
        from dcgen.models.rollout import RolloutLayout

        key = (stat, pad, like.dtype, like.device)
        if key not in self._maps:
            rollout = RolloutLayout(self.dims, patch=1)  # where the planes sit does not depend on the patch
            s, c = rollout.size, self.dims.channels
            out = torch.full((1, c, s, s), pad, dtype=like.dtype, device=like.device)
            for name, blk in rollout.blocks.items():
                values = torch.tensor(getattr(self.planes[name], stat), dtype=like.dtype, device=like.device)
                out[:, :, blk.row:blk.row + blk.rows, blk.col:blk.col + blk.cols] = values.view(1, c, 1, 1)
            self._maps[key] = out
        return self._maps[key]

    def normalize(self, raw_BCSS: torch.Tensor, valid_SS: torch.Tensor) -> torch.Tensor:
        """Raw μ rollouts -> DiT space (padding stays zero)."""
        return (raw_BCSS - self._map("mean", 0.0, raw_BCSS)) / self._map("std", 1.0, raw_BCSS) * valid_SS

    def denormalize(self, x_BCSS: torch.Tensor, valid_SS: torch.Tensor) -> torch.Tensor:
        """DiT-space rollouts -> raw μ (padding stays zero)."""
        return (x_BCSS * self._map("std", 1.0, x_BCSS) + self._map("mean", 0.0, x_BCSS)) * valid_SS

    def x0_range(self, device=None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``([1, C, S, S], [1, C, S, S])`` bounds of x̂₀ in DiT space (0 on the padding), or None when unbounded."""
        if self.planes[PLANE_NAMES[0]].lo is None:
            return None
        like = torch.zeros((), device=device)
        return self._map("lo", 0.0, like), self._map("hi", 0.0, like)


def norm_from_dict(d: dict | None) -> LatentNorm | PlaneLatentNorm | None:
    """The normalisation a DiT config records: per plane (``planes``), per channel (older runs), or None."""
    if d is None:
        return None
    if "planes" in d:
        return PlaneLatentNorm(LatentDims(**d["dims"]),
                               {n: LatentNorm.from_dict(v) for n, v in d["planes"].items()})
    return LatentNorm.from_dict(d)


def plane_moments(latent_BCSS: torch.Tensor, dims: LatentDims) -> dict[str, np.ndarray]:
    """Each rollout's moments over each plane's pixels: ``sum``, ``sumsq``, ``min`` and ``max`` as ``[B, P, C]``
    float64 arrays, planes in ``PLANE_NAMES`` order (what ``PlaneMoments.add`` takes)."""
    from dcgen.models.rollout import RolloutLayout

    planes = RolloutLayout(dims, patch=1).unpack(latent_BCSS)  # where the planes sit does not depend on the patch
    b, c = latent_BCSS.shape[:2]
    v_BCN = [planes[n].double().reshape(b, c, -1) for n in PLANE_NAMES]  # planes of different pixel counts
    reductions = {"sum": lambda v: v.sum(2), "sumsq": lambda v: v.square().sum(2), "min": lambda v: v.amin(2),
                  "max": lambda v: v.amax(2)}
    return {k: torch.stack([f(v) for v in v_BCN], dim=1).cpu().numpy() for k, f in reductions.items()}


class PlaneMoments:
    """Running per-plane, per-channel moments of latent rollouts, merged from ``plane_moments`` of any number of
    chunks (the encode actors' batches, or a store read through); gives the statistics per plane (``planes``) and
    per channel over every plane (``channels``)."""

    def __init__(self, dims: LatentDims):
        p, c = len(PLANE_NAMES), dims.channels
        self.pixels_P = np.array([a * b for _, a, b in (dims.plane_shape(n) for n in PLANE_NAMES)], dtype=np.float64)
        self.sum_PC, self.sumsq_PC = np.zeros((p, c)), np.zeros((p, c))
        self.min_PC, self.max_PC = np.full((p, c), np.inf), np.full((p, c), -np.inf)
        self.rollouts = 0

    def add(self, moments: dict[str, np.ndarray]) -> None:
        """Fold in ``plane_moments`` of a chunk (``[B, P, C]`` each)."""
        self.sum_PC += moments["sum"].sum(0)
        self.sumsq_PC += moments["sumsq"].sum(0)
        self.min_PC = np.minimum(self.min_PC, moments["min"].min(0))
        self.max_PC = np.maximum(self.max_PC, moments["max"].max(0))
        self.rollouts += len(moments["sum"])

    @staticmethod
    def _mean_std(total, total_sq, count) -> tuple[np.ndarray, np.ndarray]:
        mean = total / count
        return mean, np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))

    def _check(self) -> None:
        if self.rollouts == 0:
            raise ValueError("no latents to take statistics of")

    def planes(self) -> dict[str, dict[str, list[float]]]:
        """Raw per-plane, per-channel ``{plane: {mean, std, min, max}}`` (``PlaneLatentNorm.from_statistics``)."""
        self._check()
        mean, std = self._mean_std(self.sum_PC, self.sumsq_PC, self.pixels_P[:, None] * self.rollouts)
        return {n: {"mean": mean[i].tolist(), "std": std[i].tolist(), "min": self.min_PC[i].tolist(),
                    "max": self.max_PC[i].tolist()} for i, n in enumerate(PLANE_NAMES)}

    def channels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Raw per-channel mean, std, minimum and maximum over every plane's pixels (``LatentNorm``)."""
        self._check()
        mean, std = self._mean_std(self.sum_PC.sum(0), self.sumsq_PC.sum(0), self.pixels_P.sum() * self.rollouts)
        return mean, std, self.min_PC.min(0), self.max_PC.max(0)


def plane_statistics(latent_NCSS_chunks, dims: LatentDims) -> dict[str, dict[str, list[float]]]:
    """Raw per-plane, per-channel mean, std, min and max over an iterable of ``[N, C, S, S]`` rollout chunks."""
    moments = PlaneMoments(dims)
    for chunk in latent_NCSS_chunks:
        moments.add(plane_moments(torch.as_tensor(np.asarray(chunk, dtype=np.float32)), dims))
    return moments.planes()


def store_plane_statistics(store, chunk: int = 64) -> dict[str, dict[str, list[float]]]:
    """``plane_statistics`` of every latent of a ``LatentStore``: as recorded when the store was finished, else read
    through once (stores finished before they were recorded)."""
    if store.meta.get("latent_plane_stats") is not None:
        return store.meta["latent_plane_stats"]
    return plane_statistics((store.read(slice(a, min(a + chunk, store.num_clips)), ("latent",))["latent"]
                             for a in range(0, store.num_clips, chunk)), store.dims)
