"""``dcgen eval``: reconstruction IoU of a VAE, reference statistics of real clips, generation metrics (the paper's
Table 2) and the fidelity report of generated against real clips."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcgen.cli.common import (ADDRESS_OPTION, CLUSTER_OPTION, DEVICE_OPTION, GPU_JOB_ADDRESS_OPTION, remote,
                              user_errors)

eval_app = typer.Typer(help="Evaluate: reconstruction IoU, reference statistics, generation metrics.",
                       no_args_is_help=True)


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
    device: str = DEVICE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON instead of a table."),
) -> None:
    import json

    from dcgen.metrics.recon_eval import evaluate_reconstruction

    with user_errors():
        result = evaluate_reconstruction(vae, data, None if split == "all" else split, out, batch_size=batch_size,
                                         device=device, num_renders=renders, max_clips=max_clips)
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
    device: str = DEVICE_OPTION,
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = GPU_JOB_ADDRESS_OPTION,
) -> None:
    remote(ctx, cluster, address, joins_ray=False, entrypoint_gpus=0.0 if device == "cpu" else 1.0)
    from dcgen.metrics.reference import make_reference

    with user_errors():
        _, summary = make_reference(data, features, out, split=None if split == "all" else split,
                                    batch_size=batch_size, device=device, max_clips=max_clips)
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
    device: str = DEVICE_OPTION,
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = GPU_JOB_ADDRESS_OPTION,
) -> None:
    remote(ctx, cluster, address, joins_ray=False, entrypoint_gpus=0.0 if device == "cpu" else 1.0)
    import json

    from dcgen.metrics.gen_eval import evaluate_generation, format_table
    from dcgen.metrics.generation import GenerationMetricsConfig

    with user_errors():
        result = evaluate_generation(real, fake, features, real_split=None if real_split == "all" else real_split,
                                     fake_split=None if fake_split == "all" else fake_split, batch_size=batch_size,
                                     device=device, max_clips=max_clips,
                                     config=GenerationMetricsConfig(kid_subsets=kid_subsets, seed=seed))
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
    device: str = DEVICE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of the table."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = GPU_JOB_ADDRESS_OPTION,
) -> None:
    remote(ctx, cluster, address, joins_ray=False, entrypoint_gpus=0.0 if device == "cpu" else 1.0)
    import json

    from dcgen.metrics.fidelity import fidelity_report, format_table, parse_store_split

    with user_errors():
        real_path, real_split = parse_store_split(real)
        report = fidelity_report(real_path, fake, features, real_split=real_split, vae=vae,
                                 out=None if out is None else str(out), max_clips=max_clips, device=device, seed=seed,
                                 batch_size=batch_size, estimate_trajectories=estimate_trajectories,
                                 kid_subsets=kid_subsets, log=lambda m: typer.echo(m, err=True))
    if as_json:
        for warning in report.get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        typer.echo(format_table(report))
    if out is not None:
        typer.echo(f"wrote {report['files']['json']} and {report['files']['png']}")


def _numbers(text: Optional[str], kind=int) -> Optional[tuple]:
    """``"8,32"`` -> ``(8, 32)``; None keeps the preset's default."""
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected comma-separated numbers") from None


@eval_app.command("downstream", help="Is generated data worth training on? Trains a small LMSCNet-style scene "
                  "completion network (one LiDAR sweep's hits in, every voxel's class out) on real clips, real + "
                  "flip/rotate copies (the trivial baseline), real + generated, and generated only, every run the same "
                  "optimizer steps and batch size, scored on held-out real clips (mIoU, completion IoU), swept over "
                  "real clip counts, synthetic:real ratios and seeds.\n\nExample: dcgen eval downstream --real "
                  "city.zarr --synthetic scenes.zarr --out downstream")
