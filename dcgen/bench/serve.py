"""``dcgen bench serve``: requests/s and p50/p99 latency of the HTTP endpoint at concurrency 1, 8 and 32, with
``@serve.batch`` on and off, and the batched/unbatched throughput ratio (issue target: >= 4x at concurrency 32).

Each request asks for one command-conditioned scene with its own seed, sent by that many concurrent
``AsyncDcgenClient`` tasks over loopback HTTP. "Off" is a batch of one on a pipeline whose micro-batch is one (so it
does no padded work); "on" batches up to ``max_batch_size`` scenes with the same micro-batch. Trained checkpoints are
used when given; otherwise freshly initialised networks of the preset are written as checkpoints and served: serving
time does not depend on the weights. ``pipeline_ceiling`` times the pipeline in-process at micro-batch 1 and at a
full batch: the most batching can gain on the hardware (on a CPU, where compute grows with the batch, little; the
target assumes an accelerator that a batch of one leaves idle). Every number is measured in this run.
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
TARGET_RATIO = 4.0


def write_untrained_checkpoints(preset: str, out: str | Path, conditions: tuple[str, ...] | None = None,
                                seed: int = 0) -> tuple[str, str]:
    """A VAE and a DiT checkpoint of freshly initialised ``preset`` networks, in the training runs' format (the DiT's
    metadata names the VAE, grid and schedule), for serving and timing without a training run.

    The DiT is an ε network whatever the preset's ``prediction``: its zero-initialised head outputs 0, which as ε
    denoises each seed to a scene of its own, but as v shrinks every seed to one and the same scene. Both cost the
    same per step, so timings do not change; tests that tell scenes of different seeds apart still can."""
    import torch

    from dcgen import checkpoint
    from dcgen.data.grid import grid
    from dcgen.diffusion.schedule import ScheduleConfig
    from dcgen.models.dit import DiT
    from dcgen.models.vae import HexPlaneVAE
    from dcgen.presets import get_preset

    out = Path(out)
    torch.manual_seed(seed)
    vae_cfg = get_preset(preset).vae
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
            pipe.generate(reqs[:1], [0], steps=2)
            best = float("inf")
            for _ in range(repeats):  # the best of a few runs: a shared machine only ever adds time
                t0 = time.perf_counter()
                pipe.generate(reqs, list(range(len(reqs))), steps=steps)
                best = min(best, (time.perf_counter() - t0) / len(reqs))
            out[str(m)] = best
    finally:
        torch.set_num_threads(before)
    return {"seconds_per_scene": out, "max_ratio": out["1"] / out[str(batch)], "threads": threads}


async def _level(url: str, concurrency: int, num_requests: int, steps: int, guidance: float, first_seed: int) -> dict:
    from dcgen.serve.client import AsyncDcgenClient

    latencies: list[float] = []
    batch_sizes: list[int] = []
    queue = list(range(num_requests))

    async def worker(client):
        while queue:
            i = queue.pop()
            t0 = time.perf_counter()
            got = await client.generate(1, first_seed + i, command=1 + i % 3, steps=steps, guidance=guidance)
            latencies.append(time.perf_counter() - t0)
            batch_sizes.extend(got.batch_sizes)

    async with AsyncDcgenClient(url, max_connections=max(concurrency, 1)) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.asarray(latencies)
    return {"concurrency": concurrency, "requests": num_requests, "seconds": wall,
            "requests_per_s": num_requests / wall, "p50_latency_s": float(np.percentile(lat, 50)),
            "p99_latency_s": float(np.percentile(lat, 99)), "mean_batch_size": float(np.mean(batch_sizes))}


def bench_serve(out: str | Path, *, vae: str | None = None, dit: str | None = None, preset: str = "debug",
                concurrency: tuple[int, ...] = CONCURRENCY, requests_per_client: int = 2, min_requests: int = 8,
                steps: int = 50, guidance: float = 4.0, max_batch_size: int = 32, batch_wait_s: float = 0.2,
                cpus_per_replica: float = 1.0, gpus_per_replica: float = 0.0, log=print) -> dict:
    """Run the benchmark on a local Serve (loopback, a free port) and write the JSON report to ``out``."""
    import json

    if (vae is None) != (dit is None):
        raise ValueError("give both --vae and --dit checkpoints, or neither (freshly initialised networks of --preset)")
    if not concurrency or any(c < 1 for c in concurrency):
        raise ValueError(f"concurrency levels {list(concurrency)}; expected integers >= 1")
    from dcgen.serve.app import delete, shutdown, start
    from dcgen.serve.config import ServeConfig
    tmp = tempfile.TemporaryDirectory(prefix="dcgen-bench-serve-")
    try:
        if vae is None:
            vae, dit = write_untrained_checkpoints(preset, tmp.name, conditions=("command",))
        modes = {"batched": (max_batch_size, max_batch_size), "unbatched": (1, 1)}
        untrained = vae.startswith(tmp.name)
        report: dict = {"networks": f"freshly initialised {preset} networks" if untrained else "trained checkpoints",
                        "vae": None if untrained else vae, "dit": None if untrained else dit, "steps": steps,
                        "sampler": "ddim", "guidance": guidance,
                        "scenes_per_request": 1, "batch_wait_s": batch_wait_s, "cpus_per_replica": cpus_per_replica,
                        "gpus_per_replica": gpus_per_replica,
                        "machine": {"python": platform.python_version(), "processor": platform.processor(),
                                    "platform": platform.platform()}}
        device = "cuda" if gpus_per_replica > 0 else "cpu"
        report["pipeline_ceiling"] = pipeline_ceiling(vae, dit, max_batch_size, steps, guidance, device,
                                                      max(1, int(cpus_per_replica)))
        log(f"in-process pipeline: {report['pipeline_ceiling']['seconds_per_scene']} s/scene by micro-batch; "
            f"batching can gain at most {report['pipeline_ceiling']['max_ratio']:.2f}x on this hardware")
        port = free_port()
        for mode, (batch, micro) in modes.items():
            cfg = ServeConfig(vae=vae, dit=dit, port=port, max_batch_size=batch, micro_batch=micro,
                              batch_wait_s=batch_wait_s, cpus_per_replica=cpus_per_replica,
                              gpus_per_replica=gpus_per_replica, max_count=1, app_name="dcgen-bench")
            url = start(cfg)
            asyncio.run(_level(url, 2, 2, steps, guidance, 10**6))  # warm-up: first calls load code paths
            levels = {}
            for i, c in enumerate(concurrency):
                n = max(min_requests, requests_per_client * c)
                levels[str(c)] = asyncio.run(_level(url, c, n, steps, guidance, 1000 * i))
                log(f"serve bench {mode:9s} c={c:3d}: {levels[str(c)]['requests_per_s']:7.2f} req/s  "
                    f"p50 {levels[str(c)]['p50_latency_s']:.3f} s  p99 {levels[str(c)]['p99_latency_s']:.3f} s  "
                    f"mean batch {levels[str(c)]['mean_batch_size']:.1f}")
            report[mode] = {"max_batch_size": batch, "micro_batch": micro, "levels": levels}
            delete(cfg.app_name)
        shutdown()
        on, off = report["batched"]["levels"], report["unbatched"]["levels"]
        ratio = {c: on[c]["requests_per_s"] / off[c]["requests_per_s"] for c in on}
        report["ratio"] = ratio
        top = str(max(concurrency))
        report["target"] = {"concurrency": int(top), "min_ratio": TARGET_RATIO, "ratio": ratio[top],
                            "met": ratio[top] >= TARGET_RATIO}
    finally:
        tmp.cleanup()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report
