"""The Gaussian noise schedule (SPEC §3; DDPM, Ho et al. 2020, eqs. 4, 6, 7; improved DDPM, Nichol & Dhariwal 2021).

Linear β from 1e-4 to 0.02 over 1000 steps. Every derived quantity is computed once in float64 numpy and handed to
torch per call as float32 on the input's device. ``respace`` keeps a subset of the timesteps and re-derives β from
ᾱ on that subset (improved DDPM §4), so fewer-step samplers reuse the same formulas; ``timesteps[i]`` is the original
timestep fed to the network at index i.

Legend: B batch; ``x_*`` tensors are ``[B, ...]``; ``t_B`` holds schedule indices (0 = least noisy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ScheduleConfig:
    num_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"schedule num_steps must be >= 1, got {self.num_steps}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"schedule betas must satisfy 0 < beta_start <= beta_end < 1, "
                             f"got {self.beta_start} and {self.beta_end}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScheduleConfig":
        from dcgen import config

        return config.from_dict(cls, d)


class NoiseSchedule:
    """ᾱ and the posterior q(x_{t-1} | x_t, x_0) for a (possibly respaced) set of timesteps."""

    def __init__(self, betas: np.ndarray, timesteps: np.ndarray | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
            raise ValueError(f"betas must be a 1-D array in (0, 1), got shape {betas.shape}")
        self.betas = betas
        self.num_steps = len(betas)
        self.timesteps = np.arange(self.num_steps) if timesteps is None else np.asarray(timesteps, dtype=np.int64)
        self.alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # β̃_t = β_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t): the variance of q(x_{t-1} | x_t, x_0), DDPM eq. 7.
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0; its log is clipped to β̃_1 so the learned-variance interpolation stays finite.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]) if self.num_steps > 1
            else np.array([betas[0]]))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)
        self.log_betas = np.log(betas)

    @classmethod
    def linear(cls, config: ScheduleConfig = ScheduleConfig()) -> "NoiseSchedule":
        return cls(np.linspace(config.beta_start, config.beta_end, config.num_steps, dtype=np.float64))

    def respace(self, num_steps: int) -> "NoiseSchedule":
        """``num_steps`` evenly spread timesteps from the noisiest to the cleanest, with β re-derived from ᾱ."""
        if not 1 <= num_steps <= self.num_steps:
            raise ValueError(f"respaced step count must be in [1, {self.num_steps}], got {num_steps}")
        if num_steps == self.num_steps:
            return self
        return self.subset(np.round(np.linspace(self.num_steps - 1, 0, num_steps)[::-1]).astype(np.int64))

    def subset(self, keep: np.ndarray) -> "NoiseSchedule":
        """The schedule on the strictly increasing indices ``keep``, with β re-derived from ᾱ (same ᾱ there)."""
        keep = np.asarray(keep, dtype=np.int64)
        if keep.ndim != 1 or not len(keep) or keep[0] < 0 or keep[-1] >= self.num_steps or (np.diff(keep) <= 0).any():
            raise ValueError(f"schedule subset must be strictly increasing indices in [0, {self.num_steps - 1}], "
                             f"got {keep.tolist()}")
        ac = self.alphas_cumprod[keep]
        betas = 1.0 - ac / np.append(1.0, ac[:-1])
        return NoiseSchedule(betas, self.timesteps[keep])

    @property
    def log_snr(self) -> np.ndarray:
        """λ_t = log(α_t / σ_t) with α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t): decreasing in t (DPM-Solver's time variable)."""
        return 0.5 * (np.log(self.alphas_cumprod) - np.log1p(-self.alphas_cumprod))

    def coef(self, name: str, t_B: torch.Tensor, ndim: int) -> torch.Tensor:
        """``getattr(self, name)[t]`` as float32 ``[B, 1, ...]`` broadcastable against an ``ndim`` tensor."""
        table = torch.as_tensor(getattr(self, name), device=t_B.device)
        return table[t_B.long()].to(torch.float32).reshape(-1, *([1] * (ndim - 1)))

    def model_timesteps(self, t_B: torch.Tensor) -> torch.Tensor:
        """Original timesteps the network was trained on, for schedule indices ``t_B``."""
        return torch.as_tensor(self.timesteps, device=t_B.device)[t_B.long()]

    def q_sample(self, x0: torch.Tensor, t_B: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4)."""
        return (self.coef("sqrt_alphas_cumprod", t_B, x0.ndim) * x0
                + self.coef("sqrt_one_minus_alphas_cumprod", t_B, x0.ndim) * noise)

    def predict_x0(self, x_t: torch.Tensor, t_B: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε) / √ᾱ_t."""
        return (self.coef("sqrt_recip_alphas_cumprod", t_B, x_t.ndim) * x_t
                - self.coef("sqrt_recipm1_alphas_cumprod", t_B, x_t.ndim) * eps)

    def predict_eps(self, x_t: torch.Tensor, t_B: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """ε recovered from x_t and x_0, the inverse of ``predict_x0``."""
        return ((self.coef("sqrt_recip_alphas_cumprod", t_B, x_t.ndim) * x_t - x0)
                / self.coef("sqrt_recipm1_alphas_cumprod", t_B, x_t.ndim))

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t_B: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7)."""
        n = x_t.ndim
        mean = self.coef("posterior_mean_coef1", t_B, n) * x0 + self.coef("posterior_mean_coef2", t_B, n) * x_t
        return mean, self.coef("posterior_variance", t_B, n), self.coef("posterior_log_variance_clipped", t_B, n)

    def model_log_variance(self, v: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        """Learned log-variance: log Σ = f log β_t + (1 − f) log β̃_t with f = (v + 1) / 2 (improved DDPM eq. 15)."""
        frac = (v + 1.0) / 2.0
        return (frac * self.coef("log_betas", t_B, v.ndim)
                + (1.0 - frac) * self.coef("posterior_log_variance_clipped", t_B, v.ndim))

    def p_mean_variance(self, model_out: torch.Tensor, x_t: torch.Tensor, t_B: torch.Tensor,
                        x0_range: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Mean, log-variance and x̂_0 of p(x_{t-1} | x_t) from a network output of ε (C channels, fixed
        variance β̃_t) or ε ⊕ v (2C channels, learned variance); ``x0_range`` (lo, hi) clamps x̂_0 first."""
        c = x_t.shape[1]
        if model_out.shape[1] == 2 * c:
            eps, v = model_out[:, :c], model_out[:, c:]
            log_var = self.model_log_variance(v, t_B)
        elif model_out.shape[1] == c:
            eps = model_out
            log_var = self.coef("posterior_log_variance_clipped", t_B, x_t.ndim).expand_as(x_t)
        else:
            raise ValueError(f"model output has {model_out.shape[1]} channels; expected {c} (ε) or {2 * c} (ε, v)")
        x0 = clamp_x0(self.predict_x0(x_t, t_B, eps), x0_range)
        mean, _, _ = self.posterior(x0, x_t, t_B)
        return mean, log_var, x0


def clamp_x0(x0: torch.Tensor, x0_range: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """x̂_0 clamped to ``(lo, hi)`` (broadcastable bounds), or as it is without a range."""
    return x0 if x0_range is None else x0.clamp(x0_range[0], x0_range[1])
