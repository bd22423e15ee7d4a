"""``dcgen bench dit``: sampling seconds per scene (ancestral DDPM at 1000 steps vs DDIM at 50, 25 and 10 and
DPM-Solver++ at 10), DiT training seconds per iteration and parameter counts (SPEC §3: ~43 M at carlasc; §5: 3.91 s
per CarlaSC sample on an A100 at 1000 steps).

Sampling is timed end to end through ``GenerationPipeline.generate`` (DiT steps with classifier-free guidance on a
command, then the VAE decode), on trained checkpoints when given, else on freshly initialised networks of the
preset: the time does not depend on the weights. Every number is measured in this run; nothing is extrapolated.

With trained checkpoints, a scene store and a features checkpoint (``--quality-data``, ``--features``), the
benchmark also checks what the fast samplers cost in quality: the same ``quality_scenes`` requests (conditions of
the store's first val clips, the same seeds) are sampled with DDPM-1000, DDIM-50/25/10, DPM-Solver++ at 10 steps and
ancestral DDPM respaced to 50 steps, and the generation metrics of each set against the store's val clips are
compared (issue targets: DDIM-50 within 10 % of DDPM-1000; issue 23: a ≤ 10-step solver within 10 % of it, with
DDIM-10 as its same-cost baseline). Two more DDIM rows tell the step count from the sampler family apart: DDIM at
η = 1 (``ddim_50_eta1``: the same 50 steps, fresh noise each step, as fast as η = 0) and deterministic DDIM at the
full step count (``ddim_1000``: the probability-flow ODE solved finely). On the quickstart's debug model (32 scenes,
guidance 4) with an ε network, DDIM-1000 was as far from DDPM-1000 as DDIM-50 (3D FID 156 and 158 vs 49): the gap
was the ODE on a minutes-trained network, not the 50 steps. The same model as a v network (``DiTConfig.prediction``,
same data and steps) closed it: DDIM-50 3D FID 72 and 2D FID 100 against DDPM-1000's 89 and 110. Each sampler's
entry also counts its distinct scenes: a sampler that returns one scene for every seed is reported as collapsed.
"""

from __future__ import annotations

import platform
import time
from dataclasses import replace

import numpy as np
import torch


def parameter_counts() -> dict[str, int]:
    """DiT parameters of every preset (built on the meta device: no memory, no time)."""
    from dcgen.models.dit import DiT
    from dcgen.presets import PRESETS

    out = {}
    for name, cfg in ((n, p.dit) for n, p in PRESETS.items()):
        with torch.device("meta"):
            out[name] = sum(p.numel() for p in DiT(cfg).parameters())
    return out


def _pipeline(preset: str, vae: str | None, dit: str | None, device, micro_batch: int):
    from dcgen.data.grid import grid
    from dcgen.diffusion.schedule import NoiseSchedule
    from dcgen.generate.pipeline import GenerationPipeline
    from dcgen.models.dit import DiT
    from dcgen.models.vae import HexPlaneVAE
    from dcgen.presets import get_preset

    if (vae is None) != (dit is None):
        raise ValueError("give both --vae and --dit checkpoints, or neither (fresh networks of the preset)")
    if vae is not None:
        return GenerationPipeline.from_checkpoints(vae, dit, device=str(device), micro_batch=micro_batch)
    torch.manual_seed(0)
    cfg = replace(get_preset(preset).dit, conditions=("command",))
    return GenerationPipeline(HexPlaneVAE(get_preset(preset).vae), DiT(cfg), grid(preset), NoiseSchedule.linear(),
                              device=device, micro_batch=micro_batch)


def time_sampling(pipe, scenes: int, sampler: str, steps: int, guidance: float, eta: float = 0.0) -> float:
    """Seconds per scene of one ``generate`` call for ``scenes`` command-conditioned scenes."""
    from dcgen.generate.conditions import SceneRequest

    command = 2 if "command" in pipe.conditions else None
    requests = [SceneRequest(command=command, guidance=guidance) for _ in range(scenes)]
    _sync(pipe.device)
    t0 = time.perf_counter()
    pipe.generate(requests, list(range(scenes)), sampler=sampler, steps=steps, eta=eta)
    _sync(pipe.device)
    return (time.perf_counter() - t0) / scenes


