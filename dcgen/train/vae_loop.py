"""The VAE training loop (SPEC §2), plain PyTorch against a ``TrainContext``.

AdamW (lr 1e-3, wd 0), learning rate ×0.7 at 50/60/70/80/90 % of the run's steps (after an optional linear
warm-up, which the CPU preset's higher learning rate uses), loss = class-weighted CE +
Lovász-softmax + β·KL, validation mIoU every epoch (observed voxels only), best checkpoint by val mIoU. AMP (bf16)
and TF32 on CUDA; bf16 autocast on CPU when asked (``cpu_bf16``: 1.25–1.4× faster on CPUs with native bf16, e.g.
AVX512-BF16 or AMX, with gradients within 0.1 % in direction of float32's; without native bf16 it is slower).
Resumes from the context's latest checkpoint: weights, optimizer, step, epoch, best score and RNG;
the learning rate is a closed-form function of (step, total steps), so a resumed run with more epochs follows the
schedule of its new length. ``max_minutes`` stops training at the first step past the deadline (all workers agree),
then validates and checkpoints that last, possibly partial, epoch; the schedule's milestones also count as reached
at those shares of the deadline's time, so a run the deadline cuts short still steps its rate down (a resumed run
has a deadline of its own, so its clock starts again; its steps keep the milestones they reached).

Decoder fine-tuning (``init_from`` + ``freeze_encoder``, ``dcgen train decoder``): the run starts from a trained
VAE's weights, keeps its encoder (and so its latent space: the checkpoint records it as ``latent_space``, and a DiT
trained on the original's latents decodes through it) and trains the decoder on latents ``perturb``ed by
``latent_noise``, so that the small errors of a diffusion model's samples no longer turn into speckle and flicker.
Validation then decodes μ perturbed the same way with a fixed seed (``val_miou``, which picks the best
checkpoint) and μ itself (``val_miou_clean``).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dcgen import checkpoint, storage
from dcgen.train.context import MetricsLog, TrainContext, autocast, unwrap

KIND = "vae"
MILESTONES = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class VAETrainConfig:
    model: dict  # VAEConfig.to_dict()
    class_weights: list[float]
    steps_per_epoch: int
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta: float = 0.0015
    lovasz_weight: float = 1.0
    lr_gamma: float = 0.7
    warmup_steps: int = 0  # linear warm-up of the learning rate over the first steps
    random_flip: bool = True
    report_every: int = 20
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on CPU too
    out_dir: str | None = None  # run directory: metrics.jsonl, tensorboard/, best/, last/
    max_minutes: float | None = None  # stop training at the first step past this wall time, then checkpoint
    fail_at_step: int | None = None  # fault injection for restart tests: rank 0's process exits once there
    init_from: str | None = None  # a VAE checkpoint to start from (weights only; a resumed run ignores it)
    freeze_encoder: bool = False  # train the decoder only: the latent space stays the init_from VAE's
    latent_noise: float = 0.0  # decode latents perturbed at this scale (HexPlaneVAE.perturb) while training
    latent_space: str | None = None  # with freeze_encoder: the latent space id of init_from (checked by the driver)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"epochs, batch size and steps per epoch must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}, {self.steps_per_epoch}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warm-up steps must be >= 0, got {self.warmup_steps}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive (or None for no limit), got {self.max_minutes}")
        if not (math.isfinite(self.latent_noise) and self.latent_noise >= 0):
            raise ValueError(f"latent noise must be a finite number >= 0, got {self.latent_noise}")
        if self.freeze_encoder and not (self.init_from and self.latent_space):
            raise ValueError("a frozen encoder needs the trained VAE to start from (init_from) and its latent space "
                             "id (latent_space)")

    @classmethod
    def from_dict(cls, d: dict) -> "VAETrainConfig":
        from dcgen import config

        return config.from_dict(cls, d)


def lr_factor(step: int, total_steps: int, gamma: float, warmup_steps: int = 0, milestones=MILESTONES,
              time_fraction: float = 0.0) -> float:
    """The MultiStep factor ``gamma ** (number of milestones f·total_steps already reached)`` at ``step``, times
    ``(step + 1) / (warmup_steps + 1)`` during a warm-up. ``time_fraction`` is the share of a deadline's time already
    spent: a milestone f also counts as reached once ``time_fraction >= f``, so a run its deadline ends early still
    takes the schedule's steps down, at the same shares of its time."""
    warmup = min(1.0, (step + 1) / (warmup_steps + 1))
    return warmup * gamma ** sum(step >= max(1, int(f * total_steps)) or time_fraction >= f for f in milestones)


