"""``dcgen bench serve``: requests/s and p50/p99 latency of the HTTP endpoint at concurrency 1, 8 and 32, with
batching on and off, and their ratios from the same run. Issue 25's targets: batched p50 latency at the lowest
concurrency <= 1.2x unbatched (a lone request must not pay for batch mates it does not have), and batched throughput
at the highest >= unbatched.

Each request asks for one command-conditioned scene with its own seed, sent by that many concurrent ``AsyncDcgenClient``
tasks over loopback HTTP. "Off" is a batch of one on a pipeline whose micro-batch is one (so it does no padded work);
"on" batches up to ``max_batch_size`` scenes on a pipeline of that micro-batch, each batch padded to its bucket (the
next power of two). Each level runs both modes in ABBA order (halves of its requests, each on a fresh deployment).
Trained checkpoints are used when given; otherwise freshly initialised networks of the preset are written as checkpoints
and served: serving time does not depend on the weights. ``pipeline_ceiling`` times the pipeline in-process at
micro-batch 1 and at a full batch: the most batching can gain in throughput on the hardware (on a CPU, where compute
grows with the batch, less than on an accelerator). Every number is measured in this run.
"""

from __future__ import annotations

import asyncio
import platform
import socket
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

CONCURRENCY = (1, 8, 32)
# requests (and bench synth's scenes) are timed at DDIM (--steps, 50), as every earlier run of these benchmarks was,
# whatever the default sampler: they time batching, Serve and a job's scaling, not a sampler (`dcgen bench dit`)
SAMPLER = "ddim"
MAX_P50_RATIO = 1.2  # batched / unbatched p50 latency at the lowest concurrency
MIN_THROUGHPUT_RATIO = 1.0  # batched / unbatched requests/s at the highest concurrency


def write_untrained_checkpoints(preset: str, out: str | Path, conditions: tuple[str, ...] | None = None,
                                seed: int = 0, frame: str | None = None) -> tuple[str, str]:
    """A VAE and a DiT checkpoint of freshly initialised ``preset`` networks, in the training runs' format (the DiT's
    metadata names the VAE, grid and schedule), for serving and timing without a training run.

    The DiT is an ε network whatever the preset's ``prediction``: its zero-initialised head outputs 0, which as ε
    denoises each seed to a scene of its own, but as v shrinks every seed to one and the same scene. Both cost the
    same per step, so timings do not change; tests that tell scenes of different seeds apart still can. ``frame``
    overrides the preset VAE's frame ("ego" | "reference")."""
    import torch

    from dcgen import checkpoint
    from dcgen.data.grid import grid
    from dcgen.diffusion.schedule import ScheduleConfig
    from dcgen.models.dit import DiT
    from dcgen.models.vae import HexPlaneVAE
    from dcgen.presets import get_preset

    out = Path(out)
    torch.manual_seed(seed)
    vae_cfg = get_preset(preset).vae if frame is None else replace(get_preset(preset).vae, frame=frame)
    vae_path = checkpoint.save(out / "vae", kind="vae", config=vae_cfg.to_dict(),
                               state={"model": HexPlaneVAE(vae_cfg).state_dict()}, step=0)
    dit_cfg = replace(get_preset(preset).dit, prediction="eps")
    if conditions is not None:
        dit_cfg = replace(dit_cfg, conditions=tuple(conditions))
    weights = DiT(dit_cfg).state_dict()
    extra = {"vae_checkpoint_id": checkpoint.checkpoint_id(vae_path), "vae_checkpoint": str(vae_path),
             "conditions": list(dit_cfg.conditions), "schedule": ScheduleConfig().to_dict(),
             "grid": grid(preset).to_dict(), "untrained": True}
    dit_path = checkpoint.save(out / "dit", kind="dit", config=dit_cfg.to_dict(),
                               state={"model": weights, "ema": weights}, step=0, extra=extra)
    return str(vae_path), str(dit_path)


