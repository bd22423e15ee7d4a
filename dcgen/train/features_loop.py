"""The metric feature networks' training loop (SPEC §4: feature networks trained by dcgen on the training data),
plain PyTorch against a ``TrainContext``.

Each step takes a batch of clips and their commands, derives the proxy-task labels (``metrics.proxy_task``),
mirrors a random half of the clips across the ego's X axis (left and right labels swap), renders the bird's-eye
and oblique views of one random frame of the metric frames for the image network, and minimises, for each
network, the proxy task's factorised cross-entropy (command, density and layout parts) plus ``aux_weight`` times
its auxiliary reconstruction loss (the 2D net's downsampled image, MSE; the 3D net's coarse class map, KL). AdamW
with a short linear warm-up and a cosine decay that are closed-form functions of (step, total steps). Each epoch
ends with the val split's top-1 accuracy of both networks on the joint proxy classes (every metric view for 2D),
the networks' feature calibration measured on that split (``metrics.calibration``), a checkpoint, and
``best``/``last`` exports (weights only) in the run directory; best is by the mean of the two accuracies. A
pretrained InceptionV3 stays frozen (only the 3D network trains). Resumes from the context's latest checkpoint;
``max_minutes`` stops at the first step past the deadline, on every worker at once, then validates and
checkpoints.
Legend: B batch, T time, X/Y/Z space, V views, K classes.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dcgen import checkpoint, storage
from dcgen.metrics.feature_nets import KIND, FeatureNets, FeatureNetsConfig, model_state
from dcgen.train.context import MetricsLog, TrainContext, autocast, unwrap

WARMUP_FRACTION = 0.05


@dataclass(frozen=True)
class FeaturesTrainConfig:
    nets: dict  # FeatureNetsConfig.to_dict()
    steps_per_epoch: int
    epochs: int = 8
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    aux_weight: float = 1.0
    random_flip: bool = True
    report_every: int = 20
    seed: int = 0
    amp: bool = True
    out_dir: str | None = None
    max_minutes: float | None = None
    inception_weights: str | None = None  # local pretrained InceptionV3 file (image_kind inception-pretrained)
    inception_sha256: str | None = None  # the file the driver checked; workers refuse another
    extra: dict = field(default_factory=dict)  # what the networks were trained on (recorded in the checkpoint)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.steps_per_epoch < 1:
            raise ValueError(f"epochs, batch size and steps per epoch must be >= 1, got {self.epochs}, "
                             f"{self.batch_size}, {self.steps_per_epoch}")
        if not self.lr > 0 or self.aux_weight < 0:
            raise ValueError(f"learning rate must be positive and aux_weight >= 0, got {self.lr} and "
                             f"{self.aux_weight}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be positive (or None for no limit), got {self.max_minutes}")

    @classmethod
    def from_dict(cls, d: dict) -> "FeaturesTrainConfig":
        from dcgen import config

        return config.from_dict(cls, d)


def lr_factor(step: int, total_steps: int) -> float:
    """Linear warm-up over the first ``WARMUP_FRACTION`` of the steps, then cosine decay to zero."""
    warmup = max(1, int(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_nets(cfg: FeaturesTrainConfig) -> FeatureNets:
    nets = FeatureNets(FeatureNetsConfig.from_dict(cfg.nets))
    if nets.config.image_kind == "inception-pretrained":
        from dcgen.metrics.inception import file_sha256, load_inception_weights

        if cfg.inception_weights is None:
            raise ValueError("image network inception-pretrained needs inception_weights (a local weights file)")
        if cfg.inception_sha256 is not None and file_sha256(cfg.inception_weights) != cfg.inception_sha256:
            raise ValueError(f"{cfg.inception_weights}: the weights file changed since the run was configured "
                             "(sha256 differs); start the run again")
        pretrained, _ = load_inception_weights(cfg.inception_weights)
        nets.image.load_state_dict(pretrained.state_dict())
        nets.image.requires_grad_(False)
    return nets


def batch_labels(nets: FeatureNets, occ_BTXYZ: np.ndarray, command_B: np.ndarray) -> np.ndarray:
    g = nets.grid
    return nets.config.proxy_task.labels(occ_BTXYZ, command_B, g.voxel_size[:2])


def losses(model, nets: FeatureNets, occ_np: np.ndarray, labels_np: np.ndarray, frame: int, device: torch.device,
           aux_weight: float, amp: bool) -> dict[str, torch.Tensor]:
    """The step's losses: 2D (views of ``frame``) and 3D proxy cross-entropy plus the auxiliary terms."""
    from dcgen.metrics.render_net import aux_target
    from dcgen.metrics.voxel_net import coarse_class_map

    labels_B = torch.from_numpy(labels_np).to(device)
    occ_BTXYZ = torch.from_numpy(occ_np).to(device)
    images = views = None
    if nets.image_trainable:
        views = nets.render(occ_np, (frame,))  # [B, 2, S, S, 3]
        images = nets.image_inputs(views, device)
    out: dict[str, torch.Tensor] = {}
    with autocast(device, amp):
        image_out, (_, logits3, aux3) = model(images, occ_BTXYZ)
    if image_out is not None:
        _, logits, aux = image_out
        labels_I = labels_B.repeat_interleave(views.shape[1])
        out["image_ce"] = nets.proxy.loss(logits, labels_I)
        out["image_acc"] = (nets.predict(logits) == labels_I).float().mean().detach()
        if aux is not None and aux_weight > 0:
            out["image_aux"] = F.mse_loss(aux.float(), aux_target(images, aux.shape[-1]))
    out["voxel_ce"] = nets.proxy.loss(logits3, labels_B)
    out["voxel_acc"] = (nets.predict(logits3) == labels_B).float().mean().detach()
    if aux3 is not None and aux_weight > 0:
        target = coarse_class_map(occ_BTXYZ, nets.voxel.config.num_voxel_classes, aux3.shape[2])
        log_q = F.log_softmax(aux3.float(), dim=1)
        out["voxel_aux"] = (target * (torch.log(target.clamp_min(1e-8)) - log_q)).sum(1).mean()
    total = sum(v for k, v in out.items() if k.endswith("_ce"))
    total = total + aux_weight * sum(v for k, v in out.items() if k.endswith("_aux"))
    out["total"] = total
    return out


