"""``dcgen bench``: benchmarks that write JSON (data path, VAE ablations, DiT sampling and training, generation
metrics, ``dcgen synth`` end to end, and the Serve application's batching)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcgen.cli.common import DEVICE_OPTION, fail, user_errors

bench_app = typer.Typer(help="Benchmarks that write JSON: data, vae, dit, metrics, synth, serve.",
                        no_args_is_help=True)


@bench_app.command("serve", help="Serve benchmark: requests/s and p50/p99 latency at concurrency 1, 8, 32 with "
                   "batching on and off, and batched/unbatched ratios from the same run (JSON and a table).\n\n"
                   "Example: dcgen bench serve --out bench-serve.json")
def bench_serve_cmd(
    out: Path = typer.Option(Path("bench-serve.json"), help="JSON file to write."),
    preset: str = typer.Option("debug", help="Preset of the fresh networks served when no checkpoints are given."),
    vae: Optional[str] = typer.Option(None, help="Trained VAE checkpoint (default: fresh --preset networks)."),
    dit: Optional[str] = typer.Option(None, help="Trained DiT checkpoint (with --vae)."),
    concurrency: str = typer.Option("1,8,32", help="Comma-separated numbers of concurrent clients."),
    steps: int = typer.Option(50, help="DDIM steps per scene."),
    max_batch_size: int = typer.Option(32, help="Batch size with batching on (also the pipeline micro-batch; "
                                       "smaller batches run padded to the next power of two)."),
    batch_wait_s: float = typer.Option(0.05, help="Most seconds a batch waits for as many scenes as the last one "
                                       "had (as 'dcgen serve --batch-wait-s')."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs of the model replica."),
    gpus_per_replica: float = typer.Option(0.0, help="GPUs of the model replica."),
) -> None:
    from dcgen.bench.serve import bench_serve, table

    try:
        levels = tuple(int(c) for c in concurrency.split(","))
    except ValueError:
        fail(f"--concurrency {concurrency!r}; expected comma-separated integers like 1,8,32")
    with user_errors():
        report = bench_serve(out, vae=vae, dit=dit, preset=preset, concurrency=levels, steps=steps,
                             max_batch_size=max_batch_size, batch_wait_s=batch_wait_s,
                             cpus_per_replica=cpus_per_replica, gpus_per_replica=gpus_per_replica,
                             log=lambda m: typer.echo(m, err=True))
    typer.echo(f"wrote {out}\n{table(report)}")


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

    from dcgen.bench.synth import bench_synth

    with user_errors():
        result = bench_synth(preset, vae=vae, dit=dit, n=n, steps=steps, workers=tuple(workers),
                             batch_size=batch_size, gates=gates, ray_address=address,
                             log=lambda m: typer.echo(m, err=True))
    out.write_text(json.dumps(result, indent=2))
    lines = [f"wrote {out} ({preset}, {n} scenes, {steps} steps):"]
    for run in result["runs"]:
        lines.append(f"  {run['workers']} worker(s): {run['scenes_per_s']:.3f} scenes/s end to end, gates "
                     f"{run['gate_share']:.1%} of worker time, {run['bytes_per_scene'] / 1e3:.1f} kB/scene")
    for name, t in result["targets"].items():
        lines.append(f"  target {name}: {t['value']:.3f} {t['op']} {t['threshold']}: "
                     f"{'pass' if t['passed'] else 'FAIL'}")
    typer.echo("\n".join(lines))


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
    device: str = DEVICE_OPTION,
    threads: Optional[int] = typer.Option(None, help="Torch CPU threads (default: all cores)."),
    widths: Optional[str] = typer.Option(None, help="Layer widths of another preset (e.g. carlasc) on this grid."),
    cpu_bf16: bool = typer.Option(False, "--cpu-bf16", help="On CPU, run every variant under bf16 autocast, as "
                                  "`dcgen train vae --cpu-bf16` trains (CUDA always uses bf16 autocast)."),
) -> None:
    import json

    from dcgen.bench.vae import bench_vae

    with user_errors():
        result = bench_vae(preset, batch_size=batch_size, iters=iters, warmup=warmup, device=device,
                           threads=threads, widths=widths, log=lambda m: typer.echo(m, err=True), cpu_bf16=cpu_bf16)
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

    from dcgen.bench.data import DataBenchConfig, bench_data

    with user_errors():
        config = DataBenchConfig(num_clips=clips, preset=preset, workers=tuple(workers), seed=seed,
                                 read_repeats=repeats)
        result = bench_data(config, workdir, keep=keep, ray_address=address,
                            progress=lambda line: typer.echo(line, err=True))
    out.write_text(json.dumps(result, indent=2))
    lines = [f"wrote {out}"]
    for run in result["synth"]["runs"]:
        lines.append(f"  synth-city {run['workers']} worker(s): {run['clips_per_s']:.1f} clips/s")
    r = result["read"]
    lines.append(f"  store write {result['write']['mb_per_s']:.0f} MB/s, plain read {r['plain']['best_mb_per_s']:.0f} "
                 f"MB/s, Ray Data read {r['ratio_best']:.2f}x plain")
    lines.append(f"  {result['size']['disk_bytes_per_clip'] / 1e3:.1f} kB per clip on disk: "
                 f"{result['size']['ratio']:.1f}x smaller than raw uint8 "
                 f"(occupancy {result['size']['occupancy_ratio']:.1f}x)")
    for name, t in result["targets"].items():
        lines.append(f"  target {name}: {t['value']} {t['op']} {t['threshold']}: {'pass' if t['passed'] else 'FAIL'}")
    typer.echo("\n".join(lines))


@bench_app.command("dit", help="DiT benchmark: sampling s/scene at DDPM-1000 vs DDIM-50/25/10 and DPM++-10, "
                   "training s/iter, parameter counts (JSON).\n\nExample: dcgen bench dit --preset debug --out "
                   "bench-dit.json")
def bench_dit_cmd(
    preset: str = typer.Option("debug", help="debug | small | carlasc | occ3d."),
    out: Path = typer.Option(Path("bench-dit.json"), help="JSON file to write."),
    scenes: int = typer.Option(4, help="Scenes per sampling call."),
    ddpm_steps: int = typer.Option(1000, help="Ancestral DDPM steps."),
    guidance: float = typer.Option(4.0, help="Guidance scale while sampling (4 = two DiT passes per step)."),
    train_iters: int = typer.Option(5, help="Timed training iterations (after 2 warm-up ones)."),
    train_batch: Optional[int] = typer.Option(None, help="Training batch (default per preset)."),
    device: str = DEVICE_OPTION,
    vae: Optional[str] = typer.Option(None, help="Trained VAE checkpoint (default: fresh networks)."),
    dit: Optional[str] = typer.Option(None, help="Trained DiT checkpoint (with --vae)."),
    quality_data: Optional[str] = typer.Option(None, help="Scene store whose val clips condition and judge the "
                                               "sampler quality check (with --features and trained checkpoints)."),
    features: Optional[str] = typer.Option(None, help="Features checkpoint for the sampler quality check."),
    quality_scenes: int = typer.Option(64, help="Scenes per sampler in the quality check."),
) -> None:
    import json

    from dcgen.bench.dit import bench_dit

    with user_errors():
        result = bench_dit(preset, scenes=scenes, ddpm_steps=ddpm_steps, guidance=guidance, train_batch=train_batch,
                           train_iters=train_iters, device=device, vae=vae, dit=dit, quality_data=quality_data,
                           features=features, quality_scenes=quality_scenes, log=typer.echo)
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
    device: str = DEVICE_OPTION,
) -> None:
    import json

    from dcgen.bench.metrics import bench_metrics

    with user_errors():
        result = bench_metrics([p.strip() for p in presets.split(",") if p.strip()], clips, batch_size, features,
                               device, samples, dim, log=lambda m: typer.echo(m, err=True))
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
