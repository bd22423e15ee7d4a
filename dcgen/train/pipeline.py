"""``dcgen train`` without a stage: the whole pipeline VAE -> encode -> DiT -> decoder fine-tuning -> metric feature
networks into one directory, each stage skipped when its result is there and resumed when its run was interrupted.
The decoder stage (``runs.train_decoder``) keeps the VAE's latent space, so generation decodes the DiT's samples
with ``OUT/decoder/best`` (the summary's ``sampling_vae``) while ``OUT/vae/best`` stays the encoder of record.
Both decode calibrated (``calibrate.py``): the VAE and decoder stages fit their class offsets when they finish.
"""

from __future__ import annotations

import numbers
from pathlib import Path

from dcgen import storage
from dcgen.data.store import SceneStore
from dcgen.train.run_dir import check_store_matches, has_ray_run, stage_done
from dcgen.presets import get_preset
from dcgen.train.runs import Scaling, check_local_cpu_bf16, train_decoder, train_dit, train_features, train_vae


def _stage_summary(name: str, result: dict) -> str:
    """One line on a finished training stage: its last epoch and validation numbers."""
    metrics = result.get("metrics") or {}
    keys = ("epoch", "val_miou", "best_val_miou", "val_miou_clean", "val_loss", "best_val_loss", "val_image_acc",
            "val_voxel_acc")
    parts = [f"{k} {metrics[k]:.4g}" if isinstance(metrics[k], float) else f"{k} {metrics[k]}"
             for k in keys if k in metrics]
    fit = (result.get("calibration") or {}).get("best")
    calibrated = "" if not fit else (f"; decode calibrated: largest class-share error {fit['share_error_before']:.0%}"
                                     f" -> {fit['share_error_after']:.1%}")
    return f"{name}: done ({', '.join(parts) or 'no metrics'}){calibrated}"


def _calibrate_left(run_dir, data: str, log) -> dict:
    """Calibrate the decode of a finished stage's checkpoints that are not yet (a run from before decode
    calibration, or one stopped between training and calibration): ``{"calibration": ...}`` or nothing."""
    from dcgen.train.calibrate import calibrate_run

    done = calibrate_run(run_dir, data, missing_only=True, log=log)
    return {"calibration": done} if done else {}


