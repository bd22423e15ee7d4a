"""Import a public dataset split into a scene store with Ray tasks (SPEC §1): scan, plan windows, write blocks.

The readers and the window logic are plain functions; ``dcgen.runtime.run_tasks`` runs them as bounded Ray tasks. Steps: (1) refuse an existing output unless overwriting, and never overwrite something
that is not a scene store; (2) check every file of every scene in parallel, one task per scene, before anything is
written, so bad input leaves an existing store untouched; (3) number the windows in a fixed order and create the
store pre-sized to that count in a hidden sibling of the output; (4) one task per block of ``clips_per_task`` clips
(a whole number of store shards) reads the frames it needs, derives side information and writes and commits its
block, so parallel writers never share a shard; (5) only a complete import is swapped in at the output: a bad file
found while writing (a corrupt member, an out-of-range class id) leaves an existing store whole and no partial one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from dcgen import storage
from dcgen.data.grid import GRIDS
from dcgen.data.importers import carlasc, occ3d_nuscenes, occ3d_waymo
from dcgen.data.importers.source_format import SPLITS, Scene, SceneRef, SourceFormat
from dcgen.data.importers.windows import Window, blocks, build_batch, plan_windows
from dcgen.data.integrity import staged
from dcgen.data.store import CLIPS_PER_CHUNK, SceneStore

log = logging.getLogger("dcgen.import")

FORMATS: dict[str, SourceFormat] = {f.name: f for f in (carlasc.FORMAT, occ3d_nuscenes.FORMAT, occ3d_waymo.FORMAT)}
DATASETS: tuple[str, ...] = tuple(FORMATS)


@dataclass(frozen=True)
class ImportConfig:
    """What to import and how to cut it; ``num_frames`` None means the preset's T."""

    dataset: str
    split: str = "train"
    stride: int = 1
    num_frames: int | None = None
    clips_per_task: int = 2 * CLIPS_PER_CHUNK
    overwrite: bool = False

    def __post_init__(self):
        if self.dataset not in FORMATS:
            raise ValueError(f"unknown dataset {self.dataset!r}; expected one of {', '.join(DATASETS)}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; expected one of {', '.join(SPLITS)}")
        if self.stride < 1:
            raise ValueError(f"--stride must be >= 1, got {self.stride}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"--frames must be >= 1, got {self.num_frames}")
        if self.clips_per_task < 1 or self.clips_per_task % CLIPS_PER_CHUNK:
            raise ValueError(f"clips per task must be a positive multiple of {CLIPS_PER_CHUNK} (one store shard), "
                             f"got {self.clips_per_task}")


@dataclass(frozen=True)
class ImportResult:
    path: str
    dataset: str
    split: str
    num_scenes: int
    num_frames: int
    num_clips: int
    pose_sources: dict[str, int] = field(default_factory=dict)  # pose source -> number of scenes


def import_dataset(src: str | Path, out: str, config: ImportConfig, ray_address: str | None = None) -> ImportResult:
    """Import split ``config.split`` of the dataset at ``src`` into a new scene store at ``out``."""
    from dcgen.progress import Progress
    from dcgen.runtime import cluster_cpus, run_tasks

    fmt = FORMATS[config.dataset]
    src = Path(src).resolve()
    out = out if "://" in str(out) else os.path.abspath(out)
    _check_target(out, config.overwrite)

    refs = fmt.list_scenes(src, config.split)
    limit = cluster_cpus(ray_address) + 1
    with Progress("import: scan", total=len(refs), unit="scene") as bar:
        scenes: list[Scene] = run_tasks(_scan_scene, [(fmt.name, r) for r in refs], limit=limit,
                                        on_done=lambda _: bar.update(advance=1), address=ray_address)

    base = GRIDS[fmt.preset]
    grid = dataclasses.replace(base, num_frames=config.num_frames or base.num_frames, frame_rate=fmt.frame_rate)
    windows = plan_windows(scenes, grid.num_frames, config.stride)
    if not windows:
        longest = max(b - a for s in scenes for a, b in s.runs)
        raise ValueError(f"{src}: no scene of split {config.split!r} has {grid.num_frames} consecutive frames "
                         f"(longest gap-free run: {longest}); pass a smaller --frames")
    pose_sources: dict[str, int] = {}
    for s in scenes:
        pose_sources[s.pose_source] = pose_sources.get(s.pose_source, 0) + 1
    num_frames = sum(s.num_frames for s in scenes)
    provenance = {
        "importer": "dcgen.data.importers", "dataset": fmt.name, "src": str(src), "split": config.split,
        "stride": config.stride, "num_frames": grid.num_frames, "scenes": len(scenes), "frames": num_frames,
        "pose_sources": pose_sources,
    }
    log.info("importing %s %s: %d scenes, %d frames -> %d clips into %s", fmt.name, config.split, len(scenes),
             num_frames, len(windows), out)
    with staged(out, config.overwrite) as build:
        store = SceneStore.create(build, grid, source=fmt.name, attrs=provenance, with_mask=True,
                                  capacity=len(windows), extra_arrays=fmt.extra_arrays)
        blocks_todo = [(fmt.name, build, a, windows[a:b], {w.scene: scenes[w.scene] for w in windows[a:b]},
                        config.split) for a, b in blocks(len(windows), config.clips_per_task)]  # only its scenes
        try:
            with Progress("import", total=len(windows), unit="clip") as bar:
                run_tasks(_write_block, blocks_todo, limit=limit, on_done=lambda n: bar.update(advance=n),
                          address=ray_address)
        except ValueError as e:
            kept = f"{out} is unchanged" if storage.exists(out) else f"nothing was written to {out}"
            raise ValueError(f"{e} (import stopped; {kept})") from None
        store.finalize()
    return ImportResult(out, fmt.name, config.split, len(scenes), num_frames, len(windows), pose_sources)


def _scan_scene(dataset: str, ref: SceneRef) -> Scene:
    return FORMATS[dataset].scan_scene(ref)


def _write_block(dataset: str, out: str, start: int, windows: list[Window], scenes: dict[int, Scene],
                 split: str) -> int:
    store = SceneStore.open(out, "a")
    batch, rows = build_batch(FORMATS[dataset], scenes, windows, store.grid, split, store.array_names)
    store.write(start, batch, rows)
    return len(windows)


def _check_target(out: str, overwrite: bool) -> None:
    """Refuse an existing output unless ``overwrite``; never replace something that is not a scene store."""
    from pyarrow.fs import FileSelector, FileSystem, FileType, LocalFileSystem

    fs, root = FileSystem.from_uri(out) if "://" in out else (LocalFileSystem(), out)
    info = fs.get_file_info(root)
    if info.type == FileType.NotFound:
        return
    if not overwrite:
        raise ValueError(f"{out}: already exists; pass --overwrite to replace it")
    if info.type == FileType.Directory and not fs.get_file_info(FileSelector(root)):
        return
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/zarr.json") as f:
            kind = json.loads(f.read()).get("attributes", {}).get("dcgen", {}).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None
    if kind != "scene-store":
        raise ValueError(f"{out}: exists and is not a dcgen scene store; refusing to overwrite it (remove it "
                         "yourself or choose another --out)")
