"""``dcgen data`` (build and inspect scene stores: synthetic city, dataset importers, summaries, integrity checks)
and the two commands that read a store back out: ``dcgen render`` (a clip as a GIF or PNG) and ``dcgen export``
(clips as per-frame files)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcgen.cli.common import ADDRESS_OPTION, CLUSTER_OPTION, app, fail, remote, user_errors

data_app = typer.Typer(help="Build and inspect scene stores: synthetic city, dataset importers, summaries.",
                       no_args_is_help=True)


@data_app.command("synth-city", help="Generate a synthetic city scene store: seeded CarlaSC-like clips with "
                  "LiDAR masks, poses, commands and layouts, in parallel Ray tasks.\n\n"
                  "Example: dcgen data synth-city --clips 1000 --out city.zarr --preset carlasc --seed 0")
def data_synth_city_cmd(
    ctx: typer.Context,
    clips: int = typer.Option(..., "--clips", help="Number of clips to generate."),
    out: str = typer.Option(..., "--out", help="Scene store to create (NAME.zarr)."),
    preset: str = typer.Option("carlasc", help="Grid preset: debug | small | carlasc | occ3d."),
    seed: int = typer.Option(0, help="Job seed; clip k is generated from (seed, k)."),
    workers: Optional[int] = typer.Option(None, help="Parallel tasks (default: all CPUs of the Ray cluster)."),
    val_fraction: float = typer.Option(0.1, help="Share of clips in the 'val' split (chosen by index)."),
    overwrite: bool = typer.Option(False, help="Replace an existing scene store at --out."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dcgen.data.synth_city import write_synthetic_city

    with user_errors():
        path = write_synthetic_city(out, preset, clips, seed=seed, val_fraction=val_fraction, workers=workers,
                                    overwrite=overwrite, ray_address=address)
    typer.echo(f"wrote {clips} synthetic {preset} clips (seed {seed}) to {path}")


@data_app.command("import", help="Import a public dataset split into a scene store (clips of T frames).\n\n"
                  "Example: dcgen data import carlasc /data/carlasc/Cartesian --out carlasc-train.zarr --split train")
def data_import_cmd(
    ctx: typer.Context,
    dataset: str = typer.Argument(..., help="carlasc | occ3d-nuscenes | occ3d-waymo"),
    src: Path = typer.Argument(..., help="Dataset root: CarlaSC Cartesian/ (Train, Val, Test), Occ3D-nuScenes "
                               "trainval/ (annotations.json, gts/), Occ3D-Waymo voxel root (training, validation)."),
    out: str = typer.Option(..., "--out", help="Scene store to create (NAME.zarr)."),
    split: str = typer.Option("train", help="train | val | test"),
    stride: int = typer.Option(1, help="Frames between the starts of consecutive clips."),
    frames: Optional[int] = typer.Option(None, help="Frames per clip (default: the preset's T, 16)."),
    overwrite: bool = typer.Option(False, help="Replace an existing scene store at --out."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dcgen.data.importers import ImportConfig, import_dataset

    with user_errors():
        config = ImportConfig(dataset, split=split, stride=stride, num_frames=frames, overwrite=overwrite)
        result = import_dataset(src, out, config, ray_address=address)
    poses = ", ".join(f"{k}: {v} scenes" for k, v in result.pose_sources.items())
    typer.echo(f"imported {result.num_clips} clips from {result.num_scenes} scenes ({result.num_frames} frames) "
               f"of {result.dataset} {result.split} into {result.path}; poses from {poses}")


@data_app.command("info", help="Summarise a scene store: clips per split, class mix, commands.\n\n"
                  "Example: dcgen data info carlasc-train.zarr --json")
def data_info_cmd(
    store: str = typer.Argument(..., help="Scene store (NAME.zarr, local path or URI)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    import json

    from dcgen.data.store import SceneStore

    with user_errors():
        info = SceneStore.open(store).describe()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    g = info["grid"]
    size = "x".join(str(v) for v in g["size"])
    lines = [
        f"store     {info['path']}",
        f"source    {info['source']}",
        f"grid      {g['num_frames']} frames x {size} voxels, {g['num_classes']} classes, {g['frame_rate']:g} Hz",
        f"clips     {info['clips']} (capacity {info['capacity']})",
        "splits    " + (", ".join(f"{k} {v}" for k, v in info["splits"].items()) or "none"),
        "commands  " + ", ".join(f"{k} {v}" for k, v in info["commands"].items()),
        "classes   " + ", ".join(f"{k} {v:.2%}" for k, v in info["class_fraction"].items() if v > 0),
        "arrays    " + ", ".join(info["arrays"]),
    ]
    typer.echo("\n".join(lines))


@data_app.command("verify", help="Check every clip the manifest lists against what was written (per-clip "
                  "checksums), and the manifest against the arrays; exits 1 naming each damaged clip and array.\n\n"
                  "Example: dcgen data verify city.zarr")
def data_verify_cmd(
    store: str = typer.Argument(..., help="Scene store (NAME.zarr, local path or URI)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    import json

    from dcgen.data.store import SceneStore

    with user_errors():
        report = SceneStore.open(store).verify()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        for problem in report["problems"]:
            typer.echo(f"damaged: {problem}")
        for clip, messages in report["damaged"].items():
            for message in messages:
                typer.echo(f"damaged: clip {clip}: {message}")
        state = "ok" if report["ok"] else f"DAMAGED ({len(report['damaged'])} clips)"
        typer.echo(f"{report['path']}: {report['checked']} of {report['clips']} listed clips checked: {state}")
    if not report["ok"]:
        raise typer.Exit(code=1)


# ---- a store read back out: render, export ------------------------------------------------------------------

@app.command("render", help="Render one clip of a scene store: bird's-eye and oblique views per frame with a class "
             "legend, as an animated GIF or a PNG (one --frame, or a contact sheet of all frames).\n\n"
             "Example: dcgen render city.zarr --clip 3 --out clip3.gif")
def render_cmd(
    store: str = typer.Argument(..., help="Scene store (NAME.zarr)."),
    clip: int = typer.Option(..., "--clip", help="Index of a complete clip of the store."),
    out: Path = typer.Option(..., "--out", help="Output file: .gif (all frames) or .png."),
    frame: Optional[int] = typer.Option(None, "--frame", help="PNG only: this frame (default: a contact sheet)."),
    fps: float = typer.Option(4.0, help="GIF frames per second."),
) -> None:
    from dcgen.data.derive import COMMANDS
    from dcgen.data.store import SceneStore
    from dcgen.render.clip import save_clip

    with user_errors():
        scenes = SceneStore.open(store)
        indices = scenes.indices()
        if clip not in set(indices.tolist()):
            shown = f"indices {int(indices.min())}..{int(indices.max())}" if indices.size else "none"
            fail(f"--clip {clip} is not a complete clip of {store} ({indices.size} clips: {shown})")
        arrays = scenes.read(slice(clip, clip + 1), ("occupancy", "command"))
        title = f"{Path(store).name} clip {clip} ({COMMANDS[int(arrays['command'][0])]})"
        path = save_clip(out, arrays["occupancy"][0], title=title, frame=frame, fps=fps)
    typer.echo(f"wrote {path}")


@app.command("export", help="Write a scene store's clips as per-frame files: occ3d-npz (Occ3D-nuScenes layout: "
             "gts/<clip>/<frame>/labels.npz + annotations.json) or npy (<clip>/<t>.npy + index.json).\n\n"
             "Example: dcgen export scenes.zarr --format occ3d-npz --out scenes-occ3d")
def export_cmd(
    ctx: typer.Context,
    store: str = typer.Argument(..., help="Scene store (NAME.zarr)."),
    fmt: str = typer.Option(..., "--format", help="occ3d-npz | npy."),
    out: Path = typer.Option(..., "--out", help="Directory to write."),
    split: Optional[str] = typer.Option(None, "--split", help="Only this split (default: every complete clip)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export at --out."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    remote(ctx, cluster, address, joins_ray=False)
    from dcgen.data.export import export_store

    with user_errors():
        info = export_store(store, fmt, out, split=split, overwrite=overwrite, log=lambda m: typer.echo(m, err=True))
    typer.echo(f"exported {info['clips']} clips ({info['frames']} frames) of {store} as {fmt} into {info['out']}")