def train_pipeline(data: str, preset: str, out: str | Path, *, conditions=None, scaling: Scaling = Scaling(),
                   vae_epochs: int | None = None, dit_epochs: int | None = None, decoder_epochs: int | None = None,
                   features_epochs: int | None = None, vae_lr: float | None = None, dit_lr: float | None = None,
                   max_minutes: float | None = None, seed: int = 0, cpu_bf16: bool = False,
                   prediction: str | None = None, log=print) -> dict:
    """VAE -> encode -> DiT -> decoder fine-tuning -> the metric feature networks, into ``out``.

    Each stage is skipped when its result is already there (``OUT/vae/best``, a complete ``OUT/latents.zarr``,
    ``OUT/dit/best``, ``OUT/decoder/best``, ``OUT/features/best``) and resumed when its run was interrupted.
    ``max_minutes`` bounds each training stage separately; ``vae_lr``/``dit_lr`` override the presets' learning
    rates; ``decoder_epochs`` (default per preset, ``Preset.decoder_epochs``) is the decoder fine-tuning's
    length, 0 leaving that stage out; ``cpu_bf16`` trains on CPU under bf16 autocast; ``prediction`` ("v" or
    "eps") overrides the DiT preset's output parametrisation. Options are checked before any stage runs.

    Returns the checkpoints' paths and each stage's summary; ``sampling_vae`` is the checkpoint generation
    (sample, synth, serve) decodes with: ``decoder`` when the decoder stage is in the run, else ``vae``.
    """
    from dcgen import checkpoint
    from dcgen.data.latent_store import LatentStore
    from dcgen.models.dit import check_prediction
    from dcgen.train.encode import encode_store

    if prediction is not None:
        check_prediction(prediction)
    for option, lr in (("--vae-lr", vae_lr), ("--dit-lr", dit_lr)):  # refused now, not after the VAE's hours
        if lr is not None and not lr > 0:
            raise ValueError(f"{option} {lr}: the learning rate must be positive")
    # a bool is an int to Python, and True epochs is a slip, not a count
    if decoder_epochs is not None and (isinstance(decoder_epochs, bool)
                                       or not isinstance(decoder_epochs, numbers.Integral) or decoder_epochs < 0):
        raise ValueError(f"--decoder-epochs {decoder_epochs!r}: expected a whole number of epochs >= 0 (0 leaves "
                         "the decoder stage out)")
    check_local_cpu_bf16(cpu_bf16, scaling)
    out = storage.run_path(out)  # a local Path or a URI (s3://, gs://, file://)
    store = SceneStore.open(data)
    check_store_matches(store, preset)
    out.mkdir(parents=True, exist_ok=True)
    stages: dict[str, dict] = {}

    vae_dir = out / "vae"
    if stage_done(vae_dir / "best", "vae"):
        log(f"vae: {vae_dir / 'best'} exists, skipping")
        stages["vae"] = {"skipped": True, "best": str(vae_dir / "best"), **_calibrate_left(vae_dir, data, log)}
    else:
        log(f"vae: training into {vae_dir}")
        stages["vae"] = train_vae(data, preset, vae_dir, scaling=scaling, epochs=vae_epochs, lr=vae_lr,
                                  seed=seed, resume=has_ray_run(vae_dir), max_minutes=max_minutes, cpu_bf16=cpu_bf16)
        log(_stage_summary("vae", stages["vae"]))
    vae_best = vae_dir / "best"
    vae_id = checkpoint.latent_space_id(vae_best)

    latents = out / "latents.zarr"
    done = False
    if latents.exists():
        existing = LatentStore.open(str(latents), require_complete=False)
        if existing.complete and existing.vae_checkpoint_id != vae_id:
            raise ValueError(f"{latents} was encoded with VAE {existing.vae_checkpoint_id!r}, not {vae_best} "
                             f"({vae_id!r}); remove it (and {out / 'dit'}) to encode again")
        done = existing.complete
    if done:
        log(f"encode: {latents} is complete, skipping")
        stages["encode"] = {"skipped": True, "latents": str(latents)}
    else:
        log(f"encode: {data} -> {latents}")
        stages["encode"] = encode_store(str(vae_best), data, str(latents), overwrite=latents.exists(),
                                        ray_address=scaling.address)

    dit_dir = out / "dit"
    if stage_done(dit_dir / "best", "dit"):
        log(f"dit: {dit_dir / 'best'} exists, skipping")
        stages["dit"] = {"skipped": True, "best": str(dit_dir / "best")}
    else:
        log(f"dit: training into {dit_dir}")
        stages["dit"] = train_dit(str(latents), dit_dir, vae=str(vae_best), conditions=conditions, preset=preset,
                                  scaling=scaling, epochs=dit_epochs, lr=dit_lr, resume=has_ray_run(dit_dir),
                                  max_minutes=max_minutes, seed=seed, prediction=prediction,
                                  cpu_bf16=cpu_bf16)
        log(_stage_summary("dit", stages["dit"]))

    decoder_dir = out / "decoder"
    decoder_best = decoder_dir / "best"
    if decoder_epochs == 0:
        unused = f" ({decoder_best} is there, unused)" if decoder_best.exists() else ""
        log(f"decoder: left out (--decoder-epochs 0){unused}; generation decodes with {vae_best}")
        stages["decoder"] = {"skipped": True, "reason": "--decoder-epochs 0"}
    elif stage_done(decoder_best, "vae"):  # a fine-tuned decoder is a VAE checkpoint (encoder frozen)
        decoder_space = checkpoint.latent_space_id(decoder_best)
        if decoder_space != vae_id:  # e.g. the VAE was trained again: this decoder reads other latents
            raise ValueError(f"{decoder_best} decodes the latent space of VAE {decoder_space!r}, not that of "
                             f"{vae_best} ({vae_id!r}); remove {decoder_dir} to fine-tune again")
        log(f"decoder: {decoder_best} exists, skipping")
        stages["decoder"] = {"skipped": True, "best": str(decoder_best), **_calibrate_left(decoder_dir, data, log)}
    else:
        epochs = get_preset(preset).decoder_epochs if decoder_epochs is None else int(decoder_epochs)
        log(f"decoder: fine-tuning {vae_best}'s decoder into {decoder_dir} (epochs: {epochs})")
        stages["decoder"] = train_decoder(data, str(vae_best), decoder_dir, scaling=scaling, epochs=epochs,
                                          resume=has_ray_run(decoder_dir), max_minutes=max_minutes, seed=seed,
                                          cpu_bf16=cpu_bf16)
        log(_stage_summary("decoder", stages["decoder"]))
    decoder = None if decoder_epochs == 0 else str(decoder_best)

    features_dir = out / "features"
    if stage_done(features_dir / "best", None):
        log(f"features: {features_dir / 'best'} exists, skipping")
        stages["features"] = {"skipped": True, "best": str(features_dir / "best")}
    else:
        log(f"features: training into {features_dir}")
        stages["features"] = train_features(data, features_dir, preset=preset, scaling=scaling, epochs=features_epochs,
                                            resume=has_ray_run(features_dir), max_minutes=max_minutes, seed=seed)
        log(_stage_summary("features", stages["features"]))
    return {"run_dir": str(out), "vae": str(vae_best), "latents": str(latents), "dit": str(dit_dir / "best"),
            "decoder": decoder, "sampling_vae": decoder or str(vae_best), "stages": stages}
