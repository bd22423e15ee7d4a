"""Driver side of training: check inputs, build Ray Data datasets and a run config, call ``ray_trainer.fit``
(run-directory checks in ``run_dir.py``, the whole pipeline in ``pipeline.py``).

Each ``train_*`` function validates everything a user can get wrong (store vs preset grid, empty splits, an existing
run without ``resume``) before a worker starts, and returns a summary with the exported best checkpoint's path
(with ``dry_run``, the resolved run instead, nothing written).
Run directory layout: ``OUT/metrics.jsonl``, ``OUT/tensorboard/``, ``OUT/best``, ``OUT/last`` (user checkpoints,
weights only) and ``OUT/ray/<name>/`` (Ray Train's resumable checkpoints with optimizer state).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dcgen import storage
from dcgen.data.store import SceneStore
from dcgen.presets import get_preset, preset_of_grid
from dcgen.train.run_dir import (check_latest_checkpoint, check_same_dit, check_same_features, check_same_model,
                                 check_store_matches, prepare_run_dir, saved_run)


@dataclass(frozen=True)
class Scaling:
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None  # default: fit the workers beside Ray Data's read tasks
    address: str | None = None  # an existing cluster; None starts the embedded local Ray
    max_failures: int = 2


def resolved(run, scaling: Scaling) -> dict:
    """What a run would train with, every default filled in: printed by ``--dry-run``."""
    return {"dry_run": True, "run": asdict(run), "scaling": asdict(scaling)}


def given(value, default):
    """An option's value, or the preset's ``default`` where it was not given: a 0 is given, and refused by the run's
    config, rather than quietly read as "the default"."""
    return default if value is None else value


def cpus_per_worker(scaling: Scaling) -> float:
    """CPUs per training worker: as given, else what leaves one CPU of the cluster to Ray Data."""
    if scaling.cpus_per_worker is not None:
        return scaling.cpus_per_worker
    from dcgen.runtime import cluster_cpus

    total = float(cluster_cpus(scaling.address))
    # leave at least one CPU for Ray Data's read tasks: 2 workers at 1 CPU each on 2 CPUs deadlock (PLATFORM-NOTES)
    return max(0.25, min(1.0, (total - 1.0) / scaling.workers))


def check_local_cpu_bf16(cpu_bf16: bool, scaling: Scaling) -> None:
    """--cpu-bf16 on CPU workers of the embedded Ray: refuse here, before anything is written, on a CPU that would
    run it ~25× slower (a cluster's CPU workers check their own CPU when their loop starts)."""
    if cpu_bf16 and scaling.address is None and not scaling.gpus_per_worker:
        from dcgen.train.context import check_cpu_bf16

        check_cpu_bf16()


def train_vae(data: str, preset: str, out: str | Path, *, scaling: Scaling = Scaling(), epochs: int | None = None,
              batch_size: int | None = None, lr: float | None = None, warmup_steps: int | None = None,
              beta: float = 0.0015, projection: str | None = None, frame: str | None = None,
              decoder: str = "ess", resume: bool = False, overwrite: bool = False, max_minutes: float | None = None,
              report_every: int = 20, seed: int = 0, fail_at_step: int | None = None, cpu_bf16: bool = False,
              class_weight_power: float | None = None, dry_run: bool = False) -> dict:
    """Fit the HexPlane VAE on a scene store with Ray Train; returns the final metrics and checkpoint paths.
    ``epochs``, ``batch_size``, ``lr``, ``warmup_steps`` and ``class_weight_power`` (the exponent of the loss's
    class weights, ``vae_losses.class_weights``) default to the preset's ``vae_recipe``.
    ``cpu_bf16`` trains CPU workers under bf16 autocast (CUDA workers always use it)."""
    from dcgen.train.vae_loop import VAETrainConfig, steps_per_epoch
    from dcgen.train.vae_losses import class_weights

    out = storage.run_path(out)  # a local Path or a URI (s3://, gs://, file://)
    check_local_cpu_bf16(cpu_bf16, scaling)
    if scaling.max_failures < -1:
        raise ValueError(f"--max-failures must be >= 0 (or -1 for unlimited), got {scaling.max_failures}")
    if report_every < 1:
        raise ValueError(f"--report-every must be >= 1, got {report_every}")
    store = SceneStore.open(data)
    check_store_matches(store, preset)
    n_train, n_val = store.indices("train").size, store.indices("val").size
    if n_train == 0 or n_val == 0:
        raise ValueError(f"{data}: needs clips in both the train and val splits (has {n_train} train, {n_val} val)")
    named = get_preset(preset)
    model_cfg = named.vae.replace(projection=projection or named.vae.projection, decoder=decoder,
                                  frame=frame or named.vae.frame)
    recipe = named.vae_recipe
    d_epochs, d_batch, d_lr, d_warmup = recipe.epochs, recipe.batch_size, recipe.lr, recipe.warmup_steps
    epochs, batch_size = given(epochs, d_epochs), given(batch_size, d_batch)
    lr, warmup_steps = given(lr, d_lr), given(warmup_steps, d_warmup)
    power = recipe.class_weight_power if class_weight_power is None else class_weight_power
    weights_K = class_weights(store.class_histogram("train"), power)
    # the run's config checks its numbers (learning rate, warm-up, deadline) before the run directory is touched
    run = VAETrainConfig(
        model=model_cfg.to_dict(), class_weights=[float(w) for w in weights_K],
        steps_per_epoch=steps_per_epoch(n_train, batch_size, scaling.workers), epochs=epochs,
        batch_size=batch_size, lr=lr, warmup_steps=warmup_steps, beta=beta, report_every=report_every, seed=seed,
        out_dir=str(out), max_minutes=max_minutes, fail_at_step=fail_at_step, cpu_bf16=cpu_bf16,
        extra={"data": str(data), "preset": preset, "train_clips": int(n_train), "val_clips": int(n_val),
               "class_weight_power": power})
    if dry_run:  # everything checked, nothing written
        return resolved(run, scaling)
    prepare_run_dir(out, resume, overwrite)
    if resume:
        check_same_model(out, model_cfg.to_dict(), preset)
    return calibrated(_fit_vae(run, store, out, scaling, resume, "VAE"), data)


def _fit_vae(run, store: SceneStore, out: Path, scaling: Scaling, resume: bool, what: str) -> dict:
    """Ray Train fits the VAE loop's ``run`` on the store's train and val splits (run directory prepared)."""
    from dcgen.data.ray_dataset import read_scenes
    from dcgen.runtime import init_ray
    from dcgen.train import ray_trainer

    if resume:
        check_latest_checkpoint(out / "ray" / "vae", run.model)
    init_ray(scaling.address)
    # the trajectory: a reference-frame VAE (motion_frame.py) resamples every clip with it
    arrays = ("occupancy", "trajectory", "mask") if store.has_mask else ("occupancy", "trajectory")
    data = store.path
    datasets = {"train": read_scenes(data, "train", arrays), "val": read_scenes(data, "val", arrays)}
    (out / "run.json").write_text(json.dumps({"kind": "vae", "run": asdict(run), "scaling": asdict(scaling)},
                                             indent=2))
    result = ray_trainer.fit("dcgen.train.vae_loop:train_vae", asdict(run), datasets=datasets,
                             storage_path=str(out / "ray"), name="vae", num_workers=scaling.workers,
                             progress=f"train {what.lower()}", total_steps=run.epochs * run.steps_per_epoch,
                             gpus_per_worker=scaling.gpus_per_worker, cpus_per_worker=cpus_per_worker(scaling),
                             max_failures=scaling.max_failures)
    if result.error:
        raise RuntimeError(f"{what} training failed: {result.error}")
    final = result.return_value or {}
    return {"best": str(out / "best"), "last": str(out / "last"), "metrics": final, "run_dir": str(out)}


DECODER_NOISE = 0.6  # dcgen train decoder's default --latent-noise (units: the DiT's standardised latents)
DECODER_LR = 3e-4
DECODER_EPOCHS = 4  # dcgen train decoder's default --epochs (the pipeline's stage: Preset.decoder_epochs)


def train_decoder(data: str, vae: str, out: str | Path, *, scaling: Scaling = Scaling(),
                  epochs: int = DECODER_EPOCHS, batch_size: int | None = None, lr: float = DECODER_LR,
                  latent_noise: float = DECODER_NOISE, resume: bool = False, overwrite: bool = False,
                  max_minutes: float | None = None, report_every: int = 20, seed: int = 0, cpu_bf16: bool = False,
                  dry_run: bool = False) -> dict:
    """Fine-tune the decoder of the trained VAE ``vae`` on latents perturbed by ``latent_noise`` (the encoder and
    so the latent space stay ``vae``'s: a DiT trained on its latents decodes through the result); the class
    weights, batch size and KL weight are the ones ``vae`` was trained with (batch size overridable)."""
    from dcgen import checkpoint
    from dcgen.models.loading import vae_config
    from dcgen.train.encode import check_vae_matches_store
    from dcgen.train.vae_loop import VAETrainConfig, steps_per_epoch

    out = storage.run_path(out)
    check_local_cpu_bf16(cpu_bf16, scaling)
    if report_every < 1:
        raise ValueError(f"--report-every must be >= 1, got {report_every}")
    meta = checkpoint.read_meta(vae, kind="vae")
    model_cfg = vae_config(meta, vae)
    store = SceneStore.open(data)
    check_vae_matches_store(model_cfg, store.grid, vae, data)
    n_train, n_val = store.indices("train").size, store.indices("val").size
    if n_train == 0 or n_val == 0:
        raise ValueError(f"{data}: needs clips in both the train and val splits (has {n_train} train, {n_val} val)")
    trained = meta.get("train") or {}
    weights = trained.get("class_weights")
    if weights is None or len(weights) != model_cfg.num_classes:
        from dcgen.train.vae_losses import class_weights

        weights = [float(w) for w in class_weights(store.class_histogram("train"),
                                                   trained.get("extra", {}).get("class_weight_power", 0.5))]
    batch_size = given(batch_size, trained.get("batch_size", 1))
    run = VAETrainConfig(
        model=model_cfg.to_dict(), class_weights=[float(w) for w in weights],
        steps_per_epoch=steps_per_epoch(n_train, batch_size, scaling.workers), epochs=epochs,
        batch_size=batch_size, lr=lr, beta=trained.get("beta", 0.0015), report_every=report_every, seed=seed,
        out_dir=str(out), max_minutes=max_minutes, cpu_bf16=cpu_bf16, init_from=storage.resolve(str(vae)),
        freeze_encoder=True, latent_noise=latent_noise, latent_space=checkpoint.latent_space_id(vae),
        extra={"data": str(data), "train_clips": int(n_train), "val_clips": int(n_val), "decoder_of": str(vae)})
    if dry_run:
        return resolved(run, scaling)
    prepare_run_dir(out, resume, overwrite)
    if resume:
        saved = saved_run(out) or {}
        if saved and (saved.get("latent_space") != run.latent_space or not saved.get("freeze_encoder")):
            raise ValueError(f"{out}: the run there is not a decoder fine-tuning of {vae}'s latent space "
                             f"({saved.get('latent_space')!r}); resume with the VAE it started from, or pass "
                             "--overwrite")
    return calibrated(_fit_vae(run, store, out, scaling, resume, "Decoder"), data)


def calibrated(result: dict, data: str) -> dict:
    """A VAE or decoder run's result after calibrating the decode of its ``best`` and ``last`` checkpoints in place
    on the store's training split (``calibrate.py``: the class mix the class-weighted loss shifted)."""
    from dcgen.train.calibrate import calibrate_run

    return {**result, "calibration": calibrate_run(result["run_dir"], data)}


# ---- DiT ---------------------------------------------------------------------------------------------------

def parse_conditions(spec, latents=None) -> tuple[str, ...]:
    """DiT conditions from ``"command,trajectory"`` (or a sequence); ``"none"`` for an unconditional model;
    ``None``/``"auto"`` for every condition the latent store can train (``prev_clip`` only if it has clips with a
    previous clip)."""
    from dcgen.models.dit import CONDITIONS

    if spec is None or spec == "auto":
        names = [c for c in CONDITIONS if c != "prev_clip" or (latents is not None and latents.has_previous)]
        return tuple(names)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in CONDITIONS]
    if unknown or not names:
        raise ValueError(f"--cond {spec!r}: unknown condition(s) {unknown}; expected a comma-separated subset of "
                         f"{', '.join(CONDITIONS)} (or 'none', or 'auto')")
    if len(set(names)) != len(names):
        raise ValueError(f"--cond {spec!r} names a condition twice")
    if "prev_clip" in names and latents is not None and not latents.has_previous:
        raise ValueError(f"--cond prev_clip: {latents.path} has no clip whose previous clip (T frames earlier in "
                         "the same scene) is in the store, so temporal extension cannot be trained on it")
    return tuple(names)


