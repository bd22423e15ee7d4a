"""The ``dcgen`` command line: each command parses its options and calls one function.

Heavy modules (torch, ray, zarr) are imported inside the commands so ``dcgen --help`` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import dcgen

app = typer.Typer(
    help="dcgen: learn and mass-produce 4D semantic occupancy scenes (DynamicCity) on Ray.\n\n"
    "Quick start on a laptop CPU: dcgen quickstart",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Build and inspect scene stores: synthetic city, dataset importers, summaries.",
                       no_args_is_help=True)
train_app = typer.Typer(help="Train models on Ray Train: vae, dit, features (or the whole pipeline).",
                        invoke_without_command=True)
eval_app = typer.Typer(help="Evaluate: reconstruction IoU, reference statistics, generation metrics.",
                       no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that write JSON: data, vae, dit, metrics, synth, serve.",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dcgen {dcgen.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """dcgen command line."""


def fail(message: str) -> None:
    """Print a one-line error and exit non-zero (for user errors: bad input, missing files)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


# ---- remote runs (Ray Jobs) --------------------------------------------------------------------------------
# A long command opts in with: a `ctx: typer.Context` parameter, `cluster: Optional[Path] = CLUSTER_OPTION` and
# `address: Optional[str] = ADDRESS_OPTION` parameters, and `address = remote(ctx, cluster, address)` as the first
# line of its body (pass joins_ray=False if it starts no Ray, entrypoint_gpus=1 if it computes in its own process
# on a GPU). A new top-level command also needs its entry point jobs/<command>.py.

CLUSTER_OPTION = typer.Option(None, "--cluster", help="Ray cluster-launcher YAML (e.g. cluster.yaml): run this "
                              "command there as a Ray Job, bringing the cluster up if no head runs.")
ADDRESS_OPTION = typer.Option(None, "--address", help="http(s)://HEAD:8265 runs this command as a Ray Job on that "
                              "cluster's job server (log streamed, exit status returned); ray://HOST:10001, "
                              "HOST:6379 or 'auto' joins that Ray from here. Default: an embedded local Ray.")
CPU_BF16_OPTION = typer.Option(False, "--cpu-bf16", help="Train the VAE on CPU under bf16 autocast (1.25–1.4× faster where "
                               "the CPU has native bf16, e.g. AVX512-BF16 or AMX; refused on a CPU without bf16 "
                               "kernels, e.g. AVX2 only, where it runs ~25× slower).")
PREDICTION_OPTION = typer.Option("v", help="What the DiT outputs: 'v' (velocity, min-SNR v loss: learns conditions "
                                 "at high noise) or 'eps' (the plain ε network of SPEC §3).")


def remote(ctx: typer.Context, cluster: Optional[Path], address: Optional[str], *, joins_ray: bool = True,
           entrypoint_gpus: float = 0.0) -> Optional[str]:
    """With --cluster or a job-server --address, run the current command as a Ray Job and exit with its status;
    otherwise return the address to run with here (None: the embedded local Ray)."""
    from dcgen.jobs_client import is_job_server

    if cluster is None and not is_job_server(address):
        if address is not None and not joins_ray:
            fail(f"--address {address!r}: this command starts no Ray here, so --address must be a job server URL "
                 "such as http://HEAD:8265")
        return address
    from dcgen.jobs_client import run_remote

    try:
        code = run_remote(ctx, cluster=cluster, address=address, entrypoint_gpus=entrypoint_gpus,
                          log=lambda m: typer.echo(m, err=True), write=lambda s: typer.echo(s, nl=False))
    except ValueError as e:
        fail(str(e))
    raise typer.Exit(code=code)


# ---- data ------------------------------------------------------------------------------------------------

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

    def progress(done: int, total: int, seconds: float) -> None:
        typer.echo(f"  {done}/{total} clips  {done / max(seconds, 1e-9):.1f} clips/s", err=True)

    try:
        path = write_synthetic_city(out, preset, clips, seed=seed, val_fraction=val_fraction, workers=workers,
                                    overwrite=overwrite, ray_address=address, progress=progress)
    except ValueError as e:
        fail(str(e))
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

    try:
        config = ImportConfig(dataset, split=split, stride=stride, num_frames=frames, overwrite=overwrite)
        result = import_dataset(src, out, config, ray_address=address)
    except ValueError as e:
        fail(str(e))
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

    try:
        info = SceneStore.open(store).describe()
    except ValueError as e:
        fail(str(e))
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

    try:
        report = SceneStore.open(store).verify()
    except ValueError as e:
        fail(str(e))
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


# ---- render ----------------------------------------------------------------------------------------------

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

    try:
        scenes = SceneStore.open(store)
        indices = scenes.indices()
        if clip not in set(indices.tolist()):
            shown = f"indices {int(indices.min())}..{int(indices.max())}" if indices.size else "none"
            fail(f"--clip {clip} is not a complete clip of {store} ({indices.size} clips: {shown})")
        arrays = scenes.read(slice(clip, clip + 1), ("occupancy", "command"))
        title = f"{Path(store).name} clip {clip} ({COMMANDS[int(arrays['command'][0])]})"
        path = save_clip(out, arrays["occupancy"][0], title=title, frame=frame, fps=fps)
    except ValueError as e:
        fail(str(e))
    typer.echo(f"wrote {path}")


# ---- train -----------------------------------------------------------------------------------------------

@app.command("quickstart", help="Run the whole product on the embedded local Ray: synthetic city -> VAE -> latents "
             "-> DiT -> feature networks -> a few layout-conditioned scenes with quality gates -> a GIF and a "
             "metrics table. Re-running continues where it stopped.\n\nExample: dcgen quickstart --out dcgen-quickstart")
