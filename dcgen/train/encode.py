"""Encode a scene store into a latent store (SPEC §3: the DiT trains on the VAE μ packed into the padded rollout).

Ray Data reads the clips (``read_scenes``) and ``map_batches`` runs an actor pool: one VAE per actor (one GPU per
actor when the cluster has GPUs, CPU slots otherwise), each writing its batches' latents straight into the latent
store (one clip per chunk, so writers never share a chunk) and returning per-plane moments for the statistics
(per plane and channel for the DiT's standardisation, and per channel over every plane, recorded beside). The
driver checks everything first (checkpoint, grid, output), copies the conditions, and marks the store complete
only after every latent is written. The store is built in a hidden sibling of ``out`` and swapped in only then, so
a failure (a damaged clip found by a read task, reported naming the store and clip) leaves an earlier store whole.

Legend: B batch, C latent channels, S rollout side, T/X/Y/Z clip axes.
"""

from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger("dcgen.encode")


def check_vae_matches_store(vae_config, grid, vae_path: str, data: str) -> None:
    """The VAE must read clips of the store's shape and class range."""
    if tuple(vae_config.shape) != tuple(grid.shape) or grid.num_classes > vae_config.num_classes:
        raise ValueError(f"{data}: store grid T={grid.num_frames} XYZ={list(grid.size)} K={grid.num_classes} does "
                         f"not match the VAE {vae_path} (T={vae_config.num_frames} XYZ={list(vae_config.size)} "
                         f"K={vae_config.num_classes})")


