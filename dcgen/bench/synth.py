"""``dcgen bench synth``: end-to-end throughput of ``dcgen synth`` with 1 and 2 workers (issue 6 targets: 2-worker
scaling >= 1.7x, gates <= 5 % of the time), the share of worker time in the gates, and bytes per scene on disk.

Each run is a complete ``run_synth`` into a fresh store: command-conditioned scenes (k mod 4) at guidance 4 (two DiT
passes per step, as in production), with every gate computed: the cheap checks against a synthetic-city store of
the preset's grid and, with fresh feature networks, FID/KID against that store's reference statistics. The
thresholds are set so every batch passes: the benchmark measures throughput and the gates' cost, not acceptance
(which depends on trained weights). Trained checkpoints are used when given; otherwise freshly initialised
networks of the preset (generation time does not depend on the weights). An untimed warm-up run goes first.
``scenes_per_s`` is end to end (actor start and model loading included); ``worker_scenes_per_s`` counts only the
time the generation actors spend on blocks; ``gate_share`` is the gates' share of that time and
``gate_share_of_wall`` their share of the workers' wall time.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

from dcgen.bench.serve import SAMPLER  # the job's scaling and gates are timed at it, as Serve's batching is

TARGET_SCALING = 1.7
TARGET_GATE_SHARE = 0.05
PASS_ALL = {"fid_3d": 1e30, "kid_3d": 1e30, "min_occupied": 0.0, "class_distance": 1.0, "flicker": 1.0}


def untrained_feature_checkpoint(preset: str, out: Path) -> str:
    """A features checkpoint of freshly initialised networks for ``preset``'s grid (timing only)."""
    import torch

    from dcgen import checkpoint
    from dcgen.data.grid import grid
    from dcgen.metrics.feature_nets import FeatureNetsConfig, build_feature_nets, model_state
    from dcgen.metrics.proxy_task import ProxyTask

    torch.manual_seed(0)
    cfg = FeatureNetsConfig.for_grid(grid(preset), ProxyTask())
    return str(checkpoint.save(out, kind="features", config=cfg.to_dict(),
                               state={"model": model_state(build_feature_nets(cfg))}, step=0,
                               extra={"untrained": True}))


def bench_synth(preset: str = "small", *, vae: str | None = None, dit: str | None = None, n: int = 32,
                steps: int = 50, workers: tuple[int, ...] = (1, 2), batch_size: int = 8, gates: bool = True,
                ray_address: str | None = None, workdir: str | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Time ``run_synth`` at each worker count; returns the JSON-able report."""
    from dcgen.bench.serve import write_untrained_checkpoints
    from dcgen.data.grid import grid
    from dcgen.data.synth_city import write_synthetic_city
    from dcgen.generate.batch import run_synth
    from dcgen.generate.job import build_job
    from dcgen.runtime import init_ray

    grid(preset)  # a clear error for an unknown preset
    if (vae is None) != (dit is None):
        raise ValueError("give both --vae and --dit (trained checkpoints), or neither (fresh networks)")
    if not workers or any(w < 1 for w in workers):
        raise ValueError(f"--workers {list(workers)}: expected worker counts >= 1")
    tmp = Path(workdir or tempfile.mkdtemp(prefix="dcgen-bench-synth-"))
    tmp.mkdir(parents=True, exist_ok=True)
    init_ray(ray_address, num_cpus=None if ray_address else max(workers) + 1)
    trained = vae is not None
    if vae is None:
        vae, dit = write_untrained_checkpoints(preset, tmp / "ckpt")
    gate_opts: dict = {}
    if gates:
        log(f"reference: synthetic city of the {preset} grid")
        city = write_synthetic_city(str(tmp / "city.zarr"), preset, max(4 * batch_size, 32), seed=0, overwrite=True)
        from dcgen.metrics.reference import make_reference

        features = untrained_feature_checkpoint(preset, tmp / "features")
        make_reference(city, features, tmp / "ref.npz", device="cpu")
        gate_opts = {"reference": str(tmp / "ref.npz"), "features": features, "reference_data": city,
                     "thresholds": dict(PASS_ALL)}
    # an untimed run first, so the first timed one does not pay for cold imports and Ray's worker pool alone
    log("warm-up run (untimed)")
    run_synth(build_job(vae=vae, dit=dit, n=batch_size, cond="command", sampler=SAMPLER, steps=1,
                        batch_size=batch_size, workers=max(workers), gates=gate_opts),
              str(tmp / "warm-up.zarr"), overwrite=True)
    runs = []
    for w in workers:
        job = build_job(vae=vae, dit=dit, n=n, cond="command", sampler=SAMPLER, steps=steps, batch_size=batch_size,
                        workers=w, gates=gate_opts)
        log(f"synth: {n} scenes, {w} worker(s)")
        t0 = time.perf_counter()
        summary = run_synth(job, str(tmp / f"out-{w}.zarr"), overwrite=True)
        wall = time.perf_counter() - t0
        runs.append({"workers": w, "seconds": wall, "scenes_per_s": n / wall,
                     "worker_scenes_per_s": n / max(summary["worker_seconds"] / w, 1e-9),
                     "gate_share": summary["gate_share"], "generate_share": summary["generate_share"],
                     "gate_share_of_wall": summary["gate_seconds"] / (wall * w),
                     "write_seconds": summary["write_seconds"], "bytes_per_scene": summary["bytes_per_scene"],
                     "accepted": summary["accepted"], "rejected": summary["rejected"]})
        log(f"  {n / wall:.3f} scenes/s, gates {summary['gate_share']:.1%} of worker time")
    by = {r["workers"]: r for r in runs}
    targets = {}
    if 1 in by and 2 in by:
        ratio = by[2]["scenes_per_s"] / by[1]["scenes_per_s"]
        targets["scaling_2_workers"] = {"value": ratio, "op": ">=", "threshold": TARGET_SCALING,
                                        "passed": ratio >= TARGET_SCALING}
    worst = max(r["gate_share"] for r in runs)
    targets["gate_share"] = {"value": worst, "op": "<=", "threshold": TARGET_GATE_SHARE,
                             "passed": worst <= TARGET_GATE_SHARE}
    import torch

    return {"preset": preset, "scenes": n, "sampler": SAMPLER, "steps": steps, "guidance": 4.0,
            "batch_size": batch_size, "gates": sorted(PASS_ALL) if gates else [], "trained": trained,
            "checkpoints": {"vae": vae, "dit": dit}, "runs": runs, "targets": targets,
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "platform": platform.platform(), "gpu": torch.cuda.is_available()}}
