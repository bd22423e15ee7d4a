"""The synthetic city: seeded, CarlaSC-like 4D occupancy clips with masks, poses and side information
(SPEC §1: clips, mask, ego_pose, trajectory, command, layout, bev), and the parallel job that fills a scene store.

``generate_clip(grid, seed, index)`` draws everything from ``runtime.rng(seed, index)``: a town (synth_world), the
ego's drive for a command drawn uniformly from static/forward/left/right and the traffic around it
(synth_traffic), then rasterises the world in metres at the grid's voxel size (synth_raster) and models LiDAR
visibility from a roof sensor (synth_lidar). The side information comes from ``derive.derive_side_info`` on the
generated poses, so the stored command is the one any importer would compute. ``write_synthetic_city`` runs one
Ray task per chunk-aligned block of clips, each writing its block straight into the store; Ray is imported
inside it only, like the importers' driver.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable

import numpy as np

from dcgen.data.derive import derive_side_info, pose_from_xyyaw
from dcgen.data.grid import Grid
from dcgen.data.synth_lidar import LidarConfig, visibility
from dcgen.data.synth_raster import (CROWN_DM, NO_CROWN_DM, TOP_DM, MapWindow, columns_to_voxels, paint_map,
                                     sample_frames, stamp_actors)
from dcgen.data.synth_traffic import TrafficConfig, plan_ego, populate
from dcgen.data.synth_world import CityConfig, Scenery, blocks_in, furnish, plan_city
from dcgen.runtime import rng as scene_rng

log = logging.getLogger("dcgen.synth")

SOURCE = "synth-city"
CLIP_KEYS = ("occupancy", "mask", "ego_pose", "trajectory", "command", "layout", "bev")
WORLD_OFFSET = 200.0  # metres: world poses put the town's map frame anywhere within this of the world origin
MIN_CLASSES = 11  # the city writes ids 0..10


def check_grid(grid: Grid) -> None:
    """Raise naming the field unless the synthetic city can fill ``grid``."""
    if grid.num_classes < MIN_CLASSES:
        raise ValueError(f"grid.num_classes={grid.num_classes}: the synthetic city writes class ids 0..10, "
                         f"expected num_classes >= {MIN_CLASSES}")
    if grid.num_frames < 2:
        raise ValueError(f"grid.num_frames={grid.num_frames}: a command needs motion between frames, "
                         "expected >= 2 frames")
    if not grid.frame_rate > 0:
        raise ValueError(f"grid.frame_rate={grid.frame_rate}: expected a positive rate in Hz")
    if min(grid.size) < 1 or min(grid.voxel_size) <= 0:
        raise ValueError(f"grid size {grid.size} / voxel size {grid.voxel_size}: expected positive values")


def generate_clip(grid: Grid, seed: int, index: int, *, city: CityConfig = CityConfig(),
                  traffic: TrafficConfig = TrafficConfig(),
                  lidar: LidarConfig = LidarConfig()) -> dict[str, np.ndarray]:
    """Clip ``index`` of job ``seed``: occupancy [T,X,Y,Z] uint8, mask [T,X,Y,Z] bool, ego_pose [T,4,4],
    trajectory [T,3], command [] uint8, layout [T,X/d,Y/d], bev [X,Y]. Same (seed, index) gives the same bytes."""
    check_grid(grid)
    rng = scene_rng(seed, index)
    command = int(rng.integers(0, 4))
    plan = plan_city(rng, city)
    times = np.arange(grid.num_frames, dtype=np.float64) / grid.frame_rate
    ego = plan_ego(rng, plan, command, float(times[-1]), traffic)
    world_yaw = rng.uniform(-np.pi, np.pi)
    world_xy = rng.uniform(-WORLD_OFFSET, WORLD_OFFSET, size=2)

    ex, ey, eyaw = ego.poses(times)
    ext = grid.extent
    reach = 0.5 * float(np.hypot(ext[0], ext[1])) + 1.0
    window = (float(ex.min()) - reach, float(ex.max()) + reach, float(ey.min()) - reach, float(ey.max()) + reach)
    scenery = Scenery()
    for block in blocks_in(plan, *window):
        scenery.extend(furnish(plan, block, city))
    win = MapWindow.covering(*window, res=min(grid.voxel_size[:2]) / 2)
    columns_TXYC = sample_frames(paint_map(scenery, win, grid), win, ex, ey, eyaw, grid)
    stamp_actors(columns_TXYC, populate(plan, ego, times, window, traffic), times, ex, ey, eyaw, grid)

    occ_TXYZ = columns_to_voxels(columns_TXYC, grid)
    top_TXY = columns_TXYC[..., TOP_DM].astype(np.float32) / 10.0
    canopy_TXY = np.where(columns_TXYC[..., CROWN_DM] == NO_CROWN_DM, np.inf,
                          columns_TXYC[..., CROWN_DM].astype(np.float32) / 10.0).astype(np.float32)
    mask_TXYZ = visibility(top_TXY, canopy_TXY, grid, lidar)

    world = pose_from_xyyaw(world_xy[0], world_xy[1], world_yaw)
    ego_pose_T44 = np.stack([world @ pose_from_xyyaw(x, y, yaw) for x, y, yaw in zip(ex, ey, eyaw)])
    side = derive_side_info(occ_TXYZ, ego_pose_T44, grid.layout_downsample)
    return {
        "occupancy": occ_TXYZ,
        "mask": mask_TXYZ,
        "ego_pose": side["ego_pose"],
        "trajectory": side["trajectory"],
        "command": np.asarray(side["command"], dtype=np.uint8),
        "layout": side["layout"],
        "bev": side["bev"],
    }


def split_of(index: int, val_fraction: float) -> str:
    """'val' for a ``val_fraction`` share of indices, spread evenly (golden-ratio sequence), else 'train'."""
    return "val" if (index * 0.6180339887498949) % 1.0 < val_fraction else "train"


def generate_block(grid: Grid, seed: int, start: int, stop: int, val_fraction: float,
                   array_names: tuple[str, ...] = CLIP_KEYS) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Clips ``start..stop-1`` stacked into a store batch, with their manifest rows."""
    clips = [generate_clip(grid, seed, i) for i in range(start, stop)]
    batch = {k: np.stack([c[k] for c in clips]) for k in array_names}
    rows = [{"index": i, "scene": f"{SOURCE}-{seed}-{i}", "frame_start": 0, "split": split_of(i, val_fraction),
             "seed": int(seed), "source": SOURCE, "command": int(c["command"])}
            for i, c in zip(range(start, stop), clips)]
    return batch, rows