def machine() -> dict:
    """What the numbers were measured on: Python, platform, CPU model and logical CPU count."""
    import os

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:  # not Linux: platform.processor() is all there is
        pass
    return {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": model or platform.processor(), "cpus": os.cpu_count()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pipeline_ceiling(vae: str, dit: str, batch: int, steps: int, guidance: float, device: str,
                     threads: int, repeats: int = 2) -> dict:
    """In-process seconds per scene at micro-batch 1 and at a full micro-batch of ``batch``: the most any batching
    can gain on this hardware, with no HTTP or Serve in the way."""
    import torch

    from dcgen.generate.conditions import SceneRequest
    from dcgen.generate.pipeline import GenerationPipeline

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = {}
        for m in (1, batch):
            pipe = GenerationPipeline.from_checkpoints(vae, dit, device=device, micro_batch=m)
            reqs = [SceneRequest(command=1, guidance=guidance)] * max(m, 4)
            pipe.generate(reqs[:1], [0], sampler=SAMPLER, steps=2)
            best = float("inf")
            for _ in range(repeats):  # the best of a few runs: a shared machine only ever adds time
                t0 = time.perf_counter()
                pipe.generate(reqs, list(range(len(reqs))), sampler=SAMPLER, steps=steps)
                best = min(best, (time.perf_counter() - t0) / len(reqs))
            out[str(m)] = best
    finally:
        torch.set_num_threads(before)
    return {"seconds_per_scene": out, "max_ratio": out["1"] / out[str(batch)], "threads": threads}


async def _clients(url: str, concurrency: int, num_requests: int, steps: int, guidance: float,
                   first_seed: int) -> dict:
    """Latencies, batch sizes and wall seconds of ``num_requests`` one-scene requests from ``concurrency`` clients."""
    from dcgen.serve.client import AsyncDcgenClient

    latencies: list[float] = []
    batch_sizes: list[int] = []
    queue = list(range(num_requests))

    async def worker(client):
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            got = await client.generate(1, first_seed + i, command=1 + i % 3, sampler=SAMPLER, steps=steps,
                                        guidance=guidance)
            latencies.append(time.perf_counter() - t0)
            batch_sizes.extend(got.batch_sizes)

    async with AsyncDcgenClient(url, max_connections=max(concurrency, 1)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"latencies": latencies, "batch_sizes": batch_sizes, "seconds": wall}


def level_summary(concurrency: int, runs: list[dict]) -> dict:
    """One concurrency level of one mode from its runs pooled: requests/s over their summed wall time, latency
    percentiles over all their requests."""
    lat = np.concatenate([r["latencies"] for r in runs])
    wall = sum(r["seconds"] for r in runs)
    return {"concurrency": concurrency, "requests": int(lat.size), "seconds": wall, "requests_per_s": lat.size / wall,
            "p50_latency_s": float(np.percentile(lat, 50)), "p99_latency_s": float(np.percentile(lat, 99)),
            "mean_batch_size": float(np.mean(np.concatenate([r["batch_sizes"] for r in runs])))}