def flip_batch_y(batch: dict[str, torch.Tensor], flip_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mirror the selected clips across the ego's X axis (see ``data.torch_dataset.flip_y``)."""
    out = dict(batch)
    for name, axis in (("occupancy", 3), ("mask", 3)):
        if name in out:
            x = out[name]
            out[name] = torch.where(flip_B.view(-1, *([1] * (x.dim() - 1))), x.flip(axis), x)
    if "trajectory" in out:  # (x, y, yaw): y and yaw change sign
        traj_BT3 = out["trajectory"]
        mirrored_BT3 = traj_BT3 * torch.tensor([1.0, -1.0, -1.0], dtype=traj_BT3.dtype, device=traj_BT3.device)
        out["trajectory"] = torch.where(flip_B.view(-1, 1, 1), mirrored_BT3, traj_BT3)
    return out


def build_model(model_cfg: dict):
    from dcgen.models.vae import HexPlaneVAE, VAEConfig

    return HexPlaneVAE(VAEConfig.from_dict(model_cfg))


def check_resumable(meta: dict, model_cfg: dict, path) -> None:
    """A run resumes only from a checkpoint of the same network: same grid, classes and widths."""
    saved = meta.get("config")
    if saved != model_cfg:
        grid_first = {"num_frames": 0, "size": 1, "num_classes": 2}
        diff = sorted((k for k in set(saved or {}) | set(model_cfg) if (saved or {}).get(k) != model_cfg.get(k)),
                      key=lambda k: (grid_first.get(k, 3), k))
        shown = ", ".join(f"{k}: checkpoint {(saved or {}).get(k)!r} vs run {model_cfg.get(k)!r}" for k in diff[:4])
        raise ValueError(f"{path}: checkpoint is of a different VAE than this run ({shown}); resume it with the "
                         "preset and options it was trained with, or start a new run")


@torch.no_grad()
def evaluate(model, ctx: TrainContext, batch_size: int, num_classes: int, amp: bool, cpu_bf16: bool = False,
             latent_noise: float = 0.0, frozen_encoder: bool = False) -> dict:
    """Validation IoU over this worker's shard (posterior mean decoded), confusion counts summed over workers.
    With ``latent_noise`` the mean is ``perturb``ed first (the same noise every epoch: a fixed seed per worker)
    and the clean mean's mIoU is reported beside, as ``val_miou_clean``."""
    from dcgen.metrics.recon_iou import IoUAccumulator

    noisy = latent_noise > 0
    accs = {"": IoUAccumulator(num_classes), "_clean": IoUAccumulator(num_classes)} if noisy else {
        "": IoUAccumulator(num_classes)}
    gen = torch.Generator().manual_seed(12345 + ctx.rank)
    model.eval()
    for batch in ctx.batches("val", batch_size, epoch=0, shuffle=False):
        occ_BTXYZ = batch["occupancy"]
        with autocast(ctx.device, amp, cpu_bf16):
            if noisy:  # the encoder's work is shared by both decodes
                net = unwrap(model)
                mu, _ = net.encode(occ_BTXYZ, batch.get("trajectory"))
                decoded = {"": net.decode(net.perturb(mu, latent_noise, gen)), "_clean": net.decode(mu)}
            else:
                decoded = {"": model(occ_BTXYZ, sample=False, trajectory=batch.get("trajectory"))[0]}
        for key, logits_BKTXYZ in decoded.items():
            accs[key].update(logits_BKTXYZ.argmax(1), occ_BTXYZ, batch.get("mask"))
    train_mode(model, frozen_encoder)
    out = {}
    for key, acc in accs.items():
        counts = ctx.all_reduce(torch.as_tensor(acc.counts, dtype=torch.float64, device=ctx.device)).cpu().numpy()
        acc.counts = counts.round().astype("int64")
        if acc.counts.sum() == 0:
            raise ValueError("validation saw no observed voxel: the val split is empty or fully masked")
        out |= {f"val_miou{key}": acc.miou(), f"val_binary_iou{key}": acc.binary_iou(),
                f"val_per_class_iou{key}": acc.per_class_iou()}
    return out


def train_mode(model, frozen_encoder: bool) -> None:
    """Training mode, with a frozen encoder (and posterior heads) kept in eval mode."""
    model.train()
    if frozen_encoder:
        net = unwrap(model)
        net.encoder.eval()
        net.to_posterior.eval()


def freeze_encoder(net) -> None:
    """Freeze the encoder and posterior heads: only the decoder learns, the latent space stays as it is."""
    for module in (net.encoder, net.to_posterior):
        module.requires_grad_(False)


def _deadline_state(ctx: TrainContext, start: float, deadline: float | None) -> tuple[bool, float]:
    """``(past, fraction)``: whether any worker is past ``deadline`` and the workers' mean share of the time from
    ``start`` to it already spent. Every rank gets the same answer, so all stop at the same step and all take the
    same learning rate."""
    if deadline is None:
        return False, 0.0
    now = time.time()
    state = torch.tensor([1.0 if now > deadline else 0.0, (now - start) / (deadline - start)], dtype=torch.float64,
                         device=ctx.device)
    late, fraction = ctx.all_reduce(state).tolist()
    return late > 0, fraction / ctx.world_size


def _maybe_fail(cfg: VAETrainConfig, rank: int, step: int) -> None:
    """Fault injection: rank 0 exits hard (no cleanup, like a killed process) the first time it reaches the step."""
    if cfg.fail_at_step is None or step != cfg.fail_at_step or rank != 0 or not cfg.out_dir:
        return
    marker = Path(cfg.out_dir) / f".failed-at-{step}"
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        os._exit(1)


def train_vae(ctx: TrainContext, run: dict) -> dict:
    cfg = VAETrainConfig.from_dict(run)
    from dcgen.train.vae_losses import vae_loss

    torch.manual_seed(cfg.seed)
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    net = build_model(cfg.model)
    if cfg.freeze_encoder:  # before DDP wraps it: DDP syncs the gradients of the parameters that have them
        freeze_encoder(net)
    model = ctx.prepare(net)
    net = unwrap(model)
    num_classes = net.config.num_classes
    if len(cfg.class_weights) != num_classes:
        raise ValueError(f"{len(cfg.class_weights)} class weights given for a VAE of {num_classes} classes")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    weights_K = torch.tensor(cfg.class_weights, dtype=torch.float32, device=ctx.device)
    step, start_epoch, best = 0, 0, -1.0
    if (latest := ctx.latest_checkpoint()) is not None:
        meta, state = checkpoint.load(latest, kind=KIND, map_location=ctx.device)
        check_resumable(meta, cfg.model, latest)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"].cpu())
        step, start_epoch, best = meta["step"], meta["epoch"] + 1, meta["best_val_miou"]
    elif cfg.init_from:  # every worker loads the same weights
        meta, state = checkpoint.load(cfg.init_from, kind=KIND, map_location=ctx.device)
        check_resumable(meta, cfg.model, cfg.init_from)
        net.load_state_dict(state["model"])
    train_mode(model, cfg.freeze_encoder)

    def rate(at_step: int, time_fraction: float) -> float:  # this run's lr, even if the resumed one used another
        return cfg.lr * lr_factor(at_step, total_steps, cfg.lr_gamma, cfg.warmup_steps, time_fraction=time_fraction)

    log = MetricsLog(cfg.out_dir, enabled=ctx.rank == 0)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + ctx.rank * 104729 + step)
    t0 = time.time()
    deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes is not None else None
    result = {"step": step, "best_val_miou": best}
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch, n_steps, loss_sum, stopped = time.time(), 0, 0.0, False
        for batch in ctx.batches("train", cfg.batch_size, epoch, shuffle=True):
            past, fraction = _deadline_state(ctx, t0, deadline)
            if past:
                stopped = True
                break
            for group in opt.param_groups:
                group["lr"] = rate(step, fraction)
            _maybe_fail(cfg, ctx.rank, step)
            if cfg.random_flip:
                batch = flip_batch_y(batch, torch.rand(batch["occupancy"].shape[0], generator=gen) < 0.5)
            occ_BTXYZ = batch["occupancy"]
            with autocast(ctx.device, cfg.amp, cfg.cpu_bf16):
                logits_BKTXYZ, mu, logvar = model(occ_BTXYZ, trajectory=batch.get("trajectory"),
                                                  latent_noise=cfg.latent_noise)
            loss, parts = vae_loss(logits_BKTXYZ, occ_BTXYZ, mu, logvar, weights_K, beta=cfg.beta,
                                   lovasz_weight=cfg.lovasz_weight, latent_masks=net.latent_masks(mu))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            n_steps += 1
            loss_sum += float(parts["total"])
            ctx.progress(step, total_steps, epoch=f"{epoch + 1}/{cfg.epochs}", loss=loss_sum / n_steps)
            if step % cfg.report_every == 0:
                log.log({"step": step, "epoch": epoch, "lr": rate(step, fraction),
                         **{f"train_{k}": float(v) for k, v in parts.items()}})
        if stopped and n_steps == 0 and epoch > start_epoch:
            break  # the previous epoch's checkpoint is the last word
        train_seconds = time.time() - t_epoch
        val = evaluate(model, ctx, cfg.batch_size, num_classes, cfg.amp, cfg.cpu_bf16, cfg.latent_noise,
                       cfg.freeze_encoder)
        row = {"step": step, "epoch": epoch, "val_miou": val["val_miou"], "val_binary_iou": val["val_binary_iou"],
               "train_loss": loss_sum / max(n_steps, 1), "epoch_seconds": time.time() - t_epoch,
               "s_per_iter": train_seconds / max(n_steps, 1), "val_seconds": time.time() - t_epoch - train_seconds,
               "minutes": (time.time() - t0) / 60, "partial_epoch": stopped,
               **({"val_miou_clean": val["val_miou_clean"]} if "val_miou_clean" in val else {})}
        is_best = val["val_miou"] > best
        best = max(best, val["val_miou"])
        row["best_val_miou"] = best
        ctx.progress(step, total_steps, val_miou=val["val_miou"])
        log.log(row | {"val_per_class_iou": val["val_per_class_iou"]})
        with tempfile.TemporaryDirectory() as tmp:
            ckpt_dir = Path(tmp) / "checkpoint"
            if ctx.rank == 0:
                state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}
                meta_extra = {"epoch": epoch, "best_val_miou": best, "per_class_iou": val["val_per_class_iou"],
                              "train": asdict(cfg)}
                if cfg.freeze_encoder:  # the encoder is init_from's: so are the latents a DiT learns
                    meta_extra["latent_space"] = cfg.latent_space
                checkpoint.save(ckpt_dir, kind=KIND, config=net.config.to_dict(), state=state, step=step,
                                metrics=row, extra=meta_extra)
                if cfg.out_dir:  # a local path or a URI (checkpoint.save uploads)
                    _export(ckpt_dir, storage.join(cfg.out_dir, "last"))
                    if is_best:
                        _export(ckpt_dir, storage.join(cfg.out_dir, "best"))
            ctx.report(row, ckpt_dir if ctx.rank == 0 else None)
        result = row
        if stopped:
            break
    return result


def _export(src: Path, dest: Path) -> None:
    """Copy a checkpoint for users (weights only: no optimizer), replacing ``dest`` atomically."""
    meta, state = checkpoint.load(src)
    extra = {k: v for k, v in meta.items() if k not in ("format_version", "kind", "config", "step", "metrics",
                                                          "saved", "versions", "git_sha")}
    checkpoint.save(dest, kind=meta["kind"], config=meta["config"], state={"model": state["model"]},
                    step=meta["step"], metrics=meta["metrics"], extra=extra)


def steps_per_epoch(num_clips: int, batch_size: int, num_workers: int) -> int:
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return max(1, math.ceil(num_clips / max(num_workers, 1) / batch_size))