LATENT_NORMS = ("plane", "channel")


def latent_norm_of(latents, kind: str = "plane") -> dict:
    """The DiT's standardisation of a finished latent store's μ, with its x̂₀ range: per plane and channel
    (``plane``, the default) or per channel over every plane (``channel``, runs before per-plane statistics)."""
    from dcgen.diffusion.latent_norm import LatentNorm, PlaneLatentNorm, store_plane_statistics

    if kind not in LATENT_NORMS:
        raise ValueError(f"latent normalisation {kind!r}: expected one of {', '.join(LATENT_NORMS)}")
    meta = latents.meta
    if meta.get("latent_mean") is None or meta.get("latent_std") is None:
        raise ValueError(f"{latents.path}: the latent store has no latent statistics (an unfinished encode); "
                         "encode again")
    if kind == "channel":
        return LatentNorm.from_statistics(meta["latent_mean"], meta["latent_std"], meta.get("latent_min"),
                                          meta.get("latent_max")).to_dict()
    return PlaneLatentNorm.from_statistics(latents.dims, store_plane_statistics(latents)).to_dict()


def dit_config_for(preset: str, latents, conditions: tuple[str, ...], latent_norm: str = "plane"):
    """The DiT preset's config with exactly ``conditions``, checked against the latent store's dims and grid."""
    from dcgen.models.rollout import RolloutLayout

    cfg = replace(get_preset(preset).dit, conditions=tuple(conditions),
                  latent_norm=latent_norm_of(latents, latent_norm))
    g = latents.grid
    if (cfg.latent != latents.dims or cfg.num_frames != g.num_frames or tuple(cfg.layout_size) != g.layout_size
            or tuple(cfg.bev_size) != tuple(g.size[:2]) or cfg.num_classes < g.num_classes):
        raise ValueError(f"{latents.path}: latents {latents.dims} of grid T={g.num_frames} XYZ={list(g.size)} do "
                         f"not match the DiT preset {preset!r} (latents {cfg.latent})")
    side = RolloutLayout(cfg.latent, cfg.patch).size
    if latents.size != side:
        raise ValueError(f"{latents.path}: rollout side {latents.size} does not match the DiT's {side}")
    return cfg