def _write_block(out: str, seed: int, start: int, stop: int, val_fraction: float) -> int:
    from dcgen.data.store import SceneStore

    store = SceneStore.open(out, "a")
    batch, rows = generate_block(store.grid, seed, start, stop, val_fraction, store.array_names)
    store.write(start, batch, rows)
    return stop - start


def write_synthetic_city(out: str, preset: str, num_clips: int, seed: int = 0, val_fraction: float = 0.1,
                         workers: int | None = None, *, overwrite: bool = False, ray_address: str | None = None,
                         progress: Callable[[int, int, float], None] | None = None) -> str:
    """Generate ``num_clips`` clips of ``preset`` into a new scene store at ``out`` with Ray tasks.

    ``workers`` caps the tasks in flight (default: the cluster's CPUs); it also sizes a freshly started local
    Ray. Progress goes to stderr; ``progress(done, total, seconds)`` is also called as blocks commit. Returns the
    store path.
    """
    from dcgen.data.grid import grid as preset_grid
    from dcgen.data.integrity import staged
    from dcgen.data.store import CLIPS_PER_CHUNK, SceneStore
    from dcgen.progress import Progress
    from dcgen.runtime import cluster_cpus, init_ray, run_tasks

    grid = preset_grid(preset)
    check_grid(grid)
    if num_clips < 1:
        raise ValueError(f"--clips must be >= 1, got {num_clips}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    out = out if "://" in str(out) else os.path.abspath(out)
    _refuse_foreign(out, overwrite)
    provenance = {"generator": "dcgen.data.synth_city", "preset": preset, "seed": int(seed),
                  "num_clips": int(num_clips), "val_fraction": float(val_fraction), "city": _asdict(CityConfig()),
                  "traffic": _asdict(TrafficConfig()), "lidar": _asdict(LidarConfig())}
    init_ray(ray_address, num_cpus=workers if ray_address is None else None)
    per_task = 2 * CLIPS_PER_CHUNK
    log.info("synth-city: %d %s clips, seed %d -> %s", num_clips, preset, seed, out)
    with staged(out, overwrite) as build:  # an existing store stays whole until the new one is complete
        SceneStore.create(build, grid, source=SOURCE, attrs=provenance, with_mask=True, capacity=num_clips)
        done, t0 = 0, time.perf_counter()

        def committed(count: int) -> None:
            nonlocal done
            done += count
            bar.update(done)
            if progress is not None:
                progress(done, num_clips, time.perf_counter() - t0)

        # exactly ``workers`` tasks in flight, even on a larger cluster
        with Progress("synth-city", total=num_clips, unit="clip") as bar:
            run_tasks(_write_block, [(build, int(seed), a, min(a + per_task, num_clips), float(val_fraction))
                                     for a in range(0, num_clips, per_task)],
                      limit=workers or cluster_cpus(ray_address), num_cpus=1, on_done=committed, address=ray_address)
        SceneStore.open(build, "a").finalize()
    return out


def _asdict(cfg) -> dict:
    from dataclasses import asdict

    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


def _refuse_foreign(out: str, overwrite: bool) -> None:
    """With ``overwrite``, replace only an empty directory or a dcgen scene store, never anything else."""
    from dcgen.data.store import SceneStore

    if not overwrite or "://" in out or not os.path.exists(out):
        return
    if os.path.isdir(out) and not os.listdir(out):
        return
    try:
        SceneStore.open(out)
    except ValueError:
        raise ValueError(f"{out}: exists and is not a dcgen scene store; refusing to overwrite it (remove it "
                         "yourself or choose another --out)") from None
