"""The DiT training loop (SPEC §3), plain PyTorch against a ``TrainContext``.

Latents (and previous-clip latents) are standardised per plane and channel first (the DiT config's
``latent_norm``). Each step minimises ``dcgen.diffusion.objective.diffusion_loss`` (t and ε drawn, x_t noised,
each condition dropped with p = 0.1 and all together with ``cond_drop_all``, the hybrid loss masked to the six
planes, min-SNR v-weighted for a v-prediction DiT). AdamW (lr 1e-4, wd 0), EMA of the weights (0.9999, warmed up
over the first steps; debug runs use a smaller decay), AMP bf16 on CUDA (and on CPU with ``cpu_bf16``). Every
epoch the validation loss of the EMA weights (fixed t and ε, so epochs compare) picks the best checkpoint;
checkpoints carry weights, EMA, optimizer, step, the DiT config (with its conditions), the schedule, the grid and
the id of the VAE that made the latents. Resumes from the context's latest checkpoint.

Legend: B batch, C latent channels, S rollout side.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dcgen import checkpoint, storage
from dcgen.diffusion.objective import diffusion_loss, to_dit_space
from dcgen.train.context import MetricsLog, TrainContext, autocast, unwrap

KIND = "dit"
VAL_SEED_OFFSET = 1_000_003


@dataclass(frozen=True)
class DiTTrainConfig:
    model: dict  # DiTConfig.to_dict()
    schedule: dict  # ScheduleConfig.to_dict()
    steps_per_epoch: int
    vae_checkpoint_id: str
    grid: dict  # Grid.to_dict() of the clips the latents encode
    vae_checkpoint: str = ""
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999
    cond_drop: float = 0.1
    cond_drop_all: float = 0.1  # every condition dropped together (objective.dropped_conditions); runs before: 0
    report_every: int = 20
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPU too
    out_dir: str | None = None  # run directory: metrics.jsonl, tensorboard/, best/, last/
    max_minutes: float | None = None  # stop (after a full epoch's checkpoint) once this much time has passed
    fail_at_step: int | None = None  # fault injection for restart tests: the worker process exits once there
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, p in (("condition dropout", self.cond_drop), ("all-conditions dropout", self.cond_drop_all)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {self.ema_decay}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.epochs < 1 or self.batch_size < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"epochs, batch size and steps per epoch must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}, {self.steps_per_epoch}")

    @classmethod
    def from_dict(cls, d: dict) -> "DiTTrainConfig":
        from dcgen import config

        return config.from_dict(cls, d)


def _generator(*key: int) -> torch.Generator:
    """A CPU generator from an integer key; draws are moved to the device (same numbers on CPU and CUDA)."""
    seed = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def evaluate(models: dict, ctx: TrainContext, schedule, conditions, valid_SS, batch_size: int, seed: int,
             amp: bool, norm=None, cpu_bf16: bool = False) -> dict[str, float]:
    """Validation loss of each model (``EpsModel``s) over this worker's shard with the same t and ε every epoch,
    reduced."""
    sums = torch.zeros(len(models) + 1, dtype=torch.float64, device=ctx.device)
    for model in models.values():
        model.net.eval()
    # every model sees the same t and noise: each batch replays the generator from the same state
    gen = _generator(seed, VAL_SEED_OFFSET, ctx.rank)
    for batch in ctx.batches("val", batch_size, epoch=0, shuffle=False):
        batch = to_dit_space(batch, norm, valid_SS)  # once for every model
        start = gen.get_state()
        for i, model in enumerate(models.values()):
            gen.set_state(start)
            sums[i] += diffusion_loss(model, schedule, batch, conditions, valid_SS, gen, 0.0,
                                      autocast(ctx.device, amp, cpu_bf16)).double().sum()
        sums[-1] += batch["latent"].shape[0]
    for model in models.values():
        model.net.train()
    sums = ctx.all_reduce(sums)
    n = max(float(sums[-1]), 1.0)
    return {f"val_loss{'' if name == 'ema' else '_' + name}": float(sums[i]) / n for i, name in enumerate(models)}


def train_dit(ctx: TrainContext, run: dict) -> dict:
    cfg = DiTTrainConfig.from_dict(run)
    from dcgen.diffusion.latent_norm import norm_from_dict
    from dcgen.diffusion.objective import EpsModel
    from dcgen.diffusion.schedule import NoiseSchedule, ScheduleConfig
    from dcgen.models.dit import DiT, DiTConfig
    from dcgen.train.ema import EMA

    torch.manual_seed(cfg.seed)
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model_cfg = DiTConfig.from_dict(cfg.model)
    schedule = NoiseSchedule.linear(ScheduleConfig.from_dict(cfg.schedule))
    if model_cfg.prediction == "v" and ScheduleConfig.from_dict(model_cfg.schedule) != ScheduleConfig.from_dict(
            cfg.schedule):
        raise ValueError(f"the DiT's v -> ε schedule {model_cfg.schedule} differs from the run's {cfg.schedule}")
    conditions = tuple(model_cfg.conditions)
    norm = norm_from_dict(model_cfg.latent_norm)
    model = ctx.prepare(DiT(model_cfg))
    net = unwrap(model)
    ema = EMA(net, cfg.ema_decay)
    eps_model, eps_ema, eps_net = EpsModel(model, model_cfg), EpsModel(ema.shadow), EpsModel(net)
    valid_SS = net.rollout.valid_mask(ctx.device).float()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, start_epoch, best = 0, 0, float("inf")
    total_steps = cfg.epochs * cfg.steps_per_epoch
    if (latest := ctx.latest_checkpoint()) is not None:
        meta, state = checkpoint.load(latest, kind=KIND, map_location=ctx.device)
        net.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"].cpu())  # loaded onto the device with the rest; the RNG state lives on CPU
        step, start_epoch, best = meta["step"], meta["epoch"] + 1, meta["best_val_loss"]
    log = MetricsLog(cfg.out_dir, enabled=ctx.rank == 0)
    gen = _generator(cfg.seed, ctx.rank, step)
    t0 = time.time()
    result = {"step": step, "best_val_loss": best}
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch, n_steps, train_sum = time.time(), 0, 0.0
        for batch in ctx.batches("train", cfg.batch_size, epoch, shuffle=True):
            if cfg.fail_at_step is not None and step == cfg.fail_at_step and cfg.out_dir:
                marker = Path(cfg.out_dir) / f".failed-at-{step}"
                if not marker.exists():
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
                    os._exit(1)
            loss = diffusion_loss(eps_model, schedule, batch, conditions, valid_SS, gen, cfg.cond_drop,
                                  autocast(ctx.device, cfg.amp, cfg.cpu_bf16), norm, cfg.cond_drop_all).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(net, step)
            step += 1
            n_steps += 1
            train_sum += float(loss.detach())
            ctx.progress(step, total_steps, epoch=f"{epoch + 1}/{cfg.epochs}", loss=train_sum / n_steps)
            if step % cfg.report_every == 0:
                log.log({"step": step, "epoch": epoch, "train_loss": float(loss.detach())})
        val = evaluate({"ema": eps_ema, "raw": eps_net}, ctx, schedule, conditions, valid_SS, cfg.batch_size,
                       cfg.seed, cfg.amp, norm, cfg.cpu_bf16)
        seconds = time.time() - t_epoch
        row = {"step": step, "epoch": epoch, **val, "train_loss": train_sum / max(n_steps, 1),
               "epoch_seconds": seconds, "s_per_iter": seconds / max(n_steps, 1)}
        is_best = val["val_loss"] < best
        best = min(best, val["val_loss"])
        row["best_val_loss"] = best
        ctx.progress(step, total_steps, val_loss=val["val_loss"])
        log.log(row)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt_dir = Path(tmp) / "checkpoint"
            if ctx.rank == 0:
                state = {"model": net.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(),
                         "rng": torch.get_rng_state()}
                checkpoint.save(ckpt_dir, kind=KIND, config=model_cfg.to_dict(), state=state, step=step,
                                metrics=row, extra=_meta_extra(cfg, epoch, best))
                if cfg.out_dir:  # a local path or a URI (checkpoint.save uploads)
                    export(ckpt_dir, storage.join(cfg.out_dir, "last"))
                    if is_best:
                        export(ckpt_dir, storage.join(cfg.out_dir, "best"))
            ctx.report(row, ckpt_dir if ctx.rank == 0 else None)
        result = row
        if cfg.max_minutes is not None:
            # every worker must stop after the same epoch, or the others wait forever in the next report
            late = torch.tensor([float(time.time() - t0 > cfg.max_minutes * 60)], device=ctx.device)
            if float(ctx.all_reduce(late)) > 0:
                break
    return result


def _meta_extra(cfg: DiTTrainConfig, epoch: int, best: float) -> dict:
    return {"epoch": epoch, "best_val_loss": best, "vae_checkpoint_id": cfg.vae_checkpoint_id,
            "vae_checkpoint": cfg.vae_checkpoint, "conditions": list(cfg.model["conditions"]),
            "schedule": dict(cfg.schedule), "grid": dict(cfg.grid), "ema_decay": cfg.ema_decay,
            "train": asdict(cfg)}


def export(src: Path, dest: Path) -> None:
    """Copy a checkpoint for sampling (weights and EMA weights, no optimizer), replacing ``dest`` atomically."""
    meta, state = checkpoint.load(src, kind=KIND)
    extra = {k: v for k, v in meta.items() if k not in ("format_version", "kind", "config", "step", "metrics",
                                                          "saved", "versions", "git_sha")}
    checkpoint.save(dest, kind=KIND, config=meta["config"], state={"model": state["model"], "ema": state["ema"]},
                    step=meta["step"], metrics=meta["metrics"], extra=extra)