@torch.no_grad()
def evaluate(nets: FeatureNets, ctx: TrainContext, batch_size: int) -> dict:
    """Val-split top-1 accuracy of both networks (2D over every metric view), counts summed over workers; also
    sets each trained network's feature calibration from the raw features' moments on the split."""
    was = nets.training
    nets.eval()
    k = nets.config.proxy_task.num_classes
    counts = torch.zeros(4 + k, dtype=torch.float64, device=ctx.device)  # image ok, images, voxel ok, clips, labels
    d2, d3 = nets.dims
    moments = {"image": torch.zeros(2 * d2 + 1, dtype=torch.float64, device=ctx.device),
               "voxel": torch.zeros(2 * d3 + 1, dtype=torch.float64, device=ctx.device)}  # sum, sum of squares, n

    def add(name: str, raw_BD: torch.Tensor) -> None:
        raw = raw_BD.double()
        moments[name] += torch.cat([raw.sum(0), (raw * raw).sum(0), raw.new_tensor([raw.shape[0]])])

    for batch in ctx.batches("val", batch_size, epoch=0, shuffle=False):
        occ_np = batch["occupancy"].cpu().numpy().astype(np.uint8)
        labels_np = batch_labels(nets, occ_np, batch["command"].cpu().numpy())
        labels_B = torch.from_numpy(labels_np).to(ctx.device)
        if nets.image_trainable:
            views = nets.render(occ_np)
            images = nets.image_inputs(views, ctx.device)
            if hasattr(nets.image, "raw_features"):
                raw = nets.image.raw_features(images)
                add("image", raw)
                logits = nets.image.head(raw)
            else:
                logits = nets.image(images)[1]
            labels_I = labels_B.repeat_interleave(views.shape[1])
            counts[0] += (nets.predict(logits) == labels_I).sum()
            counts[1] += labels_I.numel()
        occ_BTXYZ = torch.from_numpy(occ_np).to(ctx.device)
        raw3 = nets.voxel.raw_features(occ_BTXYZ)
        add("voxel", raw3)
        logits3 = nets.voxel.head(raw3)
        counts[2] += (nets.predict(logits3) == labels_B).sum()
        counts[3] += labels_B.numel()
        counts[4:] += torch.bincount(labels_B, minlength=k).double()
    nets.train(was)
    counts = ctx.all_reduce(counts).cpu().numpy()
    if counts[3] == 0:
        raise ValueError("validation saw no clip: the val split is empty")
    for name, d in (("image", d2), ("voxel", d3)):
        m = ctx.all_reduce(moments[name])
        net = getattr(nets, name)
        if hasattr(net, "calibration") and m[-1] >= 2:
            net.calibration.set_from_moments(m[:d], m[d:2 * d], float(m[-1]))
    image_acc = float(counts[0] / counts[1]) if counts[1] else None
    return {"val_image_acc": image_acc, "val_voxel_acc": float(counts[2] / counts[3]),
            "val_clips": int(counts[3]), "val_label_counts": [int(c) for c in counts[4:]]}


def _past_deadline(ctx: TrainContext, deadline: float | None) -> bool:
    if deadline is None:
        return False
    late = torch.tensor([1.0 if time.time() > deadline else 0.0], dtype=torch.float64, device=ctx.device)
    return bool(ctx.all_reduce(late).item() > 0)