def bench_serve(out: str | Path, *, vae: str | None = None, dit: str | None = None, preset: str = "debug",
                concurrency: tuple[int, ...] = CONCURRENCY, requests_per_client: int = 4, min_requests: int = 16,
                steps: int = 50, guidance: float = 4.0, max_batch_size: int = 32, batch_wait_s: float = 0.05,
                cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, log=print) -> dict:
    """Run the benchmark on a local Serve (loopback, a free port) and write the JSON report to ``out``."""
    import json

    if (vae is None) != (dit is None):
        raise ValueError("give both --vae and --dit checkpoints, or neither (freshly initialised networks of --preset)")
    if not concurrency or any(c < 1 for c in concurrency):
        raise ValueError(f"concurrency levels {list(concurrency)}; expected integers >= 1")
    from dcgen.serve.app import delete, shutdown, start
    from dcgen.serve.client import DcgenClient
    from dcgen.serve.config import ServeConfig

    tmp = tempfile.TemporaryDirectory(prefix="dcgen-bench-serve-")
    try:
        if vae is None:
            vae, dit = write_untrained_checkpoints(preset, tmp.name, conditions=("command",))
        modes = {"batched": (max_batch_size, max_batch_size), "unbatched": (1, 1)}
        untrained = vae.startswith(tmp.name)
        report: dict = {"networks": f"freshly initialised {preset} networks" if untrained else "trained checkpoints",
                        "vae": None if untrained else vae, "dit": None if untrained else dit, "steps": steps,
                        "sampler": SAMPLER, "guidance": guidance,
                        "scenes_per_request": 1, "batch_wait_s": batch_wait_s, "cpus_per_replica": cpus_per_replica,
                        "gpus_per_replica": gpus_per_replica,
                        "machine": machine()}
        device = "cuda" if gpus_per_replica > 0 else "cpu"
        report["pipeline_ceiling"] = pipeline_ceiling(vae, dit, max_batch_size, steps, guidance, device,
                                                      max(1, int(cpus_per_replica)))
        log(f"in-process pipeline: {report['pipeline_ceiling']['seconds_per_scene']} s/scene by micro-batch; "
            f"batching can gain at most {report['pipeline_ceiling']['max_ratio']:.2f}x on this hardware")
        port = free_port()
        levels: dict = {mode: {} for mode in modes}
        shapes: dict = {}
        for i, c in enumerate(concurrency):
            # each level runs as unbatched, batched, batched, unbatched halves (ABBA), each on a fresh deployment:
            # a shared machine's load drifts during a run, and ABBA cancels a linear drift out of the ratios
            half = max(min_requests, requests_per_client * c) // 2
            runs: dict = {mode: [] for mode in modes}
            for k, mode in enumerate(("unbatched", "batched", "batched", "unbatched")):
                batch, micro = modes[mode]
                cfg = ServeConfig(vae=vae, dit=dit, port=port, max_batch_size=batch, micro_batch=micro,
                                  batch_wait_s=batch_wait_s, cpus_per_replica=cpus_per_replica,
                                  gpus_per_replica=gpus_per_replica, max_count=1, app_name="dcgen-bench")
                url = start(cfg)
                with DcgenClient(url) as client:
                    shapes[mode] = client.info()["batch_shapes"]
                asyncio.run(_clients(url, 1, 2, steps, guidance, 10**6))  # warm-up: first calls load code paths
                # both modes send the same requests: the first half's seeds in runs 0 and 1, the second's in 2 and 3
                runs[mode].append(asyncio.run(_clients(url, c, half, steps, guidance, 1000 * i + half * (k // 2))))
                delete(cfg.app_name)
            for mode in modes:
                got = levels[mode][str(c)] = level_summary(c, runs[mode])
                log(f"serve bench {mode:9s} c={c:3d}: {got['requests_per_s']:7.2f} req/s  p50 "
                    f"{got['p50_latency_s']:.3f} s  p99 {got['p99_latency_s']:.3f} s  mean batch "
                    f"{got['mean_batch_size']:.1f}")
        for mode, (batch, micro) in modes.items():
            report[mode] = {"max_batch_size": batch, "micro_batch": micro, "batch_shapes": shapes[mode],
                            "levels": levels[mode]}
        shutdown()
        report["ratios"] = ratios(report["batched"]["levels"], report["unbatched"]["levels"])
        report["targets"] = targets(report["ratios"])
    finally:
        tmp.cleanup()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report


def ratios(batched: dict, unbatched: dict) -> dict:
    """Batched / unbatched requests/s and p50/p99 latency, by concurrency (the keys of both level tables)."""
    out = {}
    for c, on in batched.items():
        off = unbatched[c]
        out[c] = {"throughput": on["requests_per_s"] / off["requests_per_s"],
                  "p50_latency": on["p50_latency_s"] / off["p50_latency_s"],
                  "p99_latency": on["p99_latency_s"] / off["p99_latency_s"]}
    return out


def targets(by_level: dict) -> dict:
    """Issue 25's two targets on the ratios: p50 latency at the lowest concurrency, throughput at the highest."""
    low, high = min(by_level, key=int), max(by_level, key=int)
    p50, rps = by_level[low]["p50_latency"], by_level[high]["throughput"]
    return {"p50_latency": {"concurrency": int(low), "ratio": p50, "max": MAX_P50_RATIO, "met": p50 <= MAX_P50_RATIO},
            "throughput": {"concurrency": int(high), "ratio": rps, "min": MIN_THROUGHPUT_RATIO,
                           "met": rps >= MIN_THROUGHPUT_RATIO}}


def table(report: dict) -> str:
    """The report's levels and ratios as a fixed-width text table, one row per concurrency."""
    on, off, r = report["batched"]["levels"], report["unbatched"]["levels"], report["ratios"]
    header = (f"{'clients':>7}  {'unbatched req/s':>15} {'p50 s':>7} {'p99 s':>7}  {'batched req/s':>13} {'p50 s':>7} "
              f"{'p99 s':>7} {'batch':>5}  {'req/s x':>7} {'p50 x':>6} {'p99 x':>6}")
    lines = [header]
    for c in sorted(r, key=int):
        lines.append(f"{c:>7}  {off[c]['requests_per_s']:15.2f} {off[c]['p50_latency_s']:7.3f} "
                     f"{off[c]['p99_latency_s']:7.3f}  {on[c]['requests_per_s']:13.2f} {on[c]['p50_latency_s']:7.3f} "
                     f"{on[c]['p99_latency_s']:7.3f} {on[c]['mean_batch_size']:5.1f}  {r[c]['throughput']:7.2f} "
                     f"{r[c]['p50_latency']:6.2f} {r[c]['p99_latency']:6.2f}")
    for name, t in report["targets"].items():
        bound = f"<= {t['max']:g}" if "max" in t else f">= {t['min']:g}"
        lines.append(f"target: batched/unbatched {name.replace('_', ' ')} at c={t['concurrency']}: "
                     f"{t['ratio']:.2f}x {bound}x: {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