def eval_downstream_cmd(
    ctx: typer.Context,
    real: str = typer.Option(..., help="Scene store of real clips: the real arms train on --real-split; every arm "
                             "is scored on --eval-split of it unless --eval names another store."),
    synthetic: str = typer.Option("", help="Generated scene stores, comma-separated; each is a pool of generated "
                                  "clips."),
    out: Path = typer.Option(..., help="Directory for downstream.json/.png/.txt, plan.json and runs/; rerunning "
                             "the same settings skips finished runs."),
    real_counts: Optional[str] = typer.Option(None, help="Real clip counts to sweep, e.g. 8,32 (default: the "
                                              "preset's)."),
    ratios: Optional[str] = typer.Option(None, help="Synthetic:real ratios; real+aug and real+gen add round(n·r) "
                                         "clips (default: the preset's)."),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps of every run; all arms get the same."),
    batch_size: Optional[int] = typer.Option(None, help="Samples (clip frames) per step, every run."),
    seeds: Optional[str] = typer.Option(None, help="Seeds, e.g. 0,1: each draws its own real subsets and initial "
                                        "weights, shared by all arms."),
    gated: Optional[str] = typer.Option(None, help="A 'dcgen synth' output: also compare its gated scenes with the "
                                        "ungated ones."),
    rejected: Optional[str] = typer.Option(None, help="The gated job's rejected store (default GATED/rejected)."),
    controls: str = typer.Option("", help="Harness checks, comma-separated: leak trains on the evaluation clips; "
                                 "shuffled pairs inputs with other frames' targets."),
    real_split: str = typer.Option("train", help="Split of --real the real arms train on."),
    eval_split: str = typer.Option("val", help="Split of the evaluation store (--eval, default --real) every arm is "
                                   "scored on."),
    eval_store: Optional[str] = typer.Option(None, "--eval", help="Scene store every arm is scored on (its "
                                             "--eval-split), e.g. a held-out city or a dataset's val store; same grid "
                                             "and class table as --real (default: --real)."),
    eval_clips: Optional[int] = typer.Option(None, help="Score on the first N clips of the evaluation split only, in "
                                             "store order (every run and seed the same clips); evaluation time grows "
                                             "with N (default: the whole split)."),
    preset: Optional[str] = typer.Option(None, help="Network widths and sweep defaults (default: the real store's "
                                         "grid)."),
    lr: float = typer.Option(5e-3, help="Learning rate of every run."),
    synthetic_share: Optional[float] = typer.Option(None, help="Share of every batch of real+aug and real+gen drawn "
                                                    "from their added clips, e.g. 0.5 (default: all frames alike, "
                                                    "r/(1+r) on average)."),
    allow_overlap: bool = typer.Option(False, help="Run even when the generator trained on the evaluation clips or "
                                       "cannot be checked; the report flags it."),
    workers: int = typer.Option(1, help="Ray Train workers; each trains whole runs (2 on a 2-core machine)."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per Ray Train worker."),
    local: bool = typer.Option(False, help="Train in this process instead of on Ray Train."),
    device: str = typer.Option("auto", help="auto | cpu | cuda (with --local)."),
    overwrite: bool = typer.Option(False, help="Replace an earlier benchmark in --out."),
    verbose: bool = typer.Option(False, help="Show Ray's own log lines."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of the table."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = ADDRESS_OPTION,
) -> None:
    address = remote(ctx, cluster, address)
    import json

    from dcgen.bench.downstream import run_downstream

    with user_errors():
        report = run_downstream(real, [s for s in synthetic.split(",") if s.strip()], out,
                                real_counts=_numbers(real_counts), ratios=_numbers(ratios, float), steps=steps,
                                batch_size=batch_size, seeds=_numbers(seeds), allow_overlap=allow_overlap,
                                gated_store=gated, rejected_store=rejected, preset=preset, real_split=real_split,
                                eval_split=eval_split, eval_store=eval_store, eval_clips=eval_clips,
                                controls=tuple(c for c in controls.split(",") if c.strip()),
                                lr=lr, synthetic_share=synthetic_share, workers=workers,
                                gpus_per_worker=gpus_per_worker, address=address,
                                backend="local" if local else "ray", device=None if device == "auto" else device,
                                overwrite=overwrite, verbose=verbose, log=lambda m: typer.echo(m, err=True))
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else report["table"])
