"""``dcgen train`` (the VAE, the DiT and the metric feature networks on Ray Train, or the whole pipeline) and
``dcgen encode`` (a scene store through a trained VAE into the latent store the DiT trains on)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcgen.cli.common import (ADDRESS_OPTION, CLUSTER_OPTION, CONFIG_OPTION, DRY_RUN_OPTION, app,
                              print_dry_run, remote, user_errors)
from dcgen.cli.project import require

train_app = typer.Typer(help="Train models on Ray Train: vae, dit, decoder, features (or the whole pipeline); "
                        "calibrate a trained VAE's decode.",
                        invoke_without_command=True)

CPU_BF16_OPTION = typer.Option(False, "--cpu-bf16", help="Train on CPU under bf16 autocast (VAE 1.25–1.4×, small "
                               "DiT ~1.6× faster where the CPU has native bf16, e.g. AVX512-BF16 or AMX; refused "
                               "on a CPU without bf16 kernels, e.g. AVX2 only, where it runs ~25× slower).")
# the options every training command takes
WORKERS_OPTION = typer.Option(1, help="Ray Train workers (data-parallel, DDP).")
GPUS_PER_WORKER_OPTION = typer.Option(0.0, help="GPUs per worker (0 = CPU).")
EPOCHS_OPTION = typer.Option(None, help="Epochs (default per preset).")
RESUME_OPTION = typer.Option(False, help="Continue the run in --out from its latest checkpoint.")
OVERWRITE_OPTION = typer.Option(False, help="Delete an existing run in --out first.")
MAX_MINUTES_OPTION = typer.Option(None, help="Stop training at the first step past this many minutes, then "
                                  "validate and checkpoint.")
PREDICTION_OPTION = typer.Option("v", help="What the DiT outputs: 'v' (velocity, min-SNR v loss: learns conditions "
                                 "at high noise) or 'eps' (the plain ε network of SPEC §3).")


def _scaling(workers: int, gpus_per_worker: float, address: Optional[str]):
    from dcgen.train.runs import Scaling

    return Scaling(workers=workers, gpus_per_worker=gpus_per_worker, address=address)


@train_app.command("vae", help="Fit the HexPlane VAE on a scene store with Ray Train.\n\n"
                   "Example: dcgen train vae --data city.zarr --preset small --out runs/vae")
def train_vae_cmd(
    ctx: typer.Context,
    data: str = typer.Option(..., help="Scene store with train and val splits."),
    preset: str = typer.Option("small", help="debug | small | carlasc | occ3d (must match the store's grid)."),
    out: str = typer.Option("runs/vae", help="Run directory (checkpoints best/ and last/, metrics): a path or "
                            "an object-storage URI (s3://, gs://)."),
    workers: int = WORKERS_OPTION,
    gpus_per_worker: float = GPUS_PER_WORKER_OPTION,
    epochs: Optional[int] = EPOCHS_OPTION,
    batch_size: Optional[int] = typer.Option(None, help="Clips per worker batch (default per preset)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate [default: the preset's, 1e-3; small 3e-3]."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear learning-rate warm-up steps [default: the "
                                               "preset's, 0; small 20]."),
    beta: float = typer.Option(0.0015, help="KL weight."),
    class_weight_power: Optional[float] = typer.Option(None, help="Exponent of the loss's class weights "
                                                       "(max frequency / class frequency)^power: 0 unweighted, "
                                                       "1/3 SPEC, 1 inverse frequency [default: the preset's]."),
    projection: Optional[str] = typer.Option(None, help="How the encoder makes planes: projection (SPEC: CNN + "
                                             "attention pooling) | avgpool (ablation) | column [default: the "
                                             "preset's: column for small, projection otherwise]."),
    decoder: str = typer.Option("ess", help="ess | query (ablation)."),
    frame: Optional[str] = typer.Option(None, help="Coordinates the planes factor a clip in: ego (SPEC: each "
                                        "frame's own) | reference (the middle frame's, frames resampled with the "
                                        "clip's trajectory) [default: the preset's: reference for small, ego "
                                        "otherwise]."),
    max_minutes: Optional[float] = MAX_MINUTES_OPTION,
    resume: bool = RESUME_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    max_failures: int = typer.Option(2, help="Worker failures survived, each restarting from the last "
                                     "checkpoint (-1: unlimited)."),
    report_every: int = typer.Option(20, help="Log training losses every N steps."),
    cpu_bf16: bool = CPU_BF16_OPTION,
    seed: int = typer.Option(0),
    config: Optional[Path] = CONFIG_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dataclasses import replace

    from dcgen.train.runs import train_vae

    with user_errors():
        scaling = replace(_scaling(workers, gpus_per_worker, address), max_failures=max_failures)
        summary = train_vae(data, preset, out, scaling=scaling, epochs=epochs, batch_size=batch_size, lr=lr,
                            warmup_steps=warmup_steps, beta=beta, projection=projection, decoder=decoder,
                            frame=frame, resume=resume, overwrite=overwrite, max_minutes=max_minutes,
                            report_every=report_every, seed=seed, cpu_bf16=cpu_bf16,
                            class_weight_power=class_weight_power, dry_run=dry_run)
    if dry_run:
        return print_dry_run(ctx, summary)
    m = summary["metrics"]
    typer.echo(f"VAE trained: best val mIoU {m.get('best_val_miou', float('nan')):.4f} after {m.get('step')} steps; "
               f"best checkpoint {summary['best']}")


@train_app.command("decoder", help="Fine-tune a trained VAE's decoder to decode a diffusion model's samples "
                   "cleanly: it learns on latents perturbed by noise of the scale a DiT's samples err by, the "
                   "encoder frozen, so the latent space (and every DiT trained on it) stays the VAE's. Pass the "
                   "result as --vae to sample, synth and serve.\n\n"
                   "Example: dcgen train decoder --vae runs/vae/best --data city.zarr --out runs/decoder")
def train_decoder_cmd(
    ctx: typer.Context,
    vae: str = typer.Option(..., help="The trained VAE checkpoint to start from (its encoder is kept)."),
    data: str = typer.Option(..., help="Scene store with train and val splits (the VAE's own, normally)."),
    out: str = typer.Option("runs/decoder", help="Run directory (checkpoints best/ and last/, metrics): a path or "
                            "an object-storage URI (s3://, gs://)."),
    latent_noise: float = typer.Option(0.6, help="Largest noise level, in the DiT's standardised latent units; "
                                       "each clip draws its level uniformly below it (0: plain fine-tuning)."),
    workers: int = WORKERS_OPTION,
    gpus_per_worker: float = GPUS_PER_WORKER_OPTION,
    epochs: int = typer.Option(4, help="Epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Clips per worker batch (default: the VAE's)."),
    lr: float = typer.Option(3e-4, help="AdamW learning rate (stepped down at 50..90 % of the run)."),
    max_minutes: Optional[float] = MAX_MINUTES_OPTION,
    resume: bool = RESUME_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    cpu_bf16: bool = CPU_BF16_OPTION,
    seed: int = typer.Option(0),
    config: Optional[Path] = CONFIG_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dcgen.train.runs import train_decoder

    with user_errors():
        summary = train_decoder(data, vae, out, scaling=_scaling(workers, gpus_per_worker, address), epochs=epochs,
                                batch_size=batch_size, lr=lr, latent_noise=latent_noise, resume=resume,
                                overwrite=overwrite, max_minutes=max_minutes, seed=seed, cpu_bf16=cpu_bf16,
                                dry_run=dry_run)
    if dry_run:
        return print_dry_run(ctx, summary)
    m = summary["metrics"]
    typer.echo(f"decoder fine-tuned: best val mIoU on perturbed latents {m.get('best_val_miou', float('nan')):.4f} "
               f"(clean {m.get('val_miou_clean', float('nan')):.4f} last) after {m.get('step')} steps; best "
               f"checkpoint {summary['best']}")


@train_app.command("calibrate", help="Fit a trained VAE's decode calibration: per-class offsets on its logits so "
                   "that its reconstructions of the store's training clips have the real class mix (the "
                   "class-weighted loss paints rare classes, vehicles and pedestrians, over their neighbours). The "
                   "encoder is kept, so DiTs trained on the VAE decode through the result. 'dcgen train' does this "
                   "after the VAE and decoder stages; this command calibrates a checkpoint trained before.\n\n"
                   "Example: dcgen train calibrate --vae runs/vae/best --data city.zarr --out runs/vae-calibrated")
def train_calibrate_cmd(
    vae: str = typer.Option(..., help="The trained VAE (or fine-tuned decoder) checkpoint."),
    data: Optional[str] = typer.Option(None, help="Scene store of the VAE's grid (its training store, normally)."),
    out: str = typer.Option(..., help="Checkpoint directory to write (the --vae path itself: calibrate in place)."),
    split: str = typer.Option("train", help="Split whose class mix the decode should reproduce."),
    clips: int = typer.Option(32, help="Clips of the split to fit on (the first ones, in store order)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
    overwrite: bool = typer.Option(False, help="Replace an existing checkpoint at --out."),
    raw: bool = typer.Option(False, "--raw", help="Write zero offsets instead: the raw class-weighted decode (on "
                             "the debug quickstart's models better for unconditional scenes, worse for the rest; "
                             "see the README); recorded, so 'dcgen train' leaves it."),
) -> None:
    from dcgen.train.calibrate import calibrate_vae

    with user_errors():
        record = calibrate_vae(vae, data, out, split=split, clips=clips, device=device, overwrite=overwrite,
                               raw=raw)
    if raw:
        return typer.echo(f"{vae} -> {out}: zero class offsets (the raw decode)")
    offsets = ", ".join(f"{b:+.2f}" for b in record["class_bias"])
    typer.echo(f"calibrated {vae} -> {out} on {record['clips']} {split} clips: largest class-share error "
               f"{record['share_error_before']:.0%} -> {record['share_error_after']:.1%}; offsets [{offsets}]")


@train_app.command("calibrate-samples", help="Fit the decode offsets of a VAE + DiT pair on the DiT's own "
                   "unconditional samples so that they have the training split's class mix, and keep them in the DiT "
                   "checkpoint: sample, synth and serve decode unconditional scenes with them whenever that VAE is "
                   "passed. A DiT that takes a layout also gets offsets for its layout-conditioned scenes, fitted on "
                   "as many of them: the VAE's, with those of vehicle, pedestrian and pole moved to their training "
                   "shares (other conditioned scenes keep the VAE's offsets). 'dcgen train' and the quickstart do this "
                   "after the DiT stage; this command fits a pair trained before.\n\n"
                   "Example: dcgen train calibrate-samples --vae runs/vae/best --dit runs/dit/best --data city.zarr")
def train_calibrate_samples_cmd(
    vae: str = typer.Option(..., help="The VAE checkpoint generation decodes with (the DiT's, or its fine-tuned "
                            "decoder)."),
    dit: str = typer.Option(..., help="The DiT checkpoint; its metadata gets the offsets (weights untouched)."),
    data: str = typer.Option(..., help="Scene store the DiT was trained on (its class mix is the target)."),
    split: str = typer.Option("train", help="Split whose class mix the samples should have."),
    scenes: int = typer.Option(128, help="Unconditional scenes to sample for the fit (and as many layout-conditioned "
                               "ones)."),
    seed: int = typer.Option(0, help="Seed of the scenes and of the voxels kept."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]."),
) -> None:
    from dcgen.generate.sample_calibration import calibrate_samples

    with user_errors():
        record = calibrate_samples(vae, dit, data, split=split, scenes=scenes, seed=seed, device=device)
    offsets = ", ".join(f"{b:+.2f}" for b in record["class_bias"])
    typer.echo(f"sample calibration of {dit} through {vae} on {scenes} unconditional scenes: largest class-share "
               f"error {record['share_error_before']:.0%} -> {record['share_error_after']:.1%}; offsets [{offsets}]")


@train_app.command("dit", help="Fit the DiT on a latent store (from 'dcgen encode') with Ray Train.\n\n"
                   "Example: dcgen train dit --latents latents.zarr --vae runs/vae/best "
                   "--cond command,trajectory,layout --preset small --out runs/dit")
def train_dit_cmd(
    ctx: typer.Context,
    latents: str = typer.Option(..., help="Latent store written by 'dcgen encode'."),
    vae: Optional[str] = typer.Option(None, help="VAE checkpoint that made the latents (checked, and recorded)."),
    cond: str = typer.Option("auto", help="Comma-separated conditions: command, trajectory, layout, bev, prev_clip; "
                             "'none' for an unconditional model; 'auto' = all the latents support."),
    preset: str = typer.Option("small", help="debug | small | carlasc | occ3d (must match the latents)."),
    out: str = typer.Option("runs/dit", help="Run directory (checkpoints best/ and last/, metrics): a path or "
                            "an object-storage URI (s3://, gs://)."),
    workers: int = WORKERS_OPTION,
    gpus_per_worker: float = GPUS_PER_WORKER_OPTION,
    epochs: Optional[int] = EPOCHS_OPTION,
    batch_size: Optional[int] = typer.Option(None, help="Latents per worker batch (default per preset)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (default per preset: 1e-3 debug, 1e-4 "
                                       "otherwise)."),
    ema_decay: Optional[float] = typer.Option(None, help="EMA decay (default per preset: 0.99 debug ... 0.9999)."),
    cond_drop: float = typer.Option(0.1, help="Probability of dropping each condition (classifier-free guidance)."),
    cond_drop_all: Optional[float] = typer.Option(None, help="Probability of dropping every condition together: "
                                                  "trains the unconditional network that guidance and unconditional "
                                                  "sampling use (independent drops alone reach it with --cond-drop "
                                                  "to the power of the condition count; 0 for SPEC's drops) "
                                                  "[default: 0.1; a resumed run keeps its own]."),
    prediction: str = PREDICTION_OPTION,
    latent_norm: str = typer.Option("plane", help="Standardise the latents per 'plane' and channel (each HexPlane "
                                    "plane by its own statistics) or per 'channel' over every plane (runs before "
                                    "per-plane statistics)."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop after the epoch that passes this wall time."),
    cpu_bf16: bool = CPU_BF16_OPTION,
    resume: bool = RESUME_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    seed: int = typer.Option(0),
    config: Optional[Path] = CONFIG_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dcgen.train.runs import train_dit

    with user_errors():
        summary = train_dit(latents, out, vae=vae, conditions=cond, preset=preset,
                            scaling=_scaling(workers, gpus_per_worker, address), epochs=epochs,
                            batch_size=batch_size, lr=lr, ema_decay=ema_decay, cond_drop=cond_drop,
                            cond_drop_all=cond_drop_all, resume=resume,
                            overwrite=overwrite, max_minutes=max_minutes, seed=seed, prediction=prediction,
                            cpu_bf16=cpu_bf16, latent_norm=latent_norm, dry_run=dry_run)
    if dry_run:
        return print_dry_run(ctx, summary)
    m = summary["metrics"]
    typer.echo(f"DiT trained with conditions {', '.join(summary['conditions']) or 'none'}: best val loss "
               f"{m.get('best_val_loss', float('nan')):.4f} after {m.get('step')} steps; best checkpoint "
               f"{summary['best']}")


@train_app.command("features", help="Fit the generation-metric feature networks (2D image CNN on the metric "
                   "renders, 3D voxel CNN) on a scene store's proxy task (command x traffic density x layout type) "
                   "with Ray Train.\n\nExample: dcgen train features --data city.zarr --out runs/features")
def train_features_cmd(
    ctx: typer.Context,
    data: str = typer.Option(..., help="Scene store with train and val splits."),
    out: str = typer.Option("runs/features", help="Run directory (checkpoints best/ and last/, metrics): a path or "
                            "an object-storage URI (s3://, gs://)."),
    preset: Optional[str] = typer.Option(None, help="Check the store against this preset's grid (default: any)."),
    image_net: str = typer.Option("cnn", help="2D network: cnn (512-D, CPU-friendly) | inception (InceptionV3 "
                                  "shape trained from scratch, 2048-D; for GPUs)."),
    inception_weights: Optional[Path] = typer.Option(None, help="Local pretrained InceptionV3 state_dict "
                                                     "(torchvision or pytorch-fid names): the 2D side becomes this "
                                                     "frozen network; only the 3D network trains."),
    render_size: int = typer.Option(128, help="Side in pixels of the metric renders the 2D network reads."),
    workers: int = WORKERS_OPTION,
    gpus_per_worker: float = GPUS_PER_WORKER_OPTION,
    epochs: Optional[int] = EPOCHS_OPTION,
    batch_size: Optional[int] = typer.Option(None, help="Clips per worker batch (default 8)."),
    lr: float = typer.Option(2e-3, help="AdamW learning rate."),
    max_minutes: Optional[float] = MAX_MINUTES_OPTION,
    resume: bool = RESUME_OPTION,
    overwrite: bool = OVERWRITE_OPTION,
    seed: int = typer.Option(0),
    config: Optional[Path] = CONFIG_OPTION,
    dry_run: bool = DRY_RUN_OPTION,
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dcgen.train.runs import train_features

    with user_errors():
        summary = train_features(data, out, preset=preset, scaling=_scaling(workers, gpus_per_worker, address),
                                 epochs=epochs, batch_size=batch_size, image_net=image_net,
                                 inception_weights=str(inception_weights) if inception_weights else None,
                                 render_size=render_size, lr=lr, resume=resume, overwrite=overwrite,
                                 max_minutes=max_minutes, seed=seed, dry_run=dry_run)
    if dry_run:
        return print_dry_run(ctx, summary)
    m = summary["metrics"]

    def pct(v) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    typer.echo(f"feature networks trained ({summary['image_kind']} 2D): val accuracy 2D {pct(m.get('val_image_acc'))}, "
               f"3D {pct(m.get('val_voxel_acc'))} after {m.get('step')} steps; best checkpoint {summary['best']}")


@train_app.callback()
def train_all_cmd(
    ctx: typer.Context,
    data: Optional[str] = typer.Option(None, help="Scene store with train and val splits (whole pipeline)."),
    preset: str = typer.Option("small", help="debug | small | carlasc | occ3d (must match the store's grid)."),
    out: Optional[str] = typer.Option(None, help="Run directory (default runs/PRESET): vae/, latents.zarr, dit/, "
                                      "decoder/, features/; a path or an object-storage URI (s3://, gs://)."),
    cond: str = typer.Option("auto", help="DiT conditions (see 'dcgen train dit --help')."),
    workers: int = WORKERS_OPTION,
    gpus_per_worker: float = GPUS_PER_WORKER_OPTION,
    vae_epochs: Optional[int] = typer.Option(None, help="VAE epochs (default per preset)."),
    dit_epochs: Optional[int] = typer.Option(None, help="DiT epochs (default per preset)."),
    decoder_epochs: Optional[int] = typer.Option(None, help="Epochs of the decoder stage, which fine-tunes the VAE's "
                                                 "decoder for the DiT's samples (see 'dcgen train decoder --help'; "
                                                 "default per preset: small 6, others 4); 0 leaves the stage out "
                                                 "and generation decodes with the VAE."),
    vae_lr: Optional[float] = typer.Option(None, help="VAE learning rate (see 'dcgen train vae --help')."),
    dit_lr: Optional[float] = typer.Option(None, help="DiT learning rate (see 'dcgen train dit --help'; the "
                                           "small preset's README recipe uses 5e-4)."),
    max_minutes: Optional[float] = typer.Option(None, help="Wall-time bound of each training stage."),
    cpu_bf16: bool = CPU_BF16_OPTION,
    prediction: str = PREDICTION_OPTION,
    seed: int = typer.Option(0),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    """Train models on Ray Train. With no subcommand: the whole pipeline, VAE -> encode -> DiT -> decoder
    fine-tuning (-> feature networks), each stage skipped when its checkpoint exists. Generation (sample, synth,
    serve) decodes with the fine-tuned decoder: the last line names the checkpoint to pass as --vae.

    Example: dcgen train --data city.zarr --preset small --out runs/small
    """
    if ctx.invoked_subcommand is not None:
        return
    if data is None:
        typer.echo(ctx.get_help())
        require(ctx, data, "data", "give --data STORE to run the whole pipeline, or a subcommand (vae, dit, ...)")
    address = remote(ctx, cluster, address)
    from dcgen.train.pipeline import train_pipeline

    with user_errors():
        summary = train_pipeline(data, preset, out or str(Path("runs") / preset), conditions=cond,
                                 scaling=_scaling(workers, gpus_per_worker, address), vae_epochs=vae_epochs,
                                 dit_epochs=dit_epochs, decoder_epochs=decoder_epochs, vae_lr=vae_lr,
                                 dit_lr=dit_lr, max_minutes=max_minutes, seed=seed, cpu_bf16=cpu_bf16,
                                 prediction=prediction, log=typer.echo)
        from dcgen.generate.sample_calibration import ensure_sample_calibration

        ensure_sample_calibration(summary["sampling_vae"], summary["dit"], data, log=typer.echo)
    typer.echo(f"pipeline done in {summary['run_dir']}: VAE {summary['vae']}, latents {summary['latents']}, "
               f"DiT {summary['dit']}, decoder {summary['decoder'] or 'left out'}; generate with --vae "
               f"{summary['sampling_vae']} --dit {summary['dit']} (sample, synth, serve)")


@app.command("encode", help="Encode every clip of a scene store with a trained VAE into a latent store (the VAE "
             "mu as a padded rollout, with the clips' conditions) for DiT training.\n\n"
             "Example: dcgen encode --vae runs/vae/best --data city.zarr --out latents.zarr")
def encode_cmd(
    ctx: typer.Context,
    vae: str = typer.Option(..., help="VAE checkpoint directory (e.g. runs/vae/best)."),
    data: str = typer.Option(..., help="Scene store to encode (all complete clips, every split)."),
    out: str = typer.Option(..., help="Latent store to create (NAME.zarr)."),
    batch_size: int = typer.Option(8, help="Clips per encoder batch."),
    workers: Optional[int] = typer.Option(None, help="Encoder actors (default: one per GPU, else CPUs - 1)."),
    overwrite: bool = typer.Option(False, help="Replace an existing latent store at --out."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dcgen.train.encode import encode_store

    with user_errors(worker_errors=True):  # a Ray worker failing for another reason exits 1, naming it
        info = encode_store(vae, data, out, batch_size=batch_size, overwrite=overwrite, workers=workers,
                            ray_address=address)
    splits = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    typer.echo(f"encoded {info['num_clips']} clips ({splits}; {info['clips_with_previous']} with a previous clip) "
               f"into {info['path']} with VAE {info['vae_checkpoint_id']}")
