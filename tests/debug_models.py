"""Builders of a debug scene store, VAE, latents and DiT shared by the encode, DiT-loop and pipeline tests.

A plain module (not conftest) so test files can import it by name: several conftest modules exist and
``from conftest import`` resolves to whichever pytest loaded first.
"""

from __future__ import annotations


def write_city_store(path, num_scenes: int, clips_per_scene: int = 2, seed: int = 0, val_every: int = 5,
                     frame_rate: float | None = None):
    """A debug-grid scene store of synthetic-city scenes, each cut into ``clips_per_scene`` consecutive clips (so
    every clip but a scene's first has a previous clip); every ``val_every``-th scene is in the val split.
    ``frame_rate`` overrides the grid's (a lower rate makes the ego move more within the 4 debug frames)."""
    from dataclasses import replace

    import numpy as np

    from dcgen.data.derive import derive_side_info
    from dcgen.data.grid import GRIDS
    from dcgen.data.store import SceneStore
    from dcgen.data.synth_city import generate_clip

    grid = GRIDS["debug"] if frame_rate is None else replace(GRIDS["debug"], frame_rate=frame_rate)
    t = grid.num_frames
    long_grid = replace(grid, num_frames=t * clips_per_scene)
    store = SceneStore.create(str(path), grid, source="test-city", with_mask=True)
    clips, rows = [], []
    for i in range(num_scenes):
        scene = generate_clip(long_grid, seed, i)
        for j in range(clips_per_scene):
            occ = scene["occupancy"][j * t:(j + 1) * t]
            side = derive_side_info(occ, scene["ego_pose"][j * t:(j + 1) * t].astype(np.float64),
                                    grid.layout_downsample)
            clips.append({"occupancy": occ, "mask": scene["mask"][j * t:(j + 1) * t], "ego_pose": side["ego_pose"],
                          "trajectory": side["trajectory"], "command": np.uint8(side["command"]),
                          "layout": side["layout"], "bev": side["bev"]})
            rows.append({"scene": f"city-{seed}-{i}", "frame_start": j * t,
                         "split": "val" if i % val_every == val_every - 1 else "train", "seed": seed})
    store.append({k: np.stack([c[k] for c in clips]) for k in clips[0]}, rows)
    store.finalize()
    return str(path)


def train_debug_vae(store_path: str, out_dir, epochs: int = 1, batch_size: int = 4, lr: float = 3e-3,
                    seed: int = 0, **options) -> str:
    """A debug VAE trained by the VAE loop on a ``LocalContext`` (``options`` are further ``VAETrainConfig``
    fields); returns its exported best checkpoint."""
    from dataclasses import asdict

    from dcgen.data.store import SceneStore
    from dcgen.presets import get_preset
    from dcgen.train.context import LocalContext
    from dcgen.train.vae_loop import VAETrainConfig, steps_per_epoch, train_vae
    from dcgen.train.vae_losses import class_weights

    store = SceneStore.open(store_path)
    ctx = LocalContext(out_dir=out_dir, store_path=store_path, arrays=("occupancy", "mask"), seed=seed)
    run = VAETrainConfig(model=get_preset("debug").vae.to_dict(),
                         class_weights=[float(w) for w in class_weights(store.class_histogram("train"))],
                         steps_per_epoch=steps_per_epoch(store.indices("train").size, batch_size, 1), epochs=epochs,
                         batch_size=batch_size, lr=lr, report_every=1000, seed=seed, out_dir=str(out_dir), **options)
    train_vae(ctx, asdict(run))
    return str(out_dir / "best")


def train_debug_dit(latents: str, out_dir, conditions: tuple[str, ...], epochs: int, batch_size: int = 8,
                    lr: float = 1e-3, ema_decay: float = 0.9, seed: int = 0, cpu_bf16: bool = False) -> str:
    """A debug DiT trained by the DiT loop on a ``LocalContext`` over ``latents``; returns its best checkpoint."""
    from dataclasses import asdict, replace

    from dcgen.data.latent_store import LatentStore, latent_batches
    from dcgen.diffusion.schedule import ScheduleConfig
    from dcgen.presets import get_preset
    from dcgen.train.context import LocalContext
    from dcgen.train.dit_loop import DiTTrainConfig, train_dit
    from dcgen.train.vae_loop import steps_per_epoch

    store = LatentStore.open(latents)
    epoch_counter = iter(range(10 ** 9))
    splits = {
        "train": lambda: latent_batches(latents, "train", batch_size, next(epoch_counter), True, seed),
        "val": lambda: latent_batches(latents, "val", batch_size),
    }
    ctx = LocalContext(splits=splits, out_dir=out_dir)
    from dcgen.train.runs import latent_norm_of

    # the fixtures' DiT stays at 2 x 128: tests check behaviour, not sample quality, and the preset's 4 x 256 (a step
    # 2.7x dearer, sampling 3.3x) added minutes to the suite
    cfg = replace(get_preset("debug").dit, depth=2, width=128, heads=2, conditions=tuple(conditions),
                  latent_norm=latent_norm_of(store))
    run = DiTTrainConfig(model=cfg.to_dict(), schedule=ScheduleConfig().to_dict(),
                         steps_per_epoch=steps_per_epoch(store.rows("train").size, batch_size, 1),
                         vae_checkpoint_id=store.vae_checkpoint_id, grid=store.grid.to_dict(), epochs=epochs,
                         batch_size=batch_size, lr=lr, ema_decay=ema_decay, report_every=1000, seed=seed,
                         out_dir=str(out_dir), cpu_bf16=cpu_bf16)
    train_dit(ctx, asdict(run))
    return str(out_dir / "best")


class PickledNote:
    """An arbitrary Python object: what a checkpoint must never carry (unpickling it runs code named by the file)."""

    def __init__(self, text: str = "saved by a training script"):
        self.text = text


def damaged_checkpoint(src: str, dst, damage: str) -> str:
    """A copy of the checkpoint directory ``src`` at ``dst`` with its weights damaged, metadata unchanged: ``pickled``
    saves a ``PickledNote`` beside the state_dicts; ``missing_key`` drops the first tensor of every state_dict."""
    import shutil
    from pathlib import Path

    import torch

    shutil.copytree(src, dst)
    state_path = Path(dst) / "state.pt"
    state = torch.load(state_path, weights_only=True)
    if damage == "pickled":
        state["note"] = PickledNote()
    elif damage == "missing_key":
        for weights in {id(w): w for w in state.values()}.values():  # "model" and "ema" may be one dict
            del weights[next(iter(weights))]
    else:
        raise ValueError(f"damage {damage!r}: expected 'pickled' or 'missing_key'")
    torch.save(state, state_path)
    return str(dst)
