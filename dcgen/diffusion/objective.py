"""The DiT's diffusion objective in one place (SPEC §3): the ε view of a network, the condition drops, and the
per-sample training loss, each a few lines a reviewer can check against its equation.

- ``EpsModel`` turns a network's output into ε̂. A v-prediction DiT (the presets' **Decision**, reasoning in
  ``dcgen/models/dit.py``) outputs v̂ = √ᾱ_t ε − √(1 − ᾱ_t) x_0 in its first C channels; since
  x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε, ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂. Samplers, guidance and the loss all work on ε̂, so
  the network itself knows no noise schedule.
- ``dropped_conditions`` draws classifier-free drops: each condition independently with probability p (SPEC), and
  every condition together with probability p_all. **Decision** (a departure from SPEC's independent drops alone):
  guidance and unconditional sampling run the network with every condition dropped, which independent drops reach
  with p^k: 0.1 % of the samples for k = 3 conditions at p = 0.1, about 25 of the 16 × 1,600 a 90-minute small-preset
  CPU run sees. p_all = 0.1 (``dcgen train dit --cond-drop-all``, 0 for SPEC's drops) trains that unconditional
  network on ~10 % of the samples, as single-condition classifier-free guidance does.
- ``diffusion_loss``: t ~ U{0..T−1}, ε ~ N(0, I) on the valid rollout pixels, x_t = q_sample(x_0, t, ε), the
  conditions dropped (``prev_clip`` always where a clip has none), and the hybrid loss of ``losses.py``
  (ε MSE, min-SNR v-weighted for a v network, + VLB for the learned variance).

Legend: B batch, C latent channels, S rollout side, T diffusion steps.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from dcgen.diffusion.latent_norm import LatentNorm, PlaneLatentNorm
from dcgen.diffusion.losses import hybrid_loss, v_loss_weight
from dcgen.diffusion.schedule import NoiseSchedule, ScheduleConfig
from dcgen.models.rollout import RolloutLayout

# latent-store batch key and dtype of each DiT condition (``prev_clip`` is the previous clip's latent)
CONDITION_SOURCES = {"command": ("command", torch.long), "trajectory": ("trajectory", torch.float32),
                     "layout": ("layout", torch.float32), "bev": ("bev", torch.long),
                     "prev_clip": ("prev_latent", torch.float32)}


class EpsModel:
    """``net`` seen as an ε network: ``(x_t, t, cond, drop) -> out`` whose first C channels are ε̂ whatever the
    network predicts (its ``config.prediction``), the rest (the learned variance) as the network gave them.

    ``net`` may be wrapped (DDP): its configuration is read from ``config``, default ``net.config``.
    """

    def __init__(self, net: Callable, config=None):
        cfg = config if config is not None else net.config
        self.net, self.prediction, self.channels = net, cfg.prediction, cfg.latent.channels
        self.rollout = RolloutLayout(cfg.latent, cfg.patch)
        self.schedule_config = ScheduleConfig.from_dict(cfg.schedule)
        self._tables: dict[torch.device, tuple[torch.Tensor, ...]] = {}
        self._valid_SS = None
        if self.prediction == "v":
            sched = NoiseSchedule.linear(self.schedule_config)
            self._sqrt_ac_T = torch.from_numpy(sched.sqrt_alphas_cumprod).float()
            self._sqrt_1m_ac_T = torch.from_numpy(sched.sqrt_one_minus_alphas_cumprod).float()

    @property
    def num_steps(self) -> int:
        return self.schedule_config.num_steps

    def __call__(self, x_BCSS: torch.Tensor, t_B: torch.Tensor, cond: dict | None = None,
                 drop: dict | None = None, **kwargs) -> torch.Tensor:
        if self.prediction == "v" and t_B.numel():
            n = self._sqrt_ac_T.shape[0]
            if bool(((t_B != t_B.round()) | (t_B < 0) | (t_B > n - 1)).any()):  # one device sync per call
                raise ValueError(f"a v-prediction DiT takes whole timesteps in [0, {n - 1}] (its ᾱ_t table), "
                                 f"got values in [{float(t_B.min())}, {float(t_B.max())}]")
        out_BCSS = self.net(x_BCSS, t_B, cond, drop, **kwargs)
        return self.v_to_eps(out_BCSS, x_BCSS, t_B) if self.prediction == "v" else out_BCSS

    def v_to_eps(self, out_BCSS: torch.Tensor, x_BCSS: torch.Tensor, t_B: torch.Tensor) -> torch.Tensor:
        """The output with its first C channels v̂ replaced by ε̂ = √(1 − ᾱ_t) x_t + √ᾱ_t v̂ (in float32); padding
        stays 0 whatever ``x_BCSS`` holds there (the network's output is 0 there)."""
        c, dev = self.channels, x_BCSS.device
        if dev not in self._tables:
            self._tables[dev] = (self._sqrt_ac_T.to(dev), self._sqrt_1m_ac_T.to(dev))
        sqrt_ac_T, sqrt_1m_ac_T = self._tables[dev]
        a_B111 = sqrt_ac_T[t_B.long()].reshape(-1, 1, 1, 1)
        s_B111 = sqrt_1m_ac_T[t_B.long()].reshape(-1, 1, 1, 1)
        x_valid_BCSS = x_BCSS.float() * self.valid_mask(x_BCSS)
        eps_BCSS = s_B111 * x_valid_BCSS + a_B111 * out_BCSS[:, :c].float()
        return torch.cat([eps_BCSS, out_BCSS[:, c:].float()], dim=1)

    def valid_mask(self, x_BCSS: torch.Tensor) -> torch.Tensor:
        """``[S, S]`` float mask of the six planes in the rollout."""
        if self._valid_SS is None or self._valid_SS.device != x_BCSS.device:
            self._valid_SS = self.rollout.valid_mask(x_BCSS.device).float()
        return self._valid_SS

    def check_schedule(self, schedule: NoiseSchedule) -> None:
        """Raise unless a v network's own ᾱ table (its v -> ε conversion) is the sampler's ``schedule``."""
        if self.prediction != "v":
            return
        mine = NoiseSchedule.linear(self.schedule_config)
        if not (len(schedule.sqrt_alphas_cumprod) == len(mine.sqrt_alphas_cumprod)
                and torch.allclose(torch.as_tensor(schedule.sqrt_alphas_cumprod),
                                   torch.as_tensor(mine.sqrt_alphas_cumprod), atol=1e-6)):
            raise ValueError(f"the v DiT turns its output into ε with its config's noise schedule "
                             f"{self.schedule_config.to_dict()} but sampling uses another ({schedule.num_steps} steps, "
                             f"ᾱ from {schedule.alphas_cumprod[0]:.6g} to {schedule.alphas_cumprod[-1]:.6g}); sample "
                             "with the schedule it was trained with (its checkpoint's 'schedule')")


def dropped_conditions(conditions: tuple[str, ...], batch: int, prob: float, generator: torch.Generator,
                       device=None, all_prob: float = 0.0) -> dict[str, torch.Tensor]:
    """Per-sample drop flags of each condition (classifier-free training): each dropped independently with
    probability ``prob``, and every one of a sample's conditions together with probability ``all_prob``."""
    for name, p in (("condition drop", prob), ("all-conditions drop", all_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} probability must be in [0, 1], got {p}")
    flags = torch.rand(len(conditions), batch, generator=generator, device=generator.device) < prob
    if all_prob > 0:  # drawn only when asked, so runs without it draw SPEC's numbers
        flags = flags | (torch.rand(batch, generator=generator, device=generator.device) < all_prob)
    return {name: flags[i].to(device) for i, name in enumerate(conditions)}


def batch_conditions(batch: dict[str, torch.Tensor], conditions: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The DiT condition tensors of a latent-store batch."""
    return {name: batch[CONDITION_SOURCES[name][0]].to(CONDITION_SOURCES[name][1]) for name in conditions}


def to_dit_space(batch: dict[str, torch.Tensor], norm: LatentNorm | PlaneLatentNorm | None,
                 valid_SS: torch.Tensor) -> dict[str, torch.Tensor]:
    """The batch with its latents (and previous-clip latents) standardised by ``norm``."""
    if norm is None:
        return batch
    out = dict(batch)
    for key in ("latent", "prev_latent"):
        if key in out:
            out[key] = norm.normalize(out[key].float(), valid_SS)
    return out


def diffusion_loss(model: EpsModel, schedule: NoiseSchedule, batch: dict[str, torch.Tensor],
                   conditions: tuple[str, ...], valid_SS: torch.Tensor, gen: torch.Generator, drop_prob: float,
                   precision: contextlib.AbstractContextManager | None = None,
                   norm: LatentNorm | PlaneLatentNorm | None = None, drop_all_prob: float = 0.0) -> torch.Tensor:
    """Per-sample hybrid loss ``[B]`` of one batch with t, ε and the condition drops (``dropped_conditions`` with
    ``drop_prob`` and ``drop_all_prob``) drawn from ``gen`` (on the CPU, so CPU and CUDA draw the same numbers);
    ``norm`` maps the store's raw latents into the DiT's space; ``precision`` is the autocast context the network
    runs in (None: as it is)."""
    batch = to_dit_space(batch, norm, valid_SS)
    x0_BCSS = batch["latent"].float()
    b, device = x0_BCSS.shape[0], x0_BCSS.device
    t_B = torch.randint(0, schedule.num_steps, (b,), generator=gen).to(device)
    noise_BCSS = (torch.randn(x0_BCSS.shape, generator=gen).to(device)) * valid_SS
    drop = dropped_conditions(conditions, b, drop_prob, gen, device, drop_all_prob)
    if "prev_clip" in drop:
        drop["prev_clip"] = drop["prev_clip"] | ~batch["has_prev"].bool()
    x_t_BCSS = schedule.q_sample(x0_BCSS, t_B, noise_BCSS)
    with precision if precision is not None else contextlib.nullcontext():
        out_BCSS = model(x_t_BCSS, t_B, batch_conditions(batch, conditions), drop)
    weight_B = v_loss_weight(schedule, t_B) if model.prediction == "v" else None
    return hybrid_loss(schedule, out_BCSS.float(), x0_BCSS, x_t_BCSS, t_B, noise_BCSS, valid_SS,
                       mse_weight_B=weight_B)["loss"]
