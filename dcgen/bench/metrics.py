"""``dcgen bench metrics``: how fast the generation metrics run (issue 5 benchmark, SPEC §4).

Two parts, written as one JSON document:
- **feature extraction**: clips/s of the 2D side (metric renders + image network) and the 3D side (voxel
  network) on synthetic-city clips of each preset, with the networks of a features checkpoint or, without one,
  freshly initialised networks of the default shape (speed does not depend on the weights);
- **metrics**: the time of each of the five metrics (IS, FID, KID, k-NN P/R, Gaussian P/R) and of
  ``generation_metrics`` (all five, sharing the covariance work) on ``num_samples`` × ``dim`` random features
  (default 10,000 × 2,048), against the target of under 30 s for all five.
Legend: N samples, D features, K classes.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import numpy as np

TARGET_SECONDS = 30.0


def _timed(fn: Callable, repeats: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_extraction(preset: str, num_clips: int, batch_size: int, features: str | None, device: str,
                     seed: int = 0) -> dict:
    """Clips/s of the 2D side (render + image network) and the 3D side (voxel network) on ``num_clips`` clips."""
    import torch

    from dcgen.data.grid import grid as preset_grid
    from dcgen.data.synth_city import generate_clip
    from dcgen.metrics.feature_nets import FeatureNets, FeatureNetsConfig, load_feature_nets
    from dcgen.metrics.proxy_task import ProxyTask
    from dcgen.runtime import pick_device

    if num_clips < 1 or batch_size < 1:
        raise ValueError(f"--clips and --batch-size must be >= 1, got {num_clips} and {batch_size}")
    dev = pick_device(device)
    g = preset_grid(preset)
    if features is not None:
        loaded = load_feature_nets(features, dev)
        nets, source = loaded.nets, loaded.checkpoint_id
        if tuple(nets.grid.shape) != tuple(g.shape):
            raise ValueError(f"--features {features} reads clips of shape {list(nets.grid.shape)}, not the "
                             f"{preset} preset's {list(g.shape)}; bench that preset only")
    else:
        nets, source = FeatureNets(FeatureNetsConfig.for_grid(g, ProxyTask())).to(dev).eval(), "untrained"
    occ = np.stack([generate_clip(g, seed, i)["occupancy"] for i in range(num_clips)])
    views_per_clip = nets.config.views_per_clip

    @torch.no_grad()
    def side_2d():
        for a in range(0, num_clips, batch_size):
            nets.image(nets.image_inputs(nets.render(occ[a:a + batch_size]), dev))
        _sync(dev)

    @torch.no_grad()
    def side_3d():
        for a in range(0, num_clips, batch_size):
            nets.voxel(torch.from_numpy(occ[a:a + batch_size]).to(dev))
        _sync(dev)

    render_s, _ = _timed(lambda: [nets.render(occ[a:a + batch_size]) for a in range(0, num_clips, batch_size)])
    side_3d()  # warm-up (first-call allocations, kernel selection)
    s2, _ = _timed(side_2d, 2)
    s3, _ = _timed(side_3d, 2)
    return {"preset": preset, "clips": num_clips, "batch_size": batch_size, "device": str(dev), "networks": source,
            "image_kind": nets.config.image_kind, "views_per_clip": views_per_clip,
            "render_size": nets.config.render_size,
            "2d_clips_per_s": num_clips / s2, "2d_images_per_s": num_clips * views_per_clip / s2,
            "render_clips_per_s": num_clips / render_s, "3d_clips_per_s": num_clips / s3,
            "torch_threads": torch.get_num_threads()}


def _sync(dev) -> None:
    if dev.type == "cuda":
        import torch

        torch.cuda.synchronize(dev)


def bench_metric_times(num_samples: int = 10_000, dim: int = 2048, num_classes: int = 24, seed: int = 0) -> dict:
    """Seconds of each metric and of all five together on two ``[num_samples, dim]`` float32 feature sets."""
    from dcgen.metrics.fid import fid_from_features
    from dcgen.metrics.gaussian_precision_recall import gaussian_precision_recall
    from dcgen.metrics.generation import GenerationMetricsConfig, generation_metrics
    from dcgen.metrics.inception_score import inception_score
    from dcgen.metrics.kid import kernel_inception_distance
    from dcgen.metrics.precision_recall import knn_precision_recall

    if num_samples < 10 or dim < 1:
        raise ValueError(f"--samples must be >= 10 and --dim >= 1, got {num_samples} and {dim}")
    g = np.random.default_rng(seed)
    real = g.standard_normal((num_samples, dim), dtype=np.float32)
    fake = (g.standard_normal((num_samples, dim), dtype=np.float32) * 1.1 + 0.05).astype(np.float32)
    probs = g.dirichlet(np.ones(num_classes), num_samples)
    cfg = GenerationMetricsConfig()
    subset = min(cfg.kid_subset_size, num_samples)
    each = {
        "is": _timed(lambda: inception_score(probs, cfg.is_splits))[0],
        "fid": _timed(lambda: fid_from_features(real, fake))[0],
        "kid": _timed(lambda: kernel_inception_distance(real, fake, cfg.kid_subsets, subset, cfg.seed))[0],
        "knn_precision_recall": _timed(lambda: knn_precision_recall(real, fake, cfg.pr_k, cfg.batch_size))[0],
        "gaussian_precision_recall": _timed(lambda: gaussian_precision_recall(real, fake))[0],
    }
    together, metrics = _timed(lambda: generation_metrics(real, fake, probs, cfg))
    return {"samples": num_samples, "dim": dim, "seconds": each, "sum_of_separate_seconds": sum(each.values()),
            "all_five_seconds": together, "target_seconds": TARGET_SECONDS,
            "target_met": together < TARGET_SECONDS, "values_on_random_features": metrics.to_dict()}


def bench_metrics(presets: Sequence[str] = ("debug", "small"), num_clips: int = 16, batch_size: int = 8,
                  features: str | None = None, device: str = "auto", num_samples: int = 10_000, dim: int = 2048,
                  log: Callable[[str], None] | None = None) -> dict:
    """The whole benchmark as a JSON-able dict."""
    import torch

    say = log or (lambda m: None)
    extraction = []
    for preset in presets:
        say(f"feature extraction, {preset} ({num_clips} clips)")
        extraction.append(bench_extraction(preset, num_clips, batch_size, features, device))
    say(f"metrics on {num_samples} x {dim} features")
    metrics = bench_metric_times(num_samples, dim)
    return {"extraction": extraction, "metrics": metrics, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