def train_dit(latents: str, out: str | Path, *, vae: str | None = None, conditions=None, preset: str = "small",
              scaling: Scaling = Scaling(), epochs: int | None = None, batch_size: int | None = None,
              lr: float | None = None, ema_decay: float | None = None, cond_drop: float = 0.1,
              cond_drop_all: float | None = None, resume: bool = False, overwrite: bool = False,
              max_minutes: float | None = None, report_every: int = 20, seed: int = 0,
              fail_at_step: int | None = None, prediction: str | None = None, cpu_bf16: bool = False,
              latent_norm: str = "plane", dry_run: bool = False) -> dict:
    """Fit the DiT on a latent store with Ray Train; returns the final metrics and checkpoint paths.
    ``prediction`` ("v" or "eps") overrides the preset's output parametrisation; ``cpu_bf16`` trains CPU workers
    under bf16 autocast (CUDA workers always use it); ``latent_norm`` standardises the latents per ``plane`` and
    channel or per ``channel`` only (``latent_norm_of``)."""
    from dcgen import checkpoint
    from dcgen.data.latent_store import LatentStore
    from dcgen.data.ray_dataset import read_latents
    from dcgen.diffusion.schedule import ScheduleConfig
    from dcgen.runtime import init_ray
    from dcgen.train import ray_trainer
    from dcgen.train.dit_loop import DiTTrainConfig
    from dcgen.train.vae_loop import steps_per_epoch

    check_local_cpu_bf16(cpu_bf16, scaling)
    out = storage.run_path(out)  # a local Path or a URI (s3://, gs://, file://)
    store = LatentStore.open(latents)
    if vae is not None:
        checkpoint.read_meta(vae, kind="vae")
        space = checkpoint.latent_space_id(vae)
        if space != store.vae_checkpoint_id:
            raise ValueError(f"{latents} was encoded with VAE {store.vae_checkpoint_id!r}, but --vae {vae} is "
                             f"{checkpoint.checkpoint_id(vae)!r} (latent space {space!r}); pass the VAE that made "
                             "the latents (or encode again)")
    names = parse_conditions(conditions, store)
    model_cfg = dit_config_for(preset, store, names, latent_norm)
    if prediction is not None:
        model_cfg = replace(model_cfg, prediction=prediction)
    saved = saved_run(out) if resume else None
    if saved and saved.get("model", {}).get("latent_norm") is not None:
        # a resumed network goes on in the latent space it learned (a run started before per-plane statistics)
        model_cfg = replace(model_cfg, latent_norm=saved["model"]["latent_norm"])
    if cond_drop_all is None:  # a resumed run goes on with the drops it started with (none before the option)
        cond_drop_all = saved.get("cond_drop_all", 0.0) if saved else DiTTrainConfig.cond_drop_all
    n_train, n_val = store.rows("train").size, store.rows("val").size
    if n_train == 0 or n_val == 0:
        raise ValueError(f"{latents}: needs clips in both the train and val splits (has {n_train} train, "
                         f"{n_val} val)")
    recipe = get_preset(preset).dit_recipe
    d_epochs, d_batch, d_ema, d_lr = recipe.epochs, recipe.batch_size, recipe.ema_decay, recipe.lr
    epochs, batch_size, lr = given(epochs, d_epochs), given(batch_size, d_batch), given(lr, d_lr)
    ema_decay = given(ema_decay, d_ema)
    run = DiTTrainConfig(
        model=model_cfg.to_dict(), schedule=ScheduleConfig().to_dict(),
        steps_per_epoch=steps_per_epoch(n_train, batch_size, scaling.workers),
        vae_checkpoint_id=store.vae_checkpoint_id, grid=store.grid.to_dict(),
        vae_checkpoint=str(vae or store.meta.get("vae_checkpoint", "")), epochs=epochs,
        batch_size=batch_size, lr=lr, ema_decay=ema_decay, cond_drop=cond_drop, cond_drop_all=cond_drop_all,
        report_every=report_every, seed=seed, out_dir=str(out), max_minutes=max_minutes, fail_at_step=fail_at_step,
        cpu_bf16=cpu_bf16,
        extra={"latents": str(latents), "preset": preset, "train_clips": int(n_train), "val_clips": int(n_val)})
    if dry_run:  # everything checked, nothing written
        return resolved(run, scaling)
    prepare_run_dir(out, resume, overwrite)
    if resume:
        check_same_dit(out, run)
    init_ray(scaling.address)
    datasets = {"train": read_latents(latents, "train"), "val": read_latents(latents, "val")}
    (out / "run.json").write_text(json.dumps({"kind": "dit", "run": asdict(run), "scaling": asdict(scaling)},
                                             indent=2))
    result = ray_trainer.fit("dcgen.train.dit_loop:train_dit", asdict(run), datasets=datasets,
                             storage_path=str(out / "ray"), name="dit", num_workers=scaling.workers,
                             progress="train dit", total_steps=run.epochs * run.steps_per_epoch,
                             gpus_per_worker=scaling.gpus_per_worker, cpus_per_worker=cpus_per_worker(scaling),
                             max_failures=scaling.max_failures)
    if result.error:
        raise RuntimeError(f"DiT training failed: {result.error}")
    final = result.return_value or {}
    return {"best": str(out / "best"), "last": str(out / "last"), "metrics": final, "run_dir": str(out),
            "conditions": list(names)}