def quickstart_cmd(
    out: str = typer.Option("dcgen-quickstart", help="Directory for every output."),
    preset: str = typer.Option("debug", help="debug (minutes on a laptop CPU) | small (use a GPU)."),
    clips: Optional[int] = typer.Option(None, help="Synthetic city clips (default per preset)."),
    scenes: Optional[int] = typer.Option(None, help="Scenes to synthesise, a multiple of 8 (default 16)."),
    seed: int = typer.Option(0),
    max_minutes_per_stage: Optional[float] = typer.Option(None, help="Bound each training stage's wall time."),
    verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own log lines (workers, Ray Data, Train)."),
) -> None:
    from dcgen.quickstart import QuickstartConfig, run_quickstart

    try:
        run_quickstart(QuickstartConfig(out=out, preset=preset, clips=clips, scenes=scenes, seed=seed,
                                        max_minutes_per_stage=max_minutes_per_stage, verbose=verbose),
                       log=typer.echo)
    except ValueError as e:
        fail(str(e))


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
    workers: int = typer.Option(1, help="Ray Train workers (data-parallel, DDP)."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per worker (0 = CPU)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default per preset)."),
    batch_size: Optional[int] = typer.Option(None, help="Clips per worker batch (default per preset)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate [default: the preset's, 1e-3; small 3e-3]."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear learning-rate warm-up steps [default: the "
                                               "preset's, 0; small 20]."),
    beta: float = typer.Option(0.0015, help="KL weight."),
    projection: Optional[str] = typer.Option(None, help="How the encoder makes planes: projection (SPEC: CNN + "
                                             "attention pooling) | avgpool (ablation) | column [default: the "
                                             "preset's: column for small, projection otherwise]."),
    decoder: str = typer.Option("ess", help="ess | query (ablation)."),
    frame: Optional[str] = typer.Option(None, help="Coordinates the planes factor a clip in: ego (SPEC: each "
                                        "frame's own) | reference (the middle frame's, frames resampled with the "
                                        "clip's trajectory) [default: the preset's: reference for small, ego "
                                        "otherwise]."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop training at the first step past this many "
                                                "minutes, then validate and checkpoint."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    overwrite: bool = typer.Option(False, help="Delete an existing run in --out first."),
    max_failures: int = typer.Option(2, help="Worker failures survived, each restarting from the last "
                                     "checkpoint (-1: unlimited)."),
    report_every: int = typer.Option(20, help="Log training losses every N steps."),
    cpu_bf16: bool = CPU_BF16_OPTION,
    seed: int = typer.Option(0),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dataclasses import replace

    from dcgen.train.runs import train_vae

    try:
        scaling = replace(_scaling(workers, gpus_per_worker, address), max_failures=max_failures)
        summary = train_vae(data, preset, out, scaling=scaling, epochs=epochs, batch_size=batch_size, lr=lr,
                            warmup_steps=warmup_steps, beta=beta, projection=projection, decoder=decoder,
                            frame=frame, resume=resume, overwrite=overwrite, max_minutes=max_minutes,
                            report_every=report_every, seed=seed, cpu_bf16=cpu_bf16)
    except ValueError as e:
        fail(str(e))
    m = summary["metrics"]
    typer.echo(f"VAE trained: best val mIoU {m.get('best_val_miou', float('nan')):.4f} after {m.get('step')} steps; "
               f"best checkpoint {summary['best']}")


@train_app.command("dit", help="Fit the DiT on a latent store (from 'dcgen encode') with Ray Train.\n\n"
                   "Example: dcgen train dit --latents latents.zarr --vae runs/vae/best --cond command,trajectory,layout "
                   "--preset small --out runs/dit")
def train_dit_cmd(
    ctx: typer.Context,
    latents: str = typer.Option(..., help="Latent store written by 'dcgen encode'."),
    vae: Optional[str] = typer.Option(None, help="VAE checkpoint that made the latents (checked, and recorded)."),
    cond: str = typer.Option("auto", help="Comma-separated conditions: command, trajectory, layout, bev, prev_clip; "
                             "'none' for an unconditional model; 'auto' = all the latents support."),
    preset: str = typer.Option("small", help="debug | small | carlasc | occ3d (must match the latents)."),
    out: str = typer.Option("runs/dit", help="Run directory (checkpoints best/ and last/, metrics): a path or "
                            "an object-storage URI (s3://, gs://)."),
    workers: int = typer.Option(1, help="Ray Train workers (data-parallel, DDP)."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per worker (0 = CPU)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default per preset)."),
    batch_size: Optional[int] = typer.Option(None, help="Latents per worker batch (default per preset)."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (default per preset: 1e-3 debug, 1e-4 "
                                       "otherwise)."),
    ema_decay: Optional[float] = typer.Option(None, help="EMA decay (default per preset: 0.99 debug ... 0.9999)."),
    cond_drop: float = typer.Option(0.1, help="Probability of dropping each condition (classifier-free guidance)."),
    prediction: str = PREDICTION_OPTION,
    max_minutes: Optional[float] = typer.Option(None, help="Stop after the epoch that passes this wall time."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    overwrite: bool = typer.Option(False, help="Delete an existing run in --out first."),
    seed: int = typer.Option(0),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dcgen.train.runs import train_dit

    try:
        summary = train_dit(latents, out, vae=vae, conditions=cond, preset=preset,
                            scaling=_scaling(workers, gpus_per_worker, address), epochs=epochs,
                            batch_size=batch_size, lr=lr, ema_decay=ema_decay, cond_drop=cond_drop, resume=resume,
                            overwrite=overwrite, max_minutes=max_minutes, seed=seed, prediction=prediction)
    except ValueError as e:
        fail(str(e))
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
    workers: int = typer.Option(1, help="Ray Train workers (data-parallel, DDP)."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per worker (0 = CPU)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default per preset)."),
    batch_size: Optional[int] = typer.Option(None, help="Clips per worker batch (default 8)."),
    lr: float = typer.Option(2e-3, help="AdamW learning rate."),
    max_minutes: Optional[float] = typer.Option(None, help="Stop training at the first step past this many "
                                                "minutes, then validate and checkpoint."),
    resume: bool = typer.Option(False, help="Continue the run in --out from its latest checkpoint."),
    overwrite: bool = typer.Option(False, help="Delete an existing run in --out first."),
    seed: int = typer.Option(0),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    from dcgen.train.runs import train_features

    try:
        summary = train_features(data, out, preset=preset, scaling=_scaling(workers, gpus_per_worker, address),
                                 epochs=epochs, batch_size=batch_size, image_net=image_net,
                                 inception_weights=str(inception_weights) if inception_weights else None,
                                 render_size=render_size, lr=lr, resume=resume, overwrite=overwrite,
                                 max_minutes=max_minutes, seed=seed)
    except ValueError as e:
        fail(str(e))
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
                                      "features/; a path or an object-storage URI (s3://, gs://)."),
    cond: str = typer.Option("auto", help="DiT conditions (see 'dcgen train dit --help')."),
    workers: int = typer.Option(1, help="Ray Train workers (data-parallel, DDP)."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per worker (0 = CPU)."),
    vae_epochs: Optional[int] = typer.Option(None, help="VAE epochs (default per preset)."),
    dit_epochs: Optional[int] = typer.Option(None, help="DiT epochs (default per preset)."),
    max_minutes: Optional[float] = typer.Option(None, help="Wall-time bound of each training stage."),
    cpu_bf16: bool = CPU_BF16_OPTION,
    prediction: str = PREDICTION_OPTION,
    seed: int = typer.Option(0),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    """Train models on Ray Train. With no subcommand: the whole pipeline, VAE -> encode -> DiT (-> feature
    networks), each stage skipped when its checkpoint exists.

    Example: dcgen train --data city.zarr --preset small --out runs/small
    """
    if ctx.invoked_subcommand is not None:
        return
    if data is None:
        typer.echo(ctx.get_help())
        fail("give --data STORE to run the whole pipeline, or a subcommand (vae, dit, ...)")
    address = remote(ctx, cluster, address)
    from dcgen.train.runs import train_pipeline

    try:
        summary = train_pipeline(data, preset, out or str(Path("runs") / preset), conditions=cond,
                                 scaling=_scaling(workers, gpus_per_worker, address), vae_epochs=vae_epochs,
                                 dit_epochs=dit_epochs, max_minutes=max_minutes, seed=seed, cpu_bf16=cpu_bf16,
                                 prediction=prediction, log=typer.echo)
    except ValueError as e:
        fail(str(e))
    typer.echo(f"pipeline done in {summary['run_dir']}: VAE {summary['vae']}, latents {summary['latents']}, "
               f"DiT {summary['dit']}")


# ---- encode / sample ---------------------------------------------------------------------------------------

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
    from dcgen.generate.encode import encode_store

    try:
        info = encode_store(vae, data, out, batch_size=batch_size, overwrite=overwrite, workers=workers,
                            ray_address=address)
    except ValueError as e:
        fail(str(e))
    except RuntimeError as e:  # a Ray worker failed for a reason other than bad input; the message names it
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1)
    splits = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    typer.echo(f"encoded {info['num_clips']} clips ({splits}; {info['clips_with_previous']} with a previous clip) "
               f"into {info['path']} with VAE {info['vae_checkpoint_id']}")


@app.command("sample", help="Generate scenes with a trained VAE + DiT into a scene store (render it with "
             "'dcgen render').\n\n"
             "Example: dcgen sample --vae runs/small/vae/best --dit runs/small/dit/best --n 4 --cond command=left "
             "--out samples.zarr")
def sample_cmd(
    ctx: typer.Context,
    vae: str = typer.Option(..., help="VAE checkpoint directory."),
    dit: str = typer.Option(..., help="DiT checkpoint directory (trained on latents of --vae)."),
    out: str = typer.Option(..., help="Scene store to create (NAME.zarr)."),
    n: int = typer.Option(4, help="Scenes to generate."),
    cond: list[str] = typer.Option([], help="KEY=VALUE conditions: command=0..3|static|forward|left|right."),
    trajectory_from: Optional[str] = typer.Option(None, help="Scene store whose clip i gives scene i's trajectory."),
    layout_from: Optional[str] = typer.Option(None, help="Scene store whose clip i gives scene i's vehicle layout."),
    bev_from: Optional[str] = typer.Option(None, help="Scene store whose clip i gives scene i's BEV layout."),
    prev_from: Optional[str] = typer.Option(None, help="Scene store whose clip i is continued by scene i."),
    from_split: Optional[str] = typer.Option(None, help="Split of the --*-from stores to take clips from."),
    seed: int = typer.Option(0, help="Job seed: scene k uses scene_seed(seed, k)."),
    sampler: str = typer.Option("ddim", help="ddim | ddpm."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default 50 DDIM, 1000 DDPM)."),
    eta: float = typer.Option(0.0, help="DDIM noise level: 0 deterministic; 1 draws fresh noise each step, which on "
                              "briefly trained models matched DDPM-1000 quality at DDIM-50 speed (bench dit)."),
    guidance: float = typer.Option(4.0, help="Classifier-free guidance scale (1 = conditional model only)."),
    chain: int = typer.Option(1, help="Clips per scene, each continuing the previous (needs prev_clip)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    micro_batch: int = typer.Option(8, help="Scenes per network call."),
    overwrite: bool = typer.Option(False, help="Replace an existing store at --out."),
    estimate_trajectory: bool = typer.Option(False, "--estimate-trajectory", help="Search each clip's ego motion "
                                             "when no trajectory was requested (seconds per debug clip, minutes "
                                             "on larger grids); otherwise it is recorded as unknown."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help="http(s)://HEAD:8265 runs this command as a Ray "
                                          "Job on that cluster's job server, on a GPU unless --device cpu."),
) -> None:
    remote(ctx, cluster, address, joins_ray=False, entrypoint_gpus=0.0 if device == "cpu" else 1.0)
    from dcgen.generate.sample_store import parse_cond, sample_to_store

    sources = {k: v for k, v in (("trajectory", trajectory_from), ("layout", layout_from), ("bev", bev_from),
                                 ("prev_clip", prev_from)) if v is not None}
    try:
        summary = sample_to_store(vae, dit, out, n=n, cond=parse_cond(cond), sources=sources, split=from_split,
                                  seed=seed, sampler=sampler, steps=steps, guidance=guidance, chain=chain,
                                  device=device, micro_batch=micro_batch, overwrite=overwrite,
                                  estimate_trajectory=estimate_trajectory, eta=eta)
    except ValueError as e:
        fail(str(e))
    typer.echo(f"generated {summary['scenes']} scenes ({summary['clips']} clips) in {summary['seconds']:.1f} s on "
               f"{summary['device']} into {summary['path']}")



# ---- eval ------------------------------------------------------------------------------------------------

@eval_app.command("recon", help="Reconstruction quality of a trained VAE on a store split: per-class IoU, mIoU "
                  "(free and unobserved voxels excluded), binary IoU, and GIFs of ground truth above "
                  "reconstruction.\n\nExample: dcgen eval recon --vae runs/vae/best --data city.zarr --out eval-recon")
def eval_recon_cmd(
    vae: str = typer.Option(..., help="VAE checkpoint directory (e.g. runs/vae/best)."),
    data: str = typer.Option(..., help="Scene store of the VAE's grid."),
    split: str = typer.Option("val", help="Split to evaluate (train | val | test | all)."),
    out: Optional[Path] = typer.Option(None, help="Directory for recon.json and the GIFs (default: print only)."),
    batch_size: int = typer.Option(4, help="Clips per forward pass."),
    renders: int = typer.Option(3, help="Clips rendered as GIFs into --out."),
    max_clips: Optional[int] = typer.Option(None, help="Evaluate only the split's first N clips."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
) -> None:
    import json

    from dcgen.metrics.recon_eval import evaluate_reconstruction

    try:
        result = evaluate_reconstruction(vae, data, None if split == "all" else split, out, batch_size=batch_size,
                                         device=device, num_renders=renders, max_clips=max_clips)
    except ValueError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=2))
        return
    typer.echo(f"{result['num_clips']} {split} clips of {data}, VAE {result['vae_checkpoint_id']}:")
    typer.echo(result["table"])
    if out is not None:
        typer.echo(f"wrote {out / 'recon.json'} and {len(result['renders'])} GIFs")

@eval_app.command("reference", help="Reference statistics of real clips for the generation metrics: 2D and 3D "
                  "features, class probabilities, means and covariances under one features checkpoint, saved as "
                  ".npz.\n\nExample: dcgen eval reference --data city.zarr --features runs/features/best --out ref.npz")
def eval_reference_cmd(
    ctx: typer.Context,
    data: str = typer.Option(..., help="Scene store of real clips."),
    features: str = typer.Option(..., help="Features checkpoint (from 'dcgen train features')."),
    out: Path = typer.Option(..., help="Reference file to write (.npz)."),
    split: str = typer.Option("all", help="Split of the store: train | val | test | all."),
    batch_size: int = typer.Option(16, help="Clips per network batch."),
    max_clips: Optional[int] = typer.Option(None, help="Use only the first N clips."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help="http(s)://HEAD:8265 runs this command as a Ray "
                                          "Job on that cluster's job server, on a GPU unless --device cpu."),
) -> None:
    remote(ctx, cluster, address, joins_ray=False, entrypoint_gpus=0.0 if device == "cpu" else 1.0)
    from dcgen.metrics.reference import make_reference

    try:
        _, summary = make_reference(data, features, out, split=None if split == "all" else split,
                                    batch_size=batch_size, device=device, max_clips=max_clips,
                                    log=lambda m: typer.echo(m, err=True))
    except ValueError as e:
        fail(str(e))
    typer.echo(f"wrote {summary['out']}: {summary['num_clips']} clips / {summary['num_images']} images of {data} "
               f"under features {summary['feature_checkpoint_id']} (2D {summary['dims'][0]}-D, 3D "
               f"{summary['dims'][1]}-D), {summary['clips_per_second']:.1f} clips/s")


@eval_app.command("gen", help="Generation metrics in the paper's Table 2 layout: IS / FID / KID / precision / "
                  "recall in 2D (renders) and 3D (voxels) of generated clips against real ones, beside the paper's "
                  "numbers.\n\nExample: dcgen eval gen --real ref.npz --fake samples.zarr --features "
                  "runs/features/best --json gen.json")
def eval_gen_cmd(
    ctx: typer.Context,
    real: str = typer.Option(..., help="Real clips: a scene store, or a reference .npz from 'dcgen eval reference'."),
    fake: str = typer.Option(..., help="Scene store of generated clips."),
    features: str = typer.Option(..., help="Features checkpoint (the reference's, when --real is one)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the full result as JSON here."),
    real_split: str = typer.Option("all", help="Split of a --real store: train | val | test | all."),
    fake_split: str = typer.Option("all", help="Split of the --fake store: train | val | test | all."),
    batch_size: int = typer.Option(16, help="Clips per network batch."),
    max_clips: Optional[int] = typer.Option(None, help="Use only the first N clips of each store."),
    kid_subsets: int = typer.Option(100, help="KID subsets."),
    seed: int = typer.Option(0, help="Seed of the KID subsets."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help="http(s)://HEAD:8265 runs this command as a Ray "
                                          "Job on that cluster's job server, on a GPU unless --device cpu."),
) -> None:
    remote(ctx, cluster, address, joins_ray=False, entrypoint_gpus=0.0 if device == "cpu" else 1.0)
    import json

    from dcgen.metrics.gen_eval import evaluate_generation, format_table
    from dcgen.metrics.generation import GenerationMetricsConfig

    try:
        result = evaluate_generation(real, fake, features, real_split=None if real_split == "all" else real_split,
                                     fake_split=None if fake_split == "all" else fake_split, batch_size=batch_size,
                                     device=device, max_clips=max_clips,
                                     config=GenerationMetricsConfig(kid_subsets=kid_subsets, seed=seed))
    except ValueError as e:
        fail(str(e))
    typer.echo(format_table(result))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))
        typer.echo(f"wrote {json_out}")


@eval_app.command("fidelity", help="How generated clips differ from real ones: 2D/3D IS / FID / KID / precision / "
                  "recall beside the real-vs-real value at the same sample count (two disjoint halves of the real "
                  "clips, split by scene) and their ratio, and object statistics per class (components per frame, "
                  "component sizes, class mix, occupied share, flicker, static consistency, persistence); with --vae "
                  "the same for the VAE's reconstructions of real clips (the ceiling). Scores only clips generated "
                  "from pure noise.\n\nExample: dcgen eval fidelity --real city.zarr:val --fake samples.zarr "
                  "--features runs/features/best --vae runs/vae/best --out fidelity")
def eval_fidelity_cmd(
    ctx: typer.Context,
    real: str = typer.Option(..., help="Real clips: a scene store, or STORE:split with split train | val | test | "
                             "all (default all); use a split the generator did not train on."),
    fake: str = typer.Option(..., help="Scene store of generated clips (from 'dcgen sample' or 'dcgen synth')."),
    features: str = typer.Option(..., help="Features checkpoint of the stores' grid (from 'dcgen train features')."),
    vae: Optional[str] = typer.Option(None, help="VAE checkpoint directory: adds the reconstruction row (the "
                                      "ceiling)."),
    out: Optional[Path] = typer.Option(None, help="Directory for report.json and report.png (default: print only)."),
    max_clips: Optional[int] = typer.Option(None, help="Score at most N clips per set."),
    batch_size: int = typer.Option(8, help="Clips per network batch."),
    estimate_trajectories: bool = typer.Option(False, help="Search the ego motion of generated clips without a "
                                               "trajectory, so their static consistency is measured (seconds per "
                                               "clip on small grids, minutes on large ones)."),
    kid_subsets: int = typer.Option(100, help="KID subsets (one when a subset is the whole set)."),
    seed: int = typer.Option(0, help="Seed of the real halves and the KID subsets."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of the table."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = typer.Option(None, "--address", help="http(s)://HEAD:8265 runs this command as a Ray "
                                          "Job on that cluster's job server, on a GPU unless --device cpu."),
) -> None:
    remote(ctx, cluster, address, joins_ray=False, entrypoint_gpus=0.0 if device == "cpu" else 1.0)
    import json

    from dcgen.metrics.fidelity import fidelity_report, format_table, parse_store_split

    try:
        real_path, real_split = parse_store_split(real)
        report = fidelity_report(real_path, fake, features, real_split=real_split, vae=vae,
                                 out=None if out is None else str(out), max_clips=max_clips, device=device, seed=seed,
                                 batch_size=batch_size, estimate_trajectories=estimate_trajectories,
                                 kid_subsets=kid_subsets, log=lambda m: typer.echo(m, err=True))
    except ValueError as e:
        fail(str(e))
    if as_json:
        for warning in report.get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        typer.echo(format_table(report))
    if out is not None:
        typer.echo(f"wrote {report['files']['json']} and {report['files']['png']}")

# ---- serve -----------------------------------------------------------------------------------------------

@app.command("serve", help="Serve conditioned scenes over HTTP (Ray Serve; API v1: POST /v1/scenes, GET /v1/info, "
             "GET /v1/health), batching scenes of concurrent requests.\n\n"
             "Example: DCGEN_TOKEN=$(openssl rand -hex 24) dcgen serve --vae runs/vae/best --dit runs/dit/best "
             "--token-env DCGEN_TOKEN")
def serve_cmd(
    vae: str = typer.Option(..., "--vae", help="VAE checkpoint directory."),
    dit: str = typer.Option(..., "--dit", help="DiT checkpoint directory (trained on latents of --vae)."),
    host: str = typer.Option("127.0.0.1", help="Bind address; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, help="HTTP port."),
    replicas: int = typer.Option(1, help="Model replicas (the minimum with --max-replicas)."),
    max_replicas: Optional[int] = typer.Option(None, help="Autoscale model replicas up to this many."),
    gpus_per_replica: float = typer.Option(0.0, help="GPUs per model replica (0 = CPU)."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per model replica."),
    max_batch_size: int = typer.Option(8, help="Scenes per model batch (1 = no batching)."),
    batch_wait_s: float = typer.Option(0.05, help="Seconds a batch waits to fill."),
    micro_batch: int = typer.Option(8, help="The pipeline's network batch; scenes match 'dcgen synth' run with the "
                                    "same value."),
    token_env: Optional[str] = typer.Option(None, help="Environment variable holding a bearer token clients must "
                                            "send (>= 16 characters); default: no authentication."),
    max_count: int = typer.Option(16, help="Most scenes one request may ask for (more: HTTP 413)."),
    max_body_mb: float = typer.Option(64.0, help="Largest request body in MiB (larger: HTTP 413)."),
    address: Optional[str] = typer.Option(None, help="Existing Ray cluster address (default: embedded local Ray)."),
) -> None:
    import time

    from dcgen.serve.config import ServeConfig

    try:
        config = ServeConfig(vae=vae, dit=dit, host=host, port=port, replicas=replicas, max_replicas=max_replicas,
                             gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                             max_batch_size=max_batch_size, batch_wait_s=batch_wait_s, micro_batch=micro_batch,
                             token_env=token_env, max_count=max_count, max_body_bytes=int(max_body_mb * 2**20))
        config.ingress_settings()  # the token must be there before anything starts
        from dcgen.serve.app import start

        url = start(config, address=address)  # vets the checkpoints first: a bad one fails before Serve starts
    except ValueError as e:
        fail(str(e))
    except RuntimeError as e:  # Serve could not deploy (e.g. a model replica failed for a reason other than input)
        fail(f"the Serve application did not start: {str(e).strip().splitlines()[0]}")
    import signal

    auth = f"bearer token from ${token_env}" if token_env else "no authentication"
    typer.echo(f"serving on {url} ({auth}); try: curl {url}/v1/info   (Ctrl-C stops)")

    def _stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # `kill`, docker stop and systemd shut down as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        typer.echo("stopping the server", err=True)
        serve.shutdown()


# `bench serve` lives here beside `serve` (the bench section holds the other benchmarks).
@bench_app.command("serve", help="Serve benchmark: requests/s and p50/p99 latency at concurrency 1, 8, 32 with "
                   "batching on and off, and their ratio (JSON).\n\nExample: dcgen bench serve --out bench-serve.json")
def bench_serve_cmd(
    out: Path = typer.Option(Path("bench-serve.json"), help="JSON file to write."),
    preset: str = typer.Option("debug", help="Preset of the fresh networks served when no checkpoints are given."),
    vae: Optional[str] = typer.Option(None, help="Trained VAE checkpoint (default: fresh --preset networks)."),
    dit: Optional[str] = typer.Option(None, help="Trained DiT checkpoint (with --vae)."),
    concurrency: str = typer.Option("1,8,32", help="Comma-separated numbers of concurrent clients."),
    steps: int = typer.Option(50, help="DDIM steps per scene."),
    max_batch_size: int = typer.Option(32, help="Batch size with batching on (also the pipeline micro-batch)."),
    batch_wait_s: float = typer.Option(0.2, help="Seconds a batch waits to fill (clients resubmit within it)."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs of the model replica."),
    gpus_per_replica: float = typer.Option(0.0, help="GPUs of the model replica."),
) -> None:
    from dcgen.serve.bench import bench_serve

    try:
        levels = tuple(int(c) for c in concurrency.split(","))
    except ValueError:
        fail(f"--concurrency {concurrency!r}; expected comma-separated integers like 1,8,32")
    try:
        report = bench_serve(out, vae=vae, dit=dit, preset=preset, concurrency=levels, steps=steps,
                             max_batch_size=max_batch_size, batch_wait_s=batch_wait_s,
                             cpus_per_replica=cpus_per_replica, gpus_per_replica=gpus_per_replica,
                             log=lambda m: typer.echo(m, err=True))
    except ValueError as e:
        fail(str(e))
    t = report["target"]
    typer.echo(f"wrote {out}: batched/unbatched throughput " + ", ".join(f"c={c} {r:.2f}x" for c, r in
                                                                         report["ratio"].items())
               + f"; target >= {t['min_ratio']:g}x at c={t['concurrency']} {'met' if t['met'] else 'NOT met'}")


# ---- jobs ------------------------------------------------------------------------------------------------

jobs_app = typer.Typer(help="Ray Jobs on a cluster: list, logs, stop. (Submit one by adding --cluster or --address "
                       "to a long command, e.g. dcgen train vae ... --cluster cluster.yaml.)", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
JOBS_ADDRESS_OPTION = typer.Option(None, "--address", help="The cluster's job server, e.g. http://HEAD:8265.")
JOBS_CLUSTER_OPTION = typer.Option(None, "--cluster", help="Cluster-launcher YAML whose (running) head to ask.")
TOKEN_ENV_OPTION = typer.Option(None, "--token-env", help="Environment variable holding the cluster's auth token "
                                "(default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token).")


def _job_server(cluster: Optional[Path], address: Optional[str], token_env: Optional[str]):
    from dcgen import jobs_client

    if (cluster is None) == (address is None):
        fail("give the cluster's job server with --address http://HEAD:8265 or --cluster cluster.yaml (one of them)")
    try:
        if cluster is not None:
            from dcgen.cluster import head_job_server

            address = head_job_server(cluster, create=False)
        return jobs_client.connect(address, token_env)
    except ValueError as e:
        fail(str(e))


@jobs_app.command("list", help="Jobs submitted to the cluster, oldest first.\n\n"
                  "Example: dcgen jobs list --address http://127.0.0.1:8265")
def jobs_list_cmd(
    address: Optional[str] = JOBS_ADDRESS_OPTION,
    cluster: Optional[Path] = JOBS_CLUSTER_OPTION,
    token_env: Optional[str] = TOKEN_ENV_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the jobs as JSON."),
) -> None:
    import datetime as dt
    import json

    from dcgen import jobs_client

    client = _job_server(cluster, address, token_env)
    try:
        rows = jobs_client.list_jobs(client)
    except ValueError as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no jobs")
        return
    width = max(len(r["id"]) for r in rows)
    typer.echo(f"{'ID':<{width}}  {'STATUS':<9}  {'STARTED':<19}  COMMAND")
    for r in rows:
        started = dt.datetime.fromtimestamp(r["start_time"] / 1000).strftime("%Y-%m-%d %H:%M:%S") \
            if r["start_time"] else "-"
        typer.echo(f"{r['id']:<{width}}  {r['status']:<9}  {started:<19}  {r['command']}")


@jobs_app.command("logs", help="Print a job's log (--follow: stream it until the job ends, then exit with its "
                  "status).\n\nExample: dcgen jobs logs dcgen-train-vae-20260101-120000-a1b2c3 --address "
                  "http://127.0.0.1:8265")
def jobs_logs_cmd(
    job_id: str = typer.Argument(..., help="Submission id (see 'dcgen jobs list')."),
    follow: bool = typer.Option(False, "--follow", help="Stream until the job ends; exit with its status."),
    address: Optional[str] = JOBS_ADDRESS_OPTION,
    cluster: Optional[Path] = JOBS_CLUSTER_OPTION,
    token_env: Optional[str] = TOKEN_ENV_OPTION,
) -> None:
    from dcgen import jobs_client

    client = _job_server(cluster, address, token_env)
    try:
        if not follow:
            typer.echo(jobs_client.job_logs(client, job_id), nl=False)
            return
        info = jobs_client.follow(client, job_id, write=lambda s: typer.echo(s, nl=False))
    except ValueError as e:
        fail(str(e))
    code = jobs_client.exit_code(info)
    if code:
        typer.echo(f"error: job {job_id} {info.status} (exit code {code}): {jobs_client.status_message(info)}",
                   err=True)
    raise typer.Exit(code=code)


@jobs_app.command("stop", help="Stop a running job.\n\nExample: dcgen jobs stop JOB_ID --address http://127.0.0.1:8265")
def jobs_stop_cmd(
    job_id: str = typer.Argument(..., help="Submission id (see 'dcgen jobs list')."),
    address: Optional[str] = JOBS_ADDRESS_OPTION,
    cluster: Optional[Path] = JOBS_CLUSTER_OPTION,
    token_env: Optional[str] = TOKEN_ENV_OPTION,
) -> None:
    from dcgen import jobs_client

    client = _job_server(cluster, address, token_env)
    try:
        stopped = jobs_client.stop_job(client, job_id)
    except ValueError as e:
        fail(str(e))
    typer.echo(f"stop requested for job {job_id}" if stopped else f"job {job_id} had already ended")


# ---- synth -----------------------------------------------------------------------------------------------

@app.command("synth", help="Mass-produce conditioned scenes into a scene store on Ray Data, with per-batch quality "
             "gates (FID/KID against reference statistics; empty scenes, class mix, flicker against real clips). "
             "Re-running the same command continues an interrupted job.\n\n"
             "Example: dcgen synth --vae runs/small/vae/best --dit runs/small/dit/best --n 10000 --cond layout "
             "--source city.zarr --reference ref.npz --features runs/small/features/best --out scenes.zarr")
def synth_cmd(
    ctx: typer.Context,
    vae: str = typer.Option(..., "--vae", help="VAE checkpoint directory."),
    dit: str = typer.Option(..., "--dit", help="DiT checkpoint directory (trained on latents of --vae)."),
    n: int = typer.Option(..., "--n", help="Accepted scenes the finished store holds."),
    out: str = typer.Option(..., "--out", help="Scene store to create or continue (NAME.zarr)."),
    cond: str = typer.Option("none", "--cond", help="none | command | trajectory | layout | bev | extend | inpaint | "
                             "outpaint (all but none and command need --source)."),
    source: Optional[str] = typer.Option(None, "--source", help="Scene store whose clips (drawn by a seeded "
                                         "permutation) give the conditions, or the clips to extend / edit."),
    source_split: Optional[str] = typer.Option(None, "--source-split", help="Split of --source to draw from "
                                               "(default: all complete clips)."),
    scenario: Optional[str] = typer.Option(None, "--scenario", help="JSON/YAML scenario file mixing conditions and "
                                           "guidance per entry (schemas/scenario.schema.json); replaces --cond."),
    seed: int = typer.Option(0, "--seed", help="Job seed: scene k uses scene_seed(seed, k)."),
    sampler: str = typer.Option("ddim", "--sampler", help="ddim | ddpm."),
    steps: int = typer.Option(50, "--steps", help="Sampling steps."),
    guidance: float = typer.Option(4.0, "--guidance", help="Classifier-free guidance scale (scenario entries may "
                                   "set their own)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Scenes per block (a multiple of 8): the unit of "
                                   "gating, regeneration, writing and resuming."),
    micro_batch: int = typer.Option(8, "--micro-batch", help="The pipeline's network batch (a scene's bytes depend "
                                    "on it; match 'dcgen serve --micro-batch')."),
    estimate_trajectory: bool = typer.Option(False, "--estimate-trajectory", help="Estimate the ego trajectory "
                                             "(and command) of scenes that request none from their static "
                                             "classes; an exhaustive search, slow on grids above debug. Without "
                                             "it they are stored as zeros, trajectory_origin 'none'."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Generation actors (default: one per GPU, else "
                                          "CPUs - 1; with --serve 2)."),
    reference: Optional[str] = typer.Option(None, "--reference", help="ref.npz from 'dcgen eval reference': turns "
                                            "on the FID/KID gates (and the cheap checks, on the clips it was made "
                                            "from)."),
    features: Optional[str] = typer.Option(None, "--features", help="Feature network checkpoint of --reference."),
    reference_data: Optional[str] = typer.Option(None, "--reference-data", help="Scene store of real clips for the "
                                                 "cheap checks and their calibration (default: --reference's)."),
    reference_split: Optional[str] = typer.Option(None, "--reference-split", help="Split of --reference-data."),
    gate_fid: Optional[float] = typer.Option(None, "--gate-fid", help="Max 3D FID of a batch (default: calibrated "
                                             "on real-vs-real batches of the same size)."),
    gate_kid: Optional[float] = typer.Option(None, "--gate-kid", help="Max 3D KID of a batch."),
    gate_fid_2d: Optional[float] = typer.Option(None, "--gate-fid-2d", help="Max 2D FID of a batch (with --gate-2d)."),
    gate_kid_2d: Optional[float] = typer.Option(None, "--gate-kid-2d", help="Max 2D KID of a batch (with --gate-2d)."),
    gate_2d: bool = typer.Option(False, "--gate-2d", help="Also gate on 2D (rendered views) FID/KID."),
    gate_min_occupied: Optional[float] = typer.Option(None, "--gate-min-occupied", help="Min occupied-voxel share "
                                                      "of every scene (empty scenes)."),
    gate_class_distance: Optional[float] = typer.Option(None, "--gate-class-distance", help="Max Jensen-Shannon "
                                                        "divergence of the batch's class mix from the reference's."),
    gate_flicker: Optional[float] = typer.Option(None, "--gate-flicker", help="Max mean share of occupied voxels "
                                                 "changing class between frames."),
    gate_slack: float = typer.Option(1.5, "--gate-slack", help="Calibrated thresholds = 99th percentile of "
                                     "real-vs-real batches x this."),
    max_attempts: int = typer.Option(3, "--max-attempts", help="Generations of a block before it is given up "
                                     "(failed attempts go to OUT/rejected)."),
    serve: Optional[str] = typer.Option(None, "--serve", help="Name of a running 'dcgen serve' application: "
                                        "generate through its model deployment (same bytes)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing store at --out."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    import sys

    from dcgen.generate.batch import run_synth
    from dcgen.generate.job import build_job

    explicit = {"fid_3d": gate_fid, "kid_3d": gate_kid, "fid_2d": gate_fid_2d, "kid_2d": gate_kid_2d,
                "min_occupied": gate_min_occupied, "class_distance": gate_class_distance, "flicker": gate_flicker}
    gates = {"reference": reference, "features": features, "reference_data": reference_data,
             "reference_split": reference_split, "use_2d": gate_2d, "slack": gate_slack,
             "thresholds": {k: v for k, v in explicit.items() if v is not None}}
    if any(v is not None for v in explicit.values()) and reference is None and reference_data is None:
        fail("quality gates need reference statistics: pass --reference ref.npz --features CKPT (FID/KID, and the "
             "cheap checks on its clips) or --reference-data STORE (cheap checks only)")
    tty = sys.stderr.isatty()

    def progress(bar, final: bool) -> None:
        if tty:  # one bar redrawn in place; a log gets a line per block
            typer.echo("\r" + bar.line(), err=True, nl=final)
        elif not final:
            typer.echo(bar.line(), err=True)

    try:
        job = build_job(vae=vae, dit=dit, n=n, cond=cond, scenario=scenario, source=source,
                        source_split=source_split, seed=seed, sampler=sampler, steps=steps, guidance=guidance,
                        batch_size=batch_size, micro_batch=micro_batch, estimate_trajectory=estimate_trajectory,
                        max_attempts=max_attempts, gates=gates, serve_app=serve, workers=workers)
        summary = run_synth(job, out, overwrite=overwrite, ray_address=address, progress=progress)
    except ValueError as e:
        fail(str(e))
    except RuntimeError as e:  # a worker failed mid-run; finished blocks are kept
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1)
    g = summary["gates"]
    gates_line = ("gates: " + ", ".join(f"{k} {'>=' if k == 'min_occupied' else '<='} {v:.4g}"
                                        for k, v in g["thresholds"].items())) if g else "gates: off"
    typer.echo(f"{summary['path']}: {summary['accepted_total']}/{summary['n']} scenes "
               f"({summary['accepted']} new, {summary['blocks_skipped']} blocks already done); rejected "
               f"{summary['rejected']} this run, {summary['rejected_total']} in all (OUT/rejected); "
               f"{summary['scenes_per_s']:.2f} scenes/s over {summary['seconds']:.1f} s; time in gates "
               f"{summary['gate_share']:.1%}; {summary['bytes_per_scene'] / 1e3:.1f} kB per scene; {gates_line}")
    if not summary["complete"]:
        typer.echo(f"error: blocks {summary['blocks_given_up']} failed their gates {max_attempts} times and were "
                   "given up; the store is incomplete. Loosen the gates (--gate-*, --gate-slack) or raise "
                   "--max-attempts and re-run the same command to continue.", err=True)
        raise typer.Exit(code=1)


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
    from dcgen.generate.export import export_store

    try:
        info = export_store(store, fmt, out, split=split, overwrite=overwrite, log=lambda m: typer.echo(m, err=True))
    except ValueError as e:
        fail(str(e))
    typer.echo(f"exported {info['clips']} clips ({info['frames']} frames) of {store} as {fmt} into {info['out']}")


@bench_app.command("synth", help="Synth benchmark (JSON): end-to-end scenes/s of 'dcgen synth' with 1 and 2 "
                   "workers (scaling ratio), share of worker time in the gates, bytes per scene.\n\n"
                   "Example: dcgen bench synth --preset small --out bench-synth.json")
def bench_synth_cmd(
    out: Path = typer.Option(Path("bench-synth.json"), help="JSON file to write."),
    preset: str = typer.Option("small", help="debug | small | carlasc | occ3d."),
    vae: Optional[str] = typer.Option(None, help="Trained VAE checkpoint (default: fresh --preset networks)."),
    dit: Optional[str] = typer.Option(None, help="Trained DiT checkpoint (with --vae)."),
    n: int = typer.Option(32, "--n", help="Scenes per run."),
    steps: int = typer.Option(50, help="DDIM steps per scene."),
    workers: list[int] = typer.Option([1, 2], "--workers", help="Worker counts to time (repeat the option)."),
    batch_size: int = typer.Option(8, help="Scenes per block."),
    gates: bool = typer.Option(True, help="Run the cheap gates against a synthetic-city reference (and FID/KID with "
                                "fresh feature networks)."),
    address: Optional[str] = typer.Option(None, help="Existing Ray cluster address (default: embedded local Ray "
                                          "with max(--workers) + 1 CPUs)."),
) -> None:
    import json

    from dcgen.generate.bench_synth import bench_synth

    try:
        result = bench_synth(preset, vae=vae, dit=dit, n=n, steps=steps, workers=tuple(workers),
                             batch_size=batch_size, gates=gates, ray_address=address,
                             log=lambda m: typer.echo(m, err=True))
    except ValueError as e:
        fail(str(e))
    out.write_text(json.dumps(result, indent=2))
    lines = [f"wrote {out} ({preset}, {n} scenes, {steps} steps):"]
    for run in result["runs"]:
        lines.append(f"  {run['workers']} worker(s): {run['scenes_per_s']:.3f} scenes/s end to end, gates "
                     f"{run['gate_share']:.1%} of worker time, {run['bytes_per_scene'] / 1e3:.1f} kB/scene")
    for name, t in result["targets"].items():
        lines.append(f"  target {name}: {t['value']:.3f} {t['op']} {t['threshold']}: "
                     f"{'pass' if t['passed'] else 'FAIL'}")
    typer.echo("\n".join(lines))


# ---- bench -----------------------------------------------------------------------------------------------

@bench_app.command("vae", help="VAE ablation benchmark (JSON): training s/iter and peak memory of Projection+ESS, "
                   "Projection+Query, AvgPool+ESS, AvgPool+Query as ratios to Projection+ESS (same preset and "
                   "batch, each in a fresh process), and encode/decode clips/s.\n\n"
                   "Example: dcgen bench vae --preset small --out bench-vae.json")
def bench_vae_cmd(
    preset: str = typer.Option("small", help="debug | small | carlasc | occ3d."),
    out: Path = typer.Option(Path("bench-vae.json"), help="JSON file to write."),
    batch_size: int = typer.Option(2, help="Clips per training step (the same for every variant)."),
    iters: int = typer.Option(6, help="Timed iterations per variant (median reported)."),
    warmup: int = typer.Option(2, help="Untimed iterations first (on CPU the Query variants take a few steps to "
                               "settle their heap)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: all cores)."),
    widths: Optional[str] = typer.Option(None, help="Layer widths of another preset (e.g. carlasc) on this grid."),
    cpu_bf16: bool = typer.Option(False, "--cpu-bf16", help="On CPU, run every variant under bf16 autocast, as "
                                  "`dcgen train vae --cpu-bf16` trains (CUDA always uses bf16 autocast)."),
) -> None:
    import json

    from dcgen.train.bench_vae import bench_vae

    try:
        result = bench_vae(preset, batch_size=batch_size, iters=iters, warmup=warmup, device=device,
                           threads=threads, widths=widths, log=lambda m: typer.echo(m, err=True), cpu_bf16=cpu_bf16)
    except ValueError as e:
        fail(str(e))
    out.write_text(json.dumps(result, indent=2))
    lines = [f"wrote {out} ({preset} grid, {result['widths']} widths, batch {batch_size}, {result['device']}, "
             f"{result['precision']}):"]
    for name, v in result["variants"].items():
        rss = (f"  RSS {v['peak_rss_step_bytes'] / 2**20:7.1f} MiB ({v['memory_rss_ratio']:.2f}x)"
               if "peak_rss_step_bytes" in v else "")
        lines.append(f"  {name:<18} {v['s_per_iter']:8.3f} s/iter ({v['time_ratio']:.2f}x)  "
                     f"{v['peak_step_bytes'] / 2**20:9.1f} MiB ({v['memory_ratio']:.2f}x){rss}")
    q = result["ess_vs_query"]["projection"]
    rss = f" (RSS {q['memory_rss']:.2f}x)" if "memory_rss" in q else ""
    lines.append(f"  ESS vs Query: {q['time']:.2f}x time, {q['memory']:.2f}x memory{rss}; encode "
                 f"{result['encode_clips_per_s']:.2f} clips/s, decode {result['decode_clips_per_s']:.2f} clips/s")
    typer.echo("\n".join(lines))

@bench_app.command("data", help="Data-path benchmark (JSON): synthetic clips/s with 1 and 2 workers, store "
                   "write/read MB/s, Ray Data read vs a plain zarr read, bytes on disk per clip vs raw uint8, "
                   "with the issue's targets.\n\nExample: dcgen bench data --clips 1000 --preset carlasc "
                   "--out bench-data.json")
def bench_data_cmd(
    clips: int = typer.Option(1000, "--clips", help="Clips to generate per worker count."),
    preset: str = typer.Option("carlasc", help="Grid preset: debug | small | carlasc | occ3d."),
    out: Path = typer.Option(Path("bench-data.json"), help="JSON file to write."),
    workers: list[int] = typer.Option([1, 2], "--workers", help="Worker counts to time (repeat the option)."),
    repeats: int = typer.Option(3, help="Interleaved plain / Ray Data read passes (best of each is reported)."),
    seed: int = typer.Option(0, help="Synthetic city job seed."),
    workdir: Optional[str] = typer.Option(None, help="New or empty directory for the stores (default: a "
                                          "temporary one)."),
    keep: bool = typer.Option(False, help="Keep the stores in --workdir afterwards."),
    address: Optional[str] = typer.Option(None, help="Existing Ray cluster address (default: embedded local Ray "
                                          "with max(--workers) CPUs)."),
) -> None:
    import json

    from dcgen.data.bench import DataBenchConfig, bench_data

    try:
        config = DataBenchConfig(num_clips=clips, preset=preset, workers=tuple(workers), seed=seed,
                                 read_repeats=repeats)
        result = bench_data(config, workdir, keep=keep, ray_address=address,
                            progress=lambda line: typer.echo(line, err=True))
    except ValueError as e:
        fail(str(e))
    out.write_text(json.dumps(result, indent=2))
    lines = [f"wrote {out}"]
    for run in result["synth"]["runs"]:
        lines.append(f"  synth-city {run['workers']} worker(s): {run['clips_per_s']:.1f} clips/s")
    r = result["read"]
    lines.append(f"  store write {result['write']['mb_per_s']:.0f} MB/s, plain read {r['plain']['best_mb_per_s']:.0f} "
                 f"MB/s, Ray Data read {r['ratio_best']:.2f}x plain")
    lines.append(f"  {result['size']['disk_bytes_per_clip'] / 1e3:.1f} kB per clip on disk: "
                 f"{result['size']['ratio']:.1f}x smaller than raw uint8 (occupancy {result['size']['occupancy_ratio']:.1f}x)")
    for name, t in result["targets"].items():
        lines.append(f"  target {name}: {t['value']} {t['op']} {t['threshold']}: {'pass' if t['passed'] else 'FAIL'}")
    typer.echo("\n".join(lines))


@bench_app.command("dit", help="DiT benchmark: sampling s/scene at DDPM-1000 vs DDIM-50/25, training s/iter, "
                   "parameter counts (JSON).\n\nExample: dcgen bench dit --preset debug --out bench-dit.json")
def bench_dit_cmd(
    preset: str = typer.Option("debug", help="debug | small | carlasc | occ3d."),
    out: Path = typer.Option(Path("bench-dit.json"), help="JSON file to write."),
    scenes: int = typer.Option(4, help="Scenes per sampling call."),
    ddpm_steps: int = typer.Option(1000, help="Ancestral DDPM steps."),
    guidance: float = typer.Option(4.0, help="Guidance scale while sampling (4 = two DiT passes per step)."),
    train_iters: int = typer.Option(5, help="Timed training iterations (after 2 warm-up ones)."),
    train_batch: Optional[int] = typer.Option(None, help="Training batch (default per preset)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    vae: Optional[str] = typer.Option(None, help="Trained VAE checkpoint (default: fresh networks)."),
    dit: Optional[str] = typer.Option(None, help="Trained DiT checkpoint (with --vae)."),
    quality_data: Optional[str] = typer.Option(None, help="Scene store whose val clips condition and judge the "
                                               "sampler quality check (with --features and trained checkpoints)."),
    features: Optional[str] = typer.Option(None, help="Features checkpoint for the sampler quality check."),
    quality_scenes: int = typer.Option(64, help="Scenes per sampler in the quality check."),
) -> None:
    import json

    from dcgen.generate.bench import bench_dit

    try:
        result = bench_dit(preset, scenes=scenes, ddpm_steps=ddpm_steps, guidance=guidance, train_batch=train_batch,
                           train_iters=train_iters, device=device, vae=vae, dit=dit, quality_data=quality_data,
                           features=features, quality_scenes=quality_scenes, log=typer.echo)
    except ValueError as e:
        fail(str(e))
    out.write_text(json.dumps(result, indent=2))
    s = result["sampling_seconds_per_scene"]
    typer.echo(f"wrote {out}: " + ", ".join(f"{k} {v:.3f} s/scene" for k, v in s.items())
               + f"; training {result['train_seconds_per_iter']:.3f} s/iter; DiT {result['dit_parameters']:,} params")
    for name, rel in ((result.get("quality") or {}).get("relative") or {}).items():
        typer.echo(f"quality {name} / {result['quality']['relative_to']}: "
                   + ", ".join(f"{k} {v:.3f}" for k, v in rel.items() if v is not None))


@bench_app.command("metrics", help="Generation-metric benchmark (JSON): feature extraction clips/s in 2D (renders + "
                   "image network) and 3D (voxel network) per preset, and the time of all five metrics on 10,000 x "
                   "2,048 features (target < 30 s).\n\nExample: dcgen bench metrics --out bench-metrics.json")
def bench_metrics_cmd(
    out: Path = typer.Option(Path("bench-metrics.json"), help="JSON file to write."),
    presets: str = typer.Option("debug,small", help="Comma-separated presets to time extraction on."),
    clips: int = typer.Option(16, help="Synthetic clips per preset."),
    batch_size: int = typer.Option(8, help="Clips per network batch."),
    features: Optional[str] = typer.Option(None, help="Features checkpoint (default: untrained networks of the "
                                           "default shape; speed does not depend on the weights)."),
    samples: int = typer.Option(10_000, help="Feature rows per set for the metric timing."),
    dim: int = typer.Option(2048, help="Features per row for the metric timing."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
) -> None:
    import json

    from dcgen.metrics.bench_metrics import bench_metrics

    try:
        result = bench_metrics([p.strip() for p in presets.split(",") if p.strip()], clips, batch_size, features,
                               device, samples, dim, log=lambda m: typer.echo(m, err=True))
    except ValueError as e:
        fail(str(e))
    out.write_text(json.dumps(result, indent=2))
    lines = [f"wrote {out}"]
    for e in result["extraction"]:
        lines.append(f"  {e['preset']}: 2D {e['2d_clips_per_s']:.1f} clips/s ({e['2d_images_per_s']:.1f} images/s, "
                     f"renders alone {e['render_clips_per_s']:.1f} clips/s), 3D {e['3d_clips_per_s']:.1f} clips/s "
                     f"on {e['device']}")
    m = result["metrics"]
    lines.append(f"  all five metrics on {m['samples']} x {m['dim']}: {m['all_five_seconds']:.1f} s (target < "
                 f"{m['target_seconds']:g} s: {'met' if m['target_met'] else 'NOT met'}); "
                 + ", ".join(f"{k} {v:.1f} s" for k, v in m["seconds"].items()))
    typer.echo("\n".join(lines))
