"""Run directories of the training drivers: what is already there, and whether a run may start, resume or be
replaced. Each check raises a ``ValueError`` naming the directory and what to pass (``--resume``/``--overwrite``)
before any worker starts.
"""

from __future__ import annotations

import json
from pathlib import Path

from dcgen import storage
from dcgen.data.grid import grid as preset_grid
from dcgen.data.store import SceneStore


def check_store_matches(store: SceneStore, preset: str, what: str = "model") -> None:
    g = preset_grid(preset)
    if (store.grid.num_frames, store.grid.size) != (g.num_frames, g.size) or store.grid.num_classes > g.num_classes:
        raise ValueError(f"{store.path}: store grid T={store.grid.num_frames} XYZ={list(store.grid.size)} "
                         f"K={store.grid.num_classes} does not match the {what} preset {preset!r} "
                         f"(T={g.num_frames} XYZ={list(g.size)} K={g.num_classes})")


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    has_run = has_ray_run(out)
    if has_run and overwrite:
        storage.remove_dir(str(out))
    elif has_run and not resume:
        raise ValueError(f"{out}: a training run is already there; pass --resume to continue it or --overwrite "
                         "to start over")
    elif resume and not has_run:
        raise ValueError(f"{out}: --resume given but there is no run to resume")
    out.mkdir(parents=True, exist_ok=True)


def saved_run(out: Path) -> dict | None:
    """The ``run`` section of ``OUT/run.json``, or None when there is none (a run interrupted before it wrote
    run.json has no checkpoint either; the loops check their own)."""
    run_file = out / "run.json"
    if not run_file.is_file():
        return None
    try:
        return json.loads(run_file.read_text())["run"]
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{run_file}: unreadable run description ({e}); pass --overwrite to start over") from e


def changed_keys(saved: dict | None, current: dict) -> list[str]:
    """Keys whose values differ between a config saved in run.json and ``current``, both compared as run.json holds
    them (tuples become lists)."""
    saved, current = json.loads(json.dumps(saved or {})), json.loads(json.dumps(current))
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def check_same_model(out: Path, model_cfg: dict, preset: str) -> None:
    """``--resume`` continues the network the run was started with: same preset grid and options."""
    saved = saved_run(out)
    if saved is None:
        return
    keys = changed_keys(saved.get("model"), model_cfg)
    if keys:
        old = saved.get("extra", {}).get("preset", "?")
        raise ValueError(f"{out}: the run was started with preset {old!r} and a different VAE ({', '.join(keys)} "
                         f"differ) than --preset {preset!r} with these options; resume with the original ones")


def check_latest_checkpoint(ray_run: Path, model_cfg: dict) -> None:
    """The checkpoint Ray Train will resume from (the newest) must load and be of this network; checked here so a
    damaged one is one clear error rather than a worker failing ``max_failures`` times."""
    from dcgen import checkpoint
    from dcgen.train.vae_loop import KIND, check_resumable

    # Ray names checkpoint directories by creation time; checkpoint_manager_snapshot.json sits beside them
    found = sorted(p for p in ray_run.glob("checkpoint_*") if p.is_dir())
    if found:
        meta, _ = checkpoint.load(found[-1], kind=KIND)
        check_resumable(meta, model_cfg, found[-1])




def check_same_dit(out: Path, run) -> None:
    """``--resume`` continues the network the run was started with: same DiT (conditions included) and VAE."""
    from dcgen.models.dit import DiTConfig

    saved = saved_run(out)
    if saved is None:
        return
    # read through DiTConfig so a run saved before a field existed compares with that field's old meaning
    keys = changed_keys(DiTConfig.from_dict(saved["model"]).to_dict() if saved.get("model") else None, run.model)
    if keys:
        raise ValueError(f"{out}: the run was started with a different DiT ({', '.join(keys)} differ: it has "
                         f"conditions {saved.get('model', {}).get('conditions')}); resume with the original options")
    if saved.get("vae_checkpoint_id") != run.vae_checkpoint_id:
        raise ValueError(f"{out}: the run was trained on latents of VAE {saved.get('vae_checkpoint_id')!r}, these "
                         f"are from {run.vae_checkpoint_id!r}; resume with the original latents")




def check_same_features(out: Path, nets_cfg: dict) -> None:
    """``--resume`` continues the feature networks the run was started with."""
    saved = saved_run(out)
    if saved is None:
        return
    if "nets" not in saved:
        raise ValueError(f"{out / 'run.json'}: unreadable run description (no 'nets'); pass --overwrite to start "
                         "over")
    keys = changed_keys(saved["nets"], nets_cfg)
    if keys:
        raise ValueError(f"{out}: the run was started with other feature networks ({', '.join(keys)} differ); "
                         "resume with the original store and options, or pass --overwrite")




def stage_done(path: Path, kind: str | None) -> bool:
    """True when ``path`` holds a checkpoint of ``kind``; a damaged one is an error, not a reason to redo it."""
    from dcgen import checkpoint

    if not path.exists():
        return False
    checkpoint.read_meta(path, kind=kind)
    return True


def has_ray_run(run_dir: Path) -> bool:
    ray_dir = run_dir / "ray"
    return ray_dir.is_dir() and any(ray_dir.iterdir())