# ---- metric feature networks -------------------------------------------------------------------------------

# Per-preset defaults a user can override: (epochs, batch size). On CPU (small) steps are what a run lacks, so two
# clips per step: twice the updates per minute of four.
def features_run_config(data: str, out: str | Path, *, preset: str | None = None, workers: int = 1,
                        epochs: int | None = None, batch_size: int | None = None, image_net: str = "cnn",
                        inception_weights: str | None = None, render_size: int = 128, lr: float = 2e-3,
                        aux_weight: float = 1.0, max_minutes: float | None = None, report_every: int = 20,
                        seed: int = 0):
    """The checked ``FeaturesTrainConfig`` of a feature-network run on the store ``data`` (every user error
    raised here, before anything starts). The proxy task's density bins come from the train split's vehicle
    counts (the manifest's class counts); ``inception_weights`` (a local pretrained InceptionV3 state_dict) makes
    the 2D side that frozen network."""
    import numpy as np

    from dcgen.data.classes import VEHICLE
    from dcgen.metrics.feature_nets import FeatureNetsConfig
    from dcgen.metrics.proxy_task import ProxyTask, fit_density_edges
    from dcgen.train.features_loop import FeaturesTrainConfig
    from dcgen.train.vae_loop import steps_per_epoch

    store = SceneStore.open(data)
    if preset is not None:
        check_store_matches(store, preset, "feature networks")
    n_train, n_val = store.indices("train").size, store.indices("val").size
    if n_train == 0 or n_val == 0:
        raise ValueError(f"{data}: needs clips in both the train and val splits (has {n_train} train, {n_val} val)")
    if inception_weights is not None and image_net not in ("cnn", "inception-pretrained"):
        raise ValueError(f"--inception-weights replaces the 2D network with a pretrained InceptionV3; it cannot be "
                         f"combined with --image-net {image_net}")
    image_kind = "inception-pretrained" if inception_weights is not None else image_net
    if image_kind == "inception-pretrained" and inception_weights is None:
        raise ValueError("--image-net inception-pretrained needs --inception-weights FILE (a local InceptionV3 "
                         "state_dict)")
    image_cfg, inception_sha = None, None
    if inception_weights is not None:
        from dcgen.metrics.inception import load_inception_weights

        _, info = load_inception_weights(inception_weights)  # a wrong file fails here, not in a worker
        image_cfg = {"num_classes": info["num_classes"], "fid_variant": info["fid_variant"]}
        inception_sha = info["sha256"]
        inception_weights = info["path"]
    g = store.grid
    table = store.manifest()
    splits = np.asarray(table.column("split").to_pylist(), dtype=object)
    counts = np.asarray(table.column("class_counts").to_pylist(), dtype=object)[splits == "train"]
    vehicles = [int(c[VEHICLE]) if len(c) > VEHICLE else 0 for c in counts]
    proxy = ProxyTask(density_edges=fit_density_edges(vehicles, int(np.prod(g.shape))))
    nets_cfg = FeatureNetsConfig.for_grid(g, proxy, image_kind, render_size, image=image_cfg)
    named = preset or preset_of_grid(g)
    d_epochs, d_batch = (10, 8) if named is None else (get_preset(named).features_recipe.epochs,
                                                       get_preset(named).features_recipe.batch_size)
    epochs, batch_size = given(epochs, d_epochs), given(batch_size, d_batch)
    trained_on = {"data": str(data), "source": store.meta.get("source"),
                  "provenance": store.meta.get("provenance", {}), "grid": g.to_dict(), "train_clips": int(n_train),
                  "val_clips": int(n_val), "inception_weights": inception_weights, "inception_sha256": inception_sha}
    return FeaturesTrainConfig(
        nets=nets_cfg.to_dict(), steps_per_epoch=steps_per_epoch(n_train, batch_size, workers),
        epochs=epochs, batch_size=batch_size, lr=lr, aux_weight=aux_weight, report_every=report_every, seed=seed,
        out_dir=str(storage.run_path(out)), max_minutes=max_minutes, inception_weights=inception_weights,
        inception_sha256=inception_sha, extra={"trained_on": trained_on, "preset": named})