def train_features(ctx: TrainContext, run: dict) -> dict:
    cfg = FeaturesTrainConfig.from_dict(run)
    torch.manual_seed(cfg.seed)
    nets = build_nets(cfg)
    model = ctx.prepare(nets)
    net = unwrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * cfg.steps_per_epoch
    step, start_epoch, best = 0, 0, -1.0
    if (latest := ctx.latest_checkpoint()) is not None:
        meta, state = checkpoint.load(latest, kind=KIND, map_location=ctx.device)
        if meta.get("config") != net.config.to_dict():
            raise ValueError(f"{latest}: checkpoint is of other feature networks than this run; resume it with the "
                             "options it was started with, or start a new run")
        net.image.load_state_dict(state["model"]["image"])
        net.voxel.load_state_dict(state["model"]["voxel"])
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"].cpu())
        step, start_epoch, best = meta["step"], meta["epoch"] + 1, meta["best_score"]
    for group in opt.param_groups:
        group["initial_lr"] = cfg.lr
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total_steps), last_epoch=step - 1)
    log = MetricsLog(cfg.out_dir, enabled=ctx.rank == 0)
    rng = np.random.default_rng([cfg.seed, ctx.rank, step])
    frames = net.config.frames
    t0 = time.time()
    deadline = t0 + cfg.max_minutes * 60 if cfg.max_minutes is not None else None
    result: dict = {"step": step, "best_score": best}
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch, n_steps, sums, stopped = time.time(), 0, {}, False
        for batch in ctx.batches("train", cfg.batch_size, epoch, shuffle=True):
            if _past_deadline(ctx, deadline):
                stopped = True
                break
            occ_np = batch["occupancy"].cpu().numpy().astype(np.uint8)
            labels_np = batch_labels(net, occ_np, batch["command"].cpu().numpy())
            if cfg.random_flip:
                flip = rng.random(occ_np.shape[0]) < 0.5
                occ_np = np.where(flip[:, None, None, None, None], occ_np[:, :, :, ::-1], occ_np)
                labels_np = np.where(flip, net.config.proxy_task.mirror_labels(labels_np), labels_np)
            frame = int(frames[rng.integers(len(frames))])
            parts = losses(model, net, np.ascontiguousarray(occ_np), labels_np, frame, ctx.device, cfg.aux_weight,
                           cfg.amp)
            opt.zero_grad(set_to_none=True)
            parts["total"].backward()
            opt.step()
            sched.step()
            step += 1
            n_steps += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            ctx.progress(step, total_steps, epoch=f"{epoch + 1}/{cfg.epochs}", loss=sums["total"] / n_steps)
            if step % cfg.report_every == 0:
                log.log({"step": step, "epoch": epoch, "lr": sched.get_last_lr()[0],
                         **{f"train_{k}": float(v.detach()) for k, v in parts.items()}})
        if stopped and n_steps == 0 and epoch > start_epoch:
            break
        val = evaluate(net, ctx, cfg.batch_size)
        seconds = time.time() - t_epoch
        accs = [a for a in (val["val_image_acc"], val["val_voxel_acc"]) if a is not None]
        score = float(np.mean(accs))
        row = {"step": step, "epoch": epoch, "val_image_acc": val["val_image_acc"],
               "val_voxel_acc": val["val_voxel_acc"], "val_score": score,
               **{f"train_{k}": v / max(n_steps, 1) for k, v in sums.items()},
               "epoch_seconds": seconds, "s_per_iter": seconds / max(n_steps, 1),
               "minutes": (time.time() - t0) / 60, "partial_epoch": stopped}
        is_best = score > best
        best = max(best, score)
        row["best_score"] = best
        ctx.progress(step, total_steps, val_score=score)
        log.log(row)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt_dir = Path(tmp) / "checkpoint"
            if ctx.rank == 0:
                state = {"model": model_state(net), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}
                accuracy = {"image": val["val_image_acc"], "voxel": val["val_voxel_acc"], "val_clips": val["val_clips"]}
                extra = {"epoch": epoch, "best_score": best, "accuracy": accuracy,
                         "proxy_task": {**net.config.proxy, "class_names": net.config.proxy_task.class_names(),
                                        "val_label_counts": val["val_label_counts"]},
                         "trained_on": cfg.extra.get("trained_on", {}), "train": asdict(cfg)}
                checkpoint.save(ckpt_dir, kind=KIND, config=net.config.to_dict(), state=state, step=step,
                                metrics=row, extra=extra)
                if cfg.out_dir:  # a local path or a URI (checkpoint.save uploads)
                    export(ckpt_dir, storage.join(cfg.out_dir, "last"))
                    if is_best:
                        export(ckpt_dir, storage.join(cfg.out_dir, "best"))
            ctx.report(row, ckpt_dir if ctx.rank == 0 else None)
        result = row
        if stopped:
            break
    return result


def export(src: Path, dest: Path) -> None:
    """Copy a checkpoint for users (weights only: no optimizer or RNG), replacing ``dest`` atomically."""
    meta, state = checkpoint.load(src)
    extra = {k: v for k, v in meta.items() if k not in ("format_version", "kind", "config", "step", "metrics",
                                                          "saved", "versions", "git_sha")}
    checkpoint.save(dest, kind=meta["kind"], config=meta["config"], state={"model": state["model"]},
                    step=meta["step"], metrics=meta["metrics"], extra=extra)