class EncodeActor:
    """One VAE on this actor's device; ``__call__`` encodes a batch of clips, writes their latents and returns
    each row's ``plane_moments`` (per-plane channel sums, sums of squares, minima and maxima)."""

    def __init__(self, vae_path: str, out: str, clip_index: np.ndarray, device: str):
        import torch

        from dcgen.data.latent_store import LatentStore
        from dcgen.models.loading import load_vae
        from dcgen.models.rollout import RolloutLayout

        self.device = torch.device(device)
        self.vae = load_vae(vae_path, self.device).model
        self.store = LatentStore.open(out, "a", require_complete=False)
        self.rollout = RolloutLayout(self.vae.dims, self.store.patch)
        self.clip_index = np.asarray(clip_index, dtype=np.int64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        from dcgen.diffusion.latent_norm import plane_moments

        index = np.asarray(batch["index"], dtype=np.int64)
        rows = np.searchsorted(self.clip_index, index)
        assert np.array_equal(self.clip_index[rows], index), "clip missing from the latent store's index"
        occ_BTXYZ = torch.from_numpy(np.asarray(batch["occupancy"]).astype(np.int64)).to(self.device)
        with torch.no_grad():
            traj_BT3 = torch.from_numpy(np.array(batch["trajectory"], dtype=np.float32)).to(self.device)
            mu, _ = self.vae.encode(occ_BTXYZ, traj_BT3)
            rollout_BCSS = self.rollout.pack({k: v.float() for k, v in mu.items()})
        self.store.write_latents(rows, rollout_BCSS.cpu().numpy())
        return {"row": rows, **plane_moments(rollout_BCSS, self.vae.dims)}


def _pool(ray, workers: int | None) -> tuple[int, dict]:
    """Actor count and per-actor resources: one GPU each when the cluster has GPUs, else a CPU each, leaving one
    CPU to the read tasks."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    if gpus:
        return (workers or gpus), {"num_gpus": 1, "num_cpus": 1}
    return (workers or max(1, int(cpus) - 1)), {"num_cpus": 1}


def _strategy(ray, size: int):
    """``size`` actors from the start, but a minimum of one: Ray Data warns when the pool's minimum exceeds the
    blocks it receives, and a small store (one read block) then simply runs on one actor."""
    return ray.data.ActorPoolStrategy(min_size=1, max_size=size, initial_size=size)


def encode_store(vae_ckpt: str, data: str, out: str, batch_size: int = 8, overwrite: bool = False, *,
                 workers: int | None = None, ray_address: str | None = None) -> dict:
    """Write the latent store ``out`` for every complete clip of the scene store ``data``; returns its summary."""
    from dcgen import storage
    from dcgen.checkpoint import latent_space_id
    from dcgen.data.latent_store import LatentStore, previous_clips
    from dcgen.data.integrity import staged
    from dcgen.data.store import SceneStore, _exists
    from dcgen.models.loading import load_vae
    from dcgen.models.rollout import RolloutLayout
    from dcgen.runtime import error_summary, unwrap_ray_error

    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    vae_ckpt = str(vae_ckpt)
    out = out if "://" in str(out) else os.path.abspath(out)
    if _exists(out) and not overwrite:
        raise ValueError(f"{out}: already exists; pass --overwrite to replace it")
    vae = load_vae(vae_ckpt).model  # a corrupt or foreign checkpoint fails here, before anything is written
    store = SceneStore.open(data)
    check_vae_matches_store(vae.config, store.grid, vae_ckpt, data)
    if out == os.path.abspath(data):
        raise ValueError(f"--out {out} is the scene store itself; choose another path")

    table = store.manifest()
    index = table.column("index").to_numpy().astype(np.int64)
    if index.size == 0:
        raise ValueError(f"{data}: no complete clips to encode")
    scenes = table.column("scene").to_pylist()
    prev = previous_clips(scenes, table.column("frame_start").to_numpy(), store.grid.num_frames)
    rollout = RolloutLayout(vae.dims)
    conditions = {k: [] for k in ("command", "trajectory", "layout", "bev")}
    for a in range(0, index.size, 256):
        part = store.read(index[a:a + 256], tuple(conditions))
        for k in conditions:
            conditions[k].append(part[k])
    conditions = {k: np.concatenate(v) for k, v in conditions.items()}
    if overwrite and _exists(out):
        LatentStore.open(out, require_complete=False)  # replace only a latent store, never anything else
    with staged(out, overwrite) as building:  # an earlier latent store at out stays whole unless this one finishes
        latents = LatentStore.create(
            building, grid=store.grid, dims=vae.dims, rollout_size=rollout.size, rollout_patch=rollout.patch,
            conditions=conditions, clip_index=index, splits=table.column("split").to_pylist(), prev_index=prev,
            source=str(data), vae_checkpoint=storage.resolve(vae_ckpt), vae_checkpoint_id=latent_space_id(vae_ckpt),
            frame=vae.frame_info())
        try:
            moments = _encode_latents(vae, data, building, index, batch_size, workers, ray_address,
                                      storage.resolve(vae_ckpt))
        except Exception as e:  # Ray wraps what a read task or an encoder actor raised
            root = unwrap_ray_error(e)
            lost = f"nothing was written at {out}" + (" (the latent store there is kept)" if _exists(out) else "")
            if isinstance(root, ValueError):  # a damaged clip, say: the store reader's message names store and clip
                message = str(root).strip().splitlines()[0]
                # the driver knows the store even where the worker's message does not name it
                raise ValueError(f"{message if str(data) in message else f'{data}: {message}'}; {lost}") from None
            raise RuntimeError(f"encoding {data} failed ({error_summary(root)}); {lost}") from e
        latents.finalize(*moments.channels(), plane_stats=moments.planes())
    log.info("encoded %d clips of %s into %s", index.size, data, out)
    return LatentStore.open(out).describe()


def _encode_latents(vae, data: str, out: str, index: np.ndarray, batch_size: int, workers: int | None,
                    ray_address: str | None, vae_path: str):
    """Encode every clip of ``data`` into the latent store ``out`` on a Ray Data actor pool; returns the latents'
    ``PlaneMoments``."""
    from dcgen.diffusion.latent_norm import PlaneMoments
    from dcgen.data.ray_dataset import map_on_actors, read_scenes
    from dcgen.progress import Progress
    from dcgen.runtime import init_ray

    ray = init_ray(ray_address)
    size, resources = _pool(ray, workers)
    device = "cuda" if "num_gpus" in resources else "cpu"
    ds = map_on_actors(  # never restarted: a failed encode is simply run again
        read_scenes(data, None, ("occupancy", "trajectory"), reserve_for_downstream=True), EncodeActor,
        fn_constructor_kwargs={"vae_path": vae_path, "out": out, "clip_index": index, "device": device},
        batch_size=batch_size, batch_format="numpy", compute=_strategy(ray, size), **resources)
    moments, seen = PlaneMoments(vae.dims), np.zeros(index.size, dtype=bool)
    with Progress("encode", total=index.size, unit="clip") as bar:
        for part in ds.iter_batches(batch_size=None, batch_format="numpy"):
            moments.add(part)
            seen[part["row"]] = True
            bar.update(int(seen.sum()))
    if not seen.all():
        raise RuntimeError(f"encode wrote {int(seen.sum())} of {index.size} latents")
    return moments