def train_features(data: str, out: str | Path, *, preset: str | None = None, scaling: Scaling = Scaling(),
                   epochs: int | None = None, batch_size: int | None = None, image_net: str = "cnn",
                   inception_weights: str | None = None, render_size: int = 128, lr: float = 2e-3,
                   aux_weight: float = 1.0, resume: bool = False, overwrite: bool = False,
                   max_minutes: float | None = None, report_every: int = 20, seed: int = 0,
                   dry_run: bool = False) -> dict:
    """Fit the 2D and 3D metric feature networks (SPEC §4) on a scene store with Ray Train (see
    ``features_run_config`` for what is derived from the store)."""
    from dcgen.data.ray_dataset import read_scenes
    from dcgen.runtime import init_ray
    from dcgen.train import ray_trainer

    out = storage.run_path(out)  # a local Path or a URI (s3://, gs://, file://)
    run = features_run_config(data, out, preset=preset, workers=scaling.workers, epochs=epochs,
                              batch_size=batch_size, image_net=image_net, inception_weights=inception_weights,
                              render_size=render_size, lr=lr, aux_weight=aux_weight, max_minutes=max_minutes,
                              report_every=report_every, seed=seed)
    if dry_run:  # everything checked, nothing written
        return resolved(run, scaling)
    prepare_run_dir(out, resume, overwrite)
    if resume:
        check_same_features(out, run.nets)
    init_ray(scaling.address)
    arrays = ("occupancy", "command")
    datasets = {"train": read_scenes(data, "train", arrays), "val": read_scenes(data, "val", arrays)}
    (out / "run.json").write_text(json.dumps({"kind": "features", "run": asdict(run), "scaling": asdict(scaling)},
                                             indent=2))
    result = ray_trainer.fit("dcgen.train.features_loop:train_features", asdict(run), datasets=datasets,
                             storage_path=str(out / "ray"), name="features", num_workers=scaling.workers,
                             progress="train features", total_steps=run.epochs * run.steps_per_epoch,
                             gpus_per_worker=scaling.gpus_per_worker, cpus_per_worker=cpus_per_worker(scaling),
                             max_failures=scaling.max_failures)
    if result.error:
        raise RuntimeError(f"feature network training failed: {result.error}")
    final = result.return_value or {}
    from dcgen.metrics.feature_nets import FeatureNetsConfig

    nets = FeatureNetsConfig.from_dict(run.nets)
    return {"best": str(out / "best"), "last": str(out / "last"), "metrics": final, "run_dir": str(out),
            "proxy_task": nets.proxy, "image_kind": nets.image_kind}
