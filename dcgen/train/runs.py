"""Driver side of training: check inputs, build Ray Data datasets and a run config, call ``ray_trainer.fit``.

Each ``train_*`` function validates everything a user can get wrong (store vs preset grid, empty splits, an existing
run without ``resume``) before a worker starts, and returns a summary with the exported best checkpoint's path.
Run directory layout: ``OUT/metrics.jsonl``, ``OUT/tensorboard/``, ``OUT/best``, ``OUT/last`` (user checkpoints,
weights only) and ``OUT/ray/<name>/`` (Ray Train's resumable checkpoints with optimizer state).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from dcgen.data.store import SceneStore
from dcgen.presets import grid as preset_grid

# Per-preset defaults a user can override: (epochs, batch size).
VAE_DEFAULTS = {"debug": (2, 4), "small": (12, 4), "carlasc": (100, 4), "occ3d": (100, 2)}


@dataclass(frozen=True)
class Scaling:
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None  # default: fit the workers beside Ray Data's read tasks
    address: str | None = None  # an existing cluster; None starts the embedded local Ray
    max_failures: int = 2


def check_store_matches(store: SceneStore, preset: str, what: str = "model") -> None:
    g = preset_grid(preset)
    if (store.grid.num_frames, store.grid.size) != (g.num_frames, g.size) or store.grid.num_classes > g.num_classes:
        raise ValueError(f"{store.path}: store grid T={store.grid.num_frames} XYZ={list(store.grid.size)} "
                         f"K={store.grid.num_classes} does not match the {what} preset {preset!r} "
                         f"(T={g.num_frames} XYZ={list(g.size)} K={g.num_classes})")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    ray_dir = out / "ray"
    has_run = ray_dir.is_dir() and any(ray_dir.iterdir())
    if has_run and overwrite:
        shutil.rmtree(out)
    elif has_run and not resume:
        raise ValueError(f"{out}: a training run is already there; pass --resume to continue it or --overwrite "
                         "to start over")
    elif resume and not has_run:
        raise ValueError(f"{out}: --resume given but there is no run to resume")
    out.mkdir(parents=True, exist_ok=True)


def _cpus_per_worker(scaling: Scaling) -> float:
    if scaling.cpus_per_worker is not None:
        return scaling.cpus_per_worker
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    # leave at least one CPU for Ray Data's read tasks: 2 workers at 1 CPU each on 2 CPUs deadlock (PLATFORM-NOTES)
    return max(0.25, min(1.0, (total - 1.0) / scaling.workers))


def train_vae(data: str, preset: str, out: str | Path, *, scaling: Scaling = Scaling(), epochs: int | None = None,
              batch_size: int | None = None, lr: float = 1e-3, beta: float = 0.0015, projection: str = "projection",
              decoder: str = "ess", resume: bool = False, overwrite: bool = False, max_minutes: float | None = None,
              report_every: int = 20, seed: int = 0, fail_at_step: int | None = None) -> dict:
    """Fit the HexPlane VAE on a scene store with Ray Train; returns the final metrics and checkpoint paths."""
    from dcgen.data.ray_dataset import read_scenes
    from dcgen.models.vae import vae_preset
    from dcgen.runtime import init_ray
    from dcgen.train import ray_trainer
    from dcgen.train.vae_loop import VAETrainConfig, steps_per_epoch
    from dcgen.train.vae_losses import class_weights

    out = Path(out).resolve()
    store = SceneStore.open(data)
    check_store_matches(store, preset)
    n_train, n_val = store.indices("train").size, store.indices("val").size
    if n_train == 0 or n_val == 0:
        raise ValueError(f"{data}: needs clips in both the train and val splits (has {n_train} train, {n_val} val)")
    model_cfg = vae_preset(preset).replace(projection=projection, decoder=decoder)
    d_epochs, d_batch = VAE_DEFAULTS.get(preset, (10, 4))
    epochs, batch_size = epochs or d_epochs, batch_size or d_batch
    prepare_run_dir(out, resume, overwrite)
    hist = store.class_histogram("train")
    init_ray(scaling.address)
    arrays = ("occupancy", "mask") if store.has_mask else ("occupancy",)
    datasets = {"train": read_scenes(data, "train", arrays), "val": read_scenes(data, "val", arrays)}
    run = VAETrainConfig(
        model=model_cfg.to_dict(), class_weights=[float(w) for w in class_weights(hist)],
        steps_per_epoch=steps_per_epoch(n_train, batch_size, scaling.workers), epochs=epochs,
        batch_size=batch_size, lr=lr, beta=beta, report_every=report_every, seed=seed, out_dir=str(out),
        max_minutes=max_minutes, fail_at_step=fail_at_step,
        extra={"data": str(data), "preset": preset, "train_clips": int(n_train), "val_clips": int(n_val)})
    (out / "run.json").write_text(json.dumps({"kind": "vae", "run": asdict(run), "scaling": asdict(scaling)},
                                             indent=2))
    result = ray_trainer.fit("dcgen.train.vae_loop:train_vae", asdict(run), datasets=datasets,
                             storage_path=str(out / "ray"), name="vae", num_workers=scaling.workers,
                             gpus_per_worker=scaling.gpus_per_worker, cpus_per_worker=_cpus_per_worker(scaling),
                             max_failures=scaling.max_failures)
    if result.error:
        raise RuntimeError(f"VAE training failed: {result.error}")
    final = result.return_value or {}
    return {"best": str(out / "best"), "last": str(out / "last"), "metrics": final, "run_dir": str(out)}