def time_training(preset: str, device, batch_size: int, iters: int, warmup: int = 2) -> float:
    """Seconds per DiT training iteration (every condition, AdamW, hybrid loss, EMA) on random latents."""
    from dcgen.diffusion.objective import EpsModel, diffusion_loss
    from dcgen.diffusion.schedule import NoiseSchedule
    from dcgen.models.dit import DiT
    from dcgen.presets import get_preset
    from dcgen.train.context import autocast
    from dcgen.train.ema import EMA

    cfg = get_preset(preset).dit
    model = DiT(cfg).to(device)
    ema = EMA(model, 0.9999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    schedule = NoiseSchedule.linear()
    valid_SS = model.rollout.valid_mask(device).float()
    gen = torch.Generator().manual_seed(0)
    b, s, c = batch_size, model.rollout.size, cfg.latent.channels
    batch = {
        "latent": torch.randn(b, c, s, s, generator=gen).to(device) * valid_SS,
        "prev_latent": torch.randn(b, c, s, s, generator=gen).to(device) * valid_SS,
        "has_prev": torch.ones(b, dtype=torch.bool, device=device),
        "command": torch.randint(0, 4, (b,), generator=gen).to(device),
        "trajectory": torch.randn(b, cfg.num_frames, 3, generator=gen).to(device),
        "layout": torch.randint(0, 2, (b, cfg.num_frames, *cfg.layout_size), generator=gen).to(device),
        "bev": torch.randint(0, cfg.num_classes, (b, *cfg.bev_size), generator=gen).to(device),
    }
    times = []
    for i in range(warmup + iters):
        _sync(device)
        t0 = time.perf_counter()
        loss = diffusion_loss(EpsModel(model), schedule, batch, cfg.conditions, valid_SS, gen, 0.1,
                              autocast(torch.device(device), True)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(model)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


QUALITY_KEYS = ("fid", "kid_mean", "precision", "recall")


def quality_requests(pipe, data: str, n: int, split: str, guidance: float) -> list:
    """Requests with the conditions the DiT takes (command, trajectory, layout, bev) of the first ``n`` clips of
    ``split`` in the scene store ``data``."""
    from dcgen.data.store import SceneStore
    from dcgen.generate.conditions import SceneRequest

    store = SceneStore.open(data)
    idx = store.indices(split)
    if idx.size < n:
        raise ValueError(f"--quality-data {data}: {idx.size} clips in split {split!r}, need {n} (--quality-scenes)")
    names = [c for c in ("command", "trajectory", "layout", "bev") if c in pipe.conditions]
    arrays = store.read(idx[:n], tuple(names)) if names else {}
    return [SceneRequest(guidance=guidance, **{k: (int(v[i]) if k == "command" else v[i])
                                               for k, v in arrays.items()}) for i in range(n)]


def sampler_quality(pipe, data: str, features: str, scenes: int, samplers: dict[str, tuple[str, int, float]],
                    guidance: float, split: str = "val", seed: int = 0, log=None) -> dict:
    """Generation metrics (2D and 3D) of ``scenes`` scenes per sampler against ``split`` of ``data``, and each
    sampler's metrics relative to the first one's. ``samplers`` maps a name to (sampler, steps, η).

    A sampler whose scenes are all the same (a collapsed model: on a minutes-trained debug model every seed can
    decode to one clip, or not, depending on the CPU's rounding) is a result: its entry counts the distinct scenes,
    says ``collapsed`` and carries the note "collapsed: all N scenes identical" beside metrics that stay finite."""
    import tempfile

    from dcgen.generate.sample_store import write_samples
    from dcgen.metrics.gen_eval import diversity_note, evaluate_generation
    from dcgen.runtime import scene_seed

    requests = quality_requests(pipe, data, scenes, split, guidance)
    seeds = [scene_seed(seed, k) for k in range(scenes)]
    out: dict = {"scenes": scenes, "data": str(data), "split": split, "features": str(features), "samplers": {}}
    with tempfile.TemporaryDirectory(prefix="dcgen-bench-dit-") as tmp:
        for name, (sampler, steps, eta) in samplers.items():
            if log:
                log(f"quality: {scenes} scenes with {name}")
            t0 = time.perf_counter()
            occ = pipe.generate(requests, seeds, sampler=sampler, steps=steps, eta=eta)
            seconds = time.perf_counter() - t0
            distinct = len({clip.tobytes() for clip in occ})  # bytes: exact, whatever the CPU
            note = diversity_note(scenes, distinct)
            if log and note:
                log(f"quality {name}: {note}")
            path = write_samples(f"{tmp}/{name}.zarr", pipe.grid, occ, requests, seeds)
            result = evaluate_generation(data, path, features, real_split=split, device=str(pipe.device))
            metrics = {f"{k}_{s}": result["metrics"][s][k] for s in ("2d", "3d") for k in QUALITY_KEYS}
            out["samplers"][name] = {"seconds": seconds, "distinct_scenes": distinct, "collapsed": distinct == 1,
                                     "note": note, **metrics}
    first = next(iter(samplers))
    base = out["samplers"][first]
    metric_keys = [f"{k}_{s}" for s in ("2d", "3d") for k in QUALITY_KEYS]
    out["relative_to"] = first
    out["relative"] = {name: {k: (m[k] / base[k] if base[k] else None) for k in metric_keys}
                       for name, m in out["samplers"].items() if name != first}
    return out


def bench_dit(preset: str = "debug", *, scenes: int = 4, ddpm_steps: int = 1000,
              ddim_steps: tuple[int, ...] = (50, 25, 10), respaced_ddpm_steps: tuple[int, ...] = (50,),
              ddim_eta1_steps: tuple[int, ...] = (50,), dpmpp_steps: tuple[int, ...] = (10,),
              guidance: float = 4.0, train_batch: int | None = None, train_iters: int = 5, device: str = "auto",
              vae: str | None = None, dit: str | None = None, micro_batch: int | None = None,
              quality_data: str | None = None, features: str | None = None, quality_scenes: int = 64,
              log=None) -> dict:
    """The benchmark as a JSON-able dict. Samplers: DDPM at ``ddpm_steps``; DDIM (η = 0) at each of ``ddim_steps``
    and at ``ddpm_steps``; DDIM at η = 1 at ``ddim_eta1_steps``; DDPM respaced to ``respaced_ddpm_steps``;
    DPM-Solver++ at ``dpmpp_steps``."""
    from dcgen.presets import get_preset
    from dcgen.runtime import pick_device

    get_preset(preset)  # an unknown name is an error naming the choices
    if scenes < 1 or train_iters < 1 or ddpm_steps < 1 or any(s < 1 for s in ddim_steps):
        raise ValueError(f"scenes, train iterations and step counts must be >= 1, got scenes={scenes}, "
                         f"train_iters={train_iters}, ddpm_steps={ddpm_steps}, ddim_steps={list(ddim_steps)}")
    if (quality_data is None) != (features is None) or (quality_data is not None and vae is None):
        raise ValueError("the sampler quality check needs --quality-data, --features and trained --vae/--dit")
    dev = pick_device(device)
    pipe = _pipeline(preset, vae, dit, dev, micro_batch or scenes)
    # name -> (sampler, steps, η); the full DDPM first: every other one is compared with it
    samplers = {f"ddpm_{ddpm_steps}": ("ddpm", ddpm_steps, 0.0),
                **{f"ddim_{s}": ("ddim", s, 0.0) for s in (*ddim_steps, ddpm_steps)},
                **{f"ddim_{s}_eta1": ("ddim", s, 1.0) for s in ddim_eta1_steps},
                **{f"ddpm_{s}": ("ddpm", s, 0.0) for s in respaced_ddpm_steps if s != ddpm_steps},
                **{f"dpmpp_{s}": ("dpm++", s, 0.0) for s in dpmpp_steps}}
    time_sampling(pipe, scenes, "ddim", 2, guidance)  # warm-up: allocations, kernel selection
    sampling = {name: time_sampling(pipe, scenes, sampler, steps, guidance, eta)
                for name, (sampler, steps, eta) in samplers.items()}
    ratios = {f"ddpm_{ddpm_steps}_over_{k}": sampling[f"ddpm_{ddpm_steps}"] / v
              for k, v in sampling.items() if k != f"ddpm_{ddpm_steps}"}
    batch = train_batch or get_preset(preset).dit_recipe.batch_size
    params = parameter_counts()
    quality = None
    if quality_data is not None:
        qpipe = _pipeline(preset, vae, dit, dev, micro_batch or 8)
        quality = sampler_quality(qpipe, quality_data, features, quality_scenes, samplers, guidance, log=log)
    return {
        "quality": quality,
        "preset": preset,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "weights": "checkpoints" if vae else "fresh",
        "checkpoints": pipe.checkpoint_ids,
        "scenes": scenes,
        "micro_batch": pipe.micro_batch,
        "guidance": guidance,
        "sampling_seconds_per_scene": sampling,
        "sampling_speedup": ratios,
        "train_batch": batch,
        "train_seconds_per_iter": time_training(preset, dev, batch, train_iters),
        "dit_parameters": params[preset] if vae is None else sum(p.numel() for p in pipe.dit.parameters()),
        "dit_parameters_by_preset": params,
        "vae_parameters": sum(p.numel() for p in pipe.vae.parameters()),
        "reference": {"paper_dit_parameters_carlasc": 43_000_000, "paper_seconds_per_sample_a100_ddpm_1000": 3.91},
    }
