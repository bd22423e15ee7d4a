"""The commands that make scenes with trained models: ``dcgen sample`` (a few scenes into a store), ``dcgen synth``
(mass production on Ray Data with quality gates) and ``dcgen quickstart`` (the whole product end to end on the
embedded local Ray)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcgen.cli.common import (ADDRESS_OPTION, CLUSTER_OPTION, DEVICE_OPTION, GPU_JOB_ADDRESS_OPTION, app, fail,
                              remote, user_errors)


@app.command("quickstart", help="Run the whole product on the embedded local Ray: synthetic city -> VAE -> latents "
             "-> DiT -> feature networks -> a few layout-conditioned scenes with quality gates -> a GIF and a "
             "metrics table. Re-running continues where it stopped.\n\n"
             "Example: dcgen quickstart --out dcgen-quickstart")
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

    with user_errors():
        run_quickstart(QuickstartConfig(out=out, preset=preset, clips=clips, scenes=scenes, seed=seed,
                                        max_minutes_per_stage=max_minutes_per_stage, verbose=verbose),
                       log=typer.echo)


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
    sampler: str = typer.Option("dpm++", help="dpm++ (DPM-Solver++(2M): few steps, deterministic) | ddim | ddpm."),
    steps: Optional[int] = typer.Option(None, help="Sampling steps (default 50 DDIM, 1000 DDPM, 10 DPM++)."),
    eta: float = typer.Option(0.0, help="DDIM noise level: 0 deterministic; 1 draws fresh noise each step, which on "
                              "briefly trained models matched DDPM-1000 quality at DDIM-50 speed (bench dit)."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale (1 = conditional model "
                                             "only) [default: per condition: 1 with a layout, else SPEC's 4]."),
    chain: int = typer.Option(1, help="Clips per scene, each continuing the previous (needs prev_clip)."),
    device: str = DEVICE_OPTION,
    micro_batch: int = typer.Option(8, help="Scenes per network call."),
    overwrite: bool = typer.Option(False, help="Replace an existing store at --out."),
    estimate_trajectory: bool = typer.Option(False, "--estimate-trajectory", help="Search each clip's ego motion "
                                             "when no trajectory was requested (seconds per debug clip, minutes "
                                             "on larger grids); otherwise it is recorded as unknown."),
    trajectory_degree: Optional[int] = typer.Option(None, help="Ego-motion prior of a reference-frame VAE's "
                                                    "generated trajectories: each coordinate projected onto a "
                                                    "polynomial of this degree in t (0 keeps the DiT's cells as "
                                                    "sampled) [default: 3]."),
    cluster: Optional[Path] = CLUSTER_OPTION,
    address: Optional[str] = GPU_JOB_ADDRESS_OPTION,
) -> None:
    remote(ctx, cluster, address, joins_ray=False, entrypoint_gpus=0.0 if device == "cpu" else 1.0)
    from dcgen.generate.sample_store import parse_cond, sample_to_store

    sources = {k: v for k, v in (("trajectory", trajectory_from), ("layout", layout_from), ("bev", bev_from),
                                 ("prev_clip", prev_from)) if v is not None}
    with user_errors():
        summary = sample_to_store(vae, dit, out, n=n, cond=parse_cond(cond), sources=sources, split=from_split,
                                  seed=seed, sampler=sampler, steps=steps, guidance=guidance, chain=chain,
                                  device=device, micro_batch=micro_batch, overwrite=overwrite,
                                  estimate_trajectory=estimate_trajectory, eta=eta,
                                  trajectory_degree=trajectory_degree)
    typer.echo(f"generated {summary['scenes']} scenes ({summary['clips']} clips) in {summary['seconds']:.1f} s on "
               f"{summary['device']} into {summary['path']}")


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
    sampler: str = typer.Option("dpm++", "--sampler", help="dpm++ (DPM-Solver++(2M): few steps, deterministic) | "
                                "ddim | ddpm (ancestral, respaced to --steps)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (dpm++: 2..999) [default: 10 dpm++, "
                                        "50 ddim and ddpm]."),
    trajectory_degree: Optional[int] = typer.Option(None, "--trajectory-degree", help="Ego-motion prior of a "
                                                    "reference-frame VAE's generated trajectories, as in 'dcgen "
                                                    "sample' (0 keeps the DiT's cells as sampled; recorded in "
                                                    "provenance.job) [default: 3]."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Classifier-free guidance scale (scenario "
                                             "entries may set their own) [default: per condition: 1 with a layout, "
                                             "else SPEC's 4]."),
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
    with user_errors(worker_errors=True):  # a worker failing mid-run exits 1; finished blocks are kept
        job = build_job(vae=vae, dit=dit, n=n, cond=cond, scenario=scenario, source=source,
                        source_split=source_split, seed=seed, sampler=sampler, steps=steps, guidance=guidance,
                        batch_size=batch_size, micro_batch=micro_batch, estimate_trajectory=estimate_trajectory,
                        max_attempts=max_attempts, gates=gates, serve_app=serve, workers=workers,
                        trajectory_degree=trajectory_degree)
        summary = run_synth(job, out, overwrite=overwrite, ray_address=address)
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
