"""The VAE training loop (SPEC §2), plain PyTorch against a ``TrainContext``.

AdamW (lr 1e-3, wd 0), MultiStep ×0.7 at 50/60/70/80/90 % of training, loss = class-weighted CE + Lovász-softmax +
β·KL, validation mIoU every epoch (observed voxels only), best checkpoint by val mIoU. AMP (bf16) and TF32 on CUDA.
Resumes from the context's latest checkpoint: weights, optimizer, scheduler, step, epoch, best score and RNG.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dcgen.train import checkpoint
from dcgen.train.context import MetricsLog, TrainContext, unwrap

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
    random_flip: bool = True
    report_every: int = 20
    seed: int = 0
    amp: bool = True
    out_dir: str | None = None  # run directory: metrics.jsonl, tensorboard/, best/, last/
    max_minutes: float | None = None  # stop (after a full epoch's checkpoint) once this much time has passed
    fail_at_step: int | None = None  # fault injection for restart tests: the worker process exits once there
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict) -> "VAETrainConfig":
        return cls(**d)


def flip_batch_y(batch: dict[str, torch.Tensor], flip_B: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mirror the selected clips across the ego's X axis (see ``data.torch_dataset.flip_y``)."""
    out = dict(batch)
    for name, axis in (("occupancy", 3), ("mask", 3)):
        if name in out:
            x = out[name]
            out[name] = torch.where(flip_B.view(-1, *([1] * (x.dim() - 1))), x.flip(axis), x)
    return out


def build_model(model_cfg: dict):
    from dcgen.models.vae import HexPlaneVAE, VAEConfig

    return HexPlaneVAE(VAEConfig.from_dict(model_cfg))


def _autocast(device: torch.device, enabled: bool):
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def evaluate(model, ctx: TrainContext, batch_size: int, num_classes: int, amp: bool) -> dict:
    """Validation mIoU over this worker's shard, reduced across workers."""
    from dcgen.metrics.recon_iou import IoUAccumulator

    acc = IoUAccumulator(num_classes)
    model.eval()
    for batch in ctx.batches("val", batch_size, epoch=0, shuffle=False):
        occ = batch["occupancy"]
        with _autocast(ctx.device, amp):
            logits, _, _ = model(occ)
        acc.update(logits.argmax(1), occ, batch.get("mask"))
    model.train()
    counts = ctx.all_reduce(torch.as_tensor(acc.counts, dtype=torch.float64, device=ctx.device)).cpu().numpy()
    acc.counts = counts.astype("int64")
    return {"val_miou": acc.miou(), "val_binary_iou": acc.binary_iou(), "val_per_class_iou": acc.per_class_iou()}


def train_vae(ctx: TrainContext, run: dict) -> dict:
    cfg = VAETrainConfig.from_dict(run)
    from dcgen.train.vae_losses import vae_loss

    torch.manual_seed(cfg.seed)
    if ctx.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = ctx.prepare(build_model(cfg.model))
    net = unwrap(model)
    num_classes = net.config.num_classes
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=[max(1, int(f * total_steps)) for f in MILESTONES], gamma=cfg.lr_gamma)
    weights = torch.tensor(cfg.class_weights, dtype=torch.float32, device=ctx.device)
    step, start_epoch, best = 0, 0, -1.0
    if (latest := ctx.latest_checkpoint()) is not None:
        meta, state = checkpoint.load(latest, kind="vae", map_location=ctx.device)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, start_epoch, best = meta["step"], meta["epoch"] + 1, meta["best_val_miou"]
    log = MetricsLog(cfg.out_dir, enabled=ctx.rank == 0)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + ctx.rank)
    t0 = time.time()
    result = {"step": step, "best_val_miou": best}
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch, n_steps = time.time(), 0
        for batch in ctx.batches("train", cfg.batch_size, epoch, shuffle=True):
            if cfg.fail_at_step is not None and step == cfg.fail_at_step and cfg.out_dir:
                marker = Path(cfg.out_dir) / f".failed-at-{step}"
                if not marker.exists():
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.touch()
                    os._exit(1)
            if cfg.random_flip:
                batch = flip_batch_y(batch, torch.rand(batch["occupancy"].shape[0], generator=gen) < 0.5)
            occ = batch["occupancy"]
            with _autocast(ctx.device, cfg.amp):
                logits, mu, logvar = model(occ)
                loss, parts = vae_loss(logits.float(), occ, mu, logvar, weights, beta=cfg.beta,
                                       lovasz_weight=cfg.lovasz_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            n_steps += 1
            if step % cfg.report_every == 0:
                log.log({"step": step, "epoch": epoch, "lr": sched.get_last_lr()[0],
                         **{f"train_{k}": float(v) for k, v in parts.items()}})
        val = evaluate(model, ctx, cfg.batch_size, num_classes, cfg.amp)
        elapsed = time.time() - t0
        row = {"step": step, "epoch": epoch, "val_miou": val["val_miou"], "val_binary_iou": val["val_binary_iou"],
               "epoch_seconds": time.time() - t_epoch, "s_per_iter": (time.time() - t_epoch) / max(n_steps, 1)}
        is_best = val["val_miou"] > best
        best = max(best, val["val_miou"])
        row["best_val_miou"] = best
        log.log(row)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt_dir = Path(tmp) / "checkpoint"
            if ctx.rank == 0:
                state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "rng": torch.get_rng_state()}
                meta_extra = {"epoch": epoch, "best_val_miou": best, "per_class_iou": val["val_per_class_iou"],
                              "train": asdict(cfg) | {"class_weights": list(cfg.class_weights)}}
                checkpoint.save(ckpt_dir, kind="vae", config=net.config.to_dict(), state=state, step=step,
                                metrics=row, extra=meta_extra)
                if cfg.out_dir and "://" not in cfg.out_dir:
                    _export(ckpt_dir, Path(cfg.out_dir) / "last")
                    if is_best:
                        _export(ckpt_dir, Path(cfg.out_dir) / "best")
            ctx.report(row, ckpt_dir if ctx.rank == 0 else None)
        result = row
        if cfg.max_minutes is not None and elapsed > cfg.max_minutes * 60:
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
    return max(1, math.ceil(num_clips / max(num_workers, 1) / batch_size))
