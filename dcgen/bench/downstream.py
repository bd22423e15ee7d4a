"""The downstream perception benchmark (issue 24): is a batch of generated scenes worth training on?

A matched-compute comparison on semantic scene completion from one LiDAR sweep (CarlaSC's task; ``train/ssc_loop``,
``models/ssc_net``): every run trains the same network for the same optimizer steps at the same batch size, so an
arm with more data gets no more compute (Dream4Drive: most "synthetic pre-training helps" results vanish once the
real-only baseline trains as long). Arms, swept over real clip counts n, synthetic:real ratios r and seeds: ``real``
(n real clips), ``real+aug`` (the n clips plus round(n r) flip/rotate copies of them: the trivial baseline generated
data must beat), ``real+gen`` (the n clips plus round(n r) generated ones) and ``gen`` (n generated clips and no
real one). A mixed arm draws its batches from all its frames alike (the added clips are then r / (1 + r) of every
batch on average: 80 % at r = 4), or with ``synthetic_share`` s a fixed share s of every batch from its added clips,
the same s for the augmented copies as for the generated clips, so the arms stay matched. All arms are scored on
held-out real clips, the evaluation split of the real store or of an evaluation store of the same grid (a held-out
city, a dataset's val store: more clips than one city's val split gives), optionally only its first N clips, by mIoU
inside the store's observed mask and by completion (occupied vs free) IoU, over every voxel too. Optional controls
check the harness itself: ``leak`` trains on the evaluation clips (it must score far higher), ``shuffled`` pairs
every input with another frame's target (the no-information floor). With a ``dcgen synth`` job's output the same
arms compare its gated scenes with the ungated ones (attempt 0 of every scene, partly in its ``rejected`` store):
the value of the gates. Before anything trains, stores of other grids or class tables, empty synthetic stores,
counts beyond a store, bad numbers, an evaluation store holding copies of the real training clips and a generator
that trained on the evaluation clips (``downstream_checks``) stop the benchmark, and a collapsed synthetic store is
flagged. Real subsets are nested (the first n of one permutation per seed) and every arm of one seed shares its real
clips and initial weights, so arms are compared seed by seed.
Outputs in ``OUT``: ``downstream.json``, ``downstream.png`` (mIoU against real clip count, a line per arm and ratio,
error bars over seeds) and ``downstream.txt`` (the one-screen table, ``downstream_report``).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dcgen.bench.downstream_checks import (Pool, collapse_report, diversity, evaluation_clips, overlap_report,
                                           same_grid, sweep_ints, sweep_ratios, ungated_pool,
                                           whole_store_pool)
from dcgen import storage
from dcgen.data.grid import GRIDS
from dcgen.data.store import SceneStore

CONTROLS = ("leak", "shuffled")  # the arms real, real+aug, real+gen, gen always run
BACKENDS = ("ray", "local")
# Per-preset sweep a user can override. debug: 24 runs, 8.5 minutes on 2 workers on 2 cores shared with other jobs
# (load average 7-11; 20-50 s a run); 300 steps because at 150 every arm sat at ~22 % mIoU whatever its data (the
# runs were step-bound). small: the targets are stated at 64 real clips and 256 generated ones (ratio 4); a
# step costs ~1 s on one busy CPU core, so its 36 runs are hours on a CPU.
DOWNSTREAM_DEFAULTS = {
    "debug": {"real_counts": (8, 32), "ratios": (1.0, 4.0), "steps": 300, "batch_size": 8, "seeds": (0, 1)},
    "small": {"real_counts": (16, 32, 64), "ratios": (1.0, 4.0), "steps": 600, "batch_size": 8, "seeds": (0, 1)},
    "carlasc": {"real_counts": (64, 256, 1024), "ratios": (1.0, 4.0), "steps": 4000, "batch_size": 8,
                "seeds": (0, 1, 2)},
    "occ3d": {"real_counts": (64, 256, 1024), "ratios": (1.0, 4.0), "steps": 4000, "batch_size": 8,
              "seeds": (0, 1, 2)},
}
FILES = {"json": "downstream.json", "png": "downstream.png", "table": "downstream.txt"}


def _preset_of(store: SceneStore) -> str | None:
    g = store.grid
    for name, pg in GRIDS.items():
        if (pg.num_frames, pg.size, pg.num_classes) == (g.num_frames, g.size, g.num_classes):
            return name
    return None


def _pool_name(path: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(str(path).rstrip("/")).removesuffix(".zarr")) or "synthetic"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}-{k}", k + 1
    taken.add(name)
    return name


def _sources(clips: Sequence[tuple[str, int]], transforms: Sequence[int] | None = None) -> list[dict]:
    """Run sources from ``(path, index)`` pairs, one per store, in the given order."""
    out: dict[str, dict] = {}
    for k, (path, index) in enumerate(clips):
        s = out.setdefault(path, {"path": path, "indices": [], "transforms": []})
        s["indices"].append(int(index))
        s["transforms"].append(int(transforms[k]) if transforms is not None else 0)
    return list(out.values())


def _run_id(seed: int, arm: str, pool: str | None, count: int, ratio: float | None) -> str:
    parts = [f"s{seed}", arm, pool or "real", f"n{count}"] + ([f"r{ratio:g}"] if ratio is not None else [])
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))


def plan_runs(real: SceneStore, real_split: str, evaluation: Sequence[tuple[str, int]], pools: dict[str, Pool], *,
              real_counts: tuple[int, ...], ratios: tuple[float, ...], seeds: tuple[int, ...],
              controls: tuple[str, ...], gate_pools: tuple[str, ...] = (),
              synthetic_share: float | None = None) -> list:
    """Every run of the sweep (``ssc_loop.SSCRun``), in a fixed order; ``evaluation`` holds the scored clips as
    ``(store path, index)`` pairs (the ``leak`` control trains on them); the mixed arms draw ``synthetic_share`` of
    every batch from their added clips (None: from all their frames alike)."""
    from dcgen.runtime import rng
    from dcgen.train.ssc_loop import SSCRun, num_transforms

    train_idx = real.indices(real_split)
    copies = num_transforms(real.grid.size) - 1  # symmetries other than the identity
    runs: list[SSCRun] = []

    def add(seed, arm, pool, count, ratio, clips, transforms=None, shuffle=False, synthetic=0):
        labels = {"arm": arm, "pool": pool, "count": count, "ratio": ratio, "real_clips": count if arm != "gen" else 0,
                  "synthetic_clips": synthetic}
        mixed = synthetic_share is not None and arm in ("real+aug", "real+gen")
        runs.append(SSCRun(_run_id(seed, arm, pool, count, ratio), seed, tuple(_sources(clips, transforms)),
                           shuffle, labels, base_clips=count if mixed else None,
                           added_share=synthetic_share if mixed else None))

    for seed in seeds:
        order = rng(seed, 0).permutation(train_idx)  # nested real subsets: the first n of one permutation
        offset = rng(seed, 1).integers(0, copies, size=order.size)  # each clip's first symmetry
        pool_order = {}
        for name, pool in pools.items():  # each pool's own stream, so its subsets do not depend on the other pools
            clips, stream = pool.clips(), 1 << 32 | zlib.crc32(name.encode())
            pool_order[name] = [clips[k] for k in rng(seed, stream).permutation(pool.size)]
        for n in real_counts:
            real_clips = [(real.path, int(i)) for i in order[:n]]
            add(seed, "real", None, n, None, real_clips)
            for r in ratios:
                m = int(round(n * r))
                aug = [real_clips[j % n] for j in range(m)]
                sym = [1 + (j // n + int(offset[j % n])) % copies for j in range(m)]  # distinct copies per clip
                add(seed, "real+aug", None, n, r, real_clips + aug, [0] * n + sym, synthetic=m)
                for name in pools:
                    if name in gate_pools and n != max(real_counts):
                        continue
                    add(seed, "real+gen", name, n, r, real_clips + pool_order[name][:m], synthetic=m)
            for name in pools:
                if name in gate_pools and n != max(real_counts):
                    continue
                add(seed, "gen", name, n, None, pool_order[name][:n], synthetic=n)
        if "leak" in controls:
            add(seed, "leak", None, len(evaluation), None, [(p, int(i)) for p, i in evaluation])
        if "shuffled" in controls:
            n = max(real_counts)
            add(seed, "shuffled", None, n, None, [(real.path, int(i)) for i in order[:n]], shuffle=True)
    return runs


def position_prior(real: SceneStore, train_indices: np.ndarray, evaluation: SceneStore,
                   eval_indices: np.ndarray) -> dict:
    """Scores on the clips ``eval_indices`` of ``evaluation`` of the input-blind predictor, each voxel's most frequent
    class over the frames of ``train_indices`` of ``real``: what a network reaches without using its input (the
    ``shuffled`` control should land near it)."""
    from dcgen.data.torch_dataset import SceneDataset
    from dcgen.metrics.recon_iou import IoUAccumulator

    k = real.grid.num_classes
    counts_KXYZ = np.zeros((k, *real.grid.size), dtype=np.int64)
    train = SceneDataset(real.path, split=None, arrays=("occupancy",))
    for i in train_indices:
        occ_TXYZ = train[int(np.searchsorted(train.indices, i))]["occupancy"]
        for c in range(k):
            counts_KXYZ[c] += (occ_TXYZ == c).sum(axis=0)
    pred_XYZ = counts_KXYZ.argmax(axis=0)
    acc = IoUAccumulator(k)
    scored = SceneDataset(evaluation.path, split=None, arrays=_eval_arrays(evaluation))
    for i in eval_indices:
        clip = scored[int(np.searchsorted(scored.indices, i))]
        for t in range(clip["occupancy"].shape[0]):
            acc.update(pred_XYZ, clip["occupancy"][t], clip["mask"][t] if "mask" in clip else None)
    return {"miou": acc.miou(), "completion_iou": acc.binary_iou(), "train_clips": int(len(train_indices))}


# ---- execution --------------------------------------------------------------------------------------------------

def _eval_arrays(evaluation: SceneStore) -> tuple[str, ...]:
    return ("occupancy", "mask") if evaluation.has_mask else ("occupancy",)


def _execute_ray(cfg, evaluation: str, eval_split: str, eval_indices: np.ndarray, arrays: tuple[str, ...],
                 out: Path, *, workers: int, gpus_per_worker: float, address: str | None, verbose: bool) -> None:
    from dcgen.data.ray_dataset import read_scenes
    from dcgen.runtime import init_ray
    from dcgen.train import ray_trainer
    from dcgen.train.runs import Scaling, cpus_per_worker

    init_ray(address, quiet=not verbose)
    scaling = Scaling(workers=workers, gpus_per_worker=gpus_per_worker, address=address)
    result = ray_trainer.fit("dcgen.train.ssc_loop:train_ssc_runs", asdict(cfg),
                             datasets={"eval": read_scenes(evaluation, eval_split, arrays, indices=eval_indices)},
                             storage_path=str(out / "ray"), name="downstream", num_workers=workers,
                             progress="eval downstream" + (" (rank 0's runs)" if workers > 1 else ""),
                             gpus_per_worker=gpus_per_worker, cpus_per_worker=cpus_per_worker(scaling),
                             unsplit=("eval",))
    if result.error:
        raise RuntimeError(f"downstream benchmark training failed: {result.error}")


def _execute_local(cfg, evaluation: str, eval_split: str, eval_indices: np.ndarray, arrays: tuple[str, ...],
                   device: str | None) -> None:
    """The same loop in this process (``LocalContext``), the clips ``eval_indices`` of the evaluation split read
    through ``SceneDataset``."""
    from dcgen.data.torch_dataset import SceneDataset
    from dcgen.progress import Progress
    from dcgen.runtime import pick_device
    from dcgen.train.context import LocalContext
    from dcgen.train.ssc_loop import train_ssc_runs

    def eval_batches():
        ds = SceneDataset(evaluation, split=eval_split, arrays=arrays)
        for i in np.searchsorted(ds.indices, eval_indices):
            clip = ds[int(i)]
            yield {**{k: v[None] for k, v in clip.items()}, "index": ds.indices[i:i + 1]}

    with Progress("eval downstream") as bar:
        train_ssc_runs(LocalContext(splits={"eval": eval_batches}, device=pick_device(device), progress=bar),
                       asdict(cfg))


# ---- the benchmark ----------------------------------------------------------------------------------------------

def _check_out(out: Path, plan: dict, overwrite: bool) -> None:
    """A new benchmark directory, or the same plan again (finished runs are kept), or ``overwrite``."""
    import shutil

    plan_file = out / "plan.json"
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory; choose another --out")
    if plan_file.exists() and not overwrite:
        try:
            saved = json.loads(plan_file.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{plan_file}: unreadable ({e}); pass overwrite=True (--overwrite) to start over") from e
        if saved != json.loads(json.dumps(plan)):
            keys = sorted(k for k in set(saved) | set(plan) if saved.get(k) != json.loads(json.dumps(plan)).get(k))
            raise ValueError(f"{out}: holds a downstream benchmark with other settings ({', '.join(keys)} differ); "
                             "pass overwrite=True (--overwrite) to replace it, or another --out")
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise ValueError(f"{out}: exists and is not a downstream benchmark of these settings; pass "
                             "overwrite=True (--overwrite) to replace it, or another --out")
        if not (plan_file.exists() or (out / FILES["json"]).exists()):
            raise ValueError(f"{out}: exists and is not a downstream benchmark directory; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan, indent=2, sort_keys=True))


def run_downstream(real: str, synthetic: Sequence[str], out: str | Path, *, real_counts=None, ratios=None,
                   steps: int | None = None, batch_size: int | None = None, seeds=None, allow_overlap: bool = False,
                   gated_store: str | None = None, rejected_store: str | None = None, preset: str | None = None,
                   real_split: str = "train", eval_split: str = "val", eval_store: str | None = None,
                   eval_clips: int | None = None, controls: Sequence[str] = (),
                   lr: float = 5e-3, synthetic_share: float | None = None, workers: int = 1,
                   gpus_per_worker: float = 0.0, address: str | None = None,
                   backend: str = "ray", device: str | None = None, overwrite: bool = False, verbose: bool = False,
                   log: Callable[[str], None] = print) -> dict:
    """Run the downstream benchmark into ``out`` and return its report (also written as JSON, PNG and a table).

    ``real``: scene store of real clips (trained on from ``real_split``); every arm is scored on ``eval_split`` of
    ``eval_store`` (default ``real``; same grid and class table), only its first ``eval_clips`` clips in store order
    when given (default: all); ``synthetic``: generated scene stores; ``gated_store``: a ``dcgen synth`` output
    whose gated and ungated scenes are compared (``rejected_store`` defaults to its ``rejected``). Counts, ratios,
    steps, batch size and seeds default to the preset's (``DOWNSTREAM_DEFAULTS``; the preset is the real store's
    grid unless given). ``controls``: any of ``leak``, ``shuffled``. ``backend`` ``ray`` trains on Ray Train
    (``workers`` split the runs), ``local`` in this process. ``synthetic_share``: the share of every batch of the
    mixed arms (real+aug, real+gen) drawn from their added clips; None draws all their frames alike. Every input
    error is raised before anything is trained or written.
    """
    from dcgen.bench.downstream_report import (curves, format_table, gate_value, jsonable, plot_curves,
                                               step_bound_flags, targets)
    from dcgen.models.ssc_net import SSCNetConfig, ssc_preset
    from dcgen.runtime import rng
    from dcgen.train.ssc_loop import SSCTrainConfig, read_result

    t0 = time.perf_counter()
    # stores as Ray Train workers can open them: they do not start in this process's working directory
    real, synthetic = storage.resolve(real), [storage.resolve(path) for path in synthetic]
    eval_path = real if eval_store is None else storage.resolve(eval_store)
    gated_store = None if gated_store is None else storage.resolve(gated_store)
    rejected_store = None if rejected_store is None else storage.resolve(rejected_store)
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if workers < 1:
        raise ValueError(f"--workers {workers}: expected >= 1")
    controls = tuple(controls)
    bad = [c for c in controls if c not in CONTROLS]
    if bad or len(set(controls)) != len(controls):
        raise ValueError(f"--controls {list(controls)}: expected distinct values from {', '.join(CONTROLS)}")
    real_store = SceneStore.open(real)
    preset = preset or _preset_of(real_store)
    if preset not in DOWNSTREAM_DEFAULTS:
        raise ValueError(f"{real}: grid T={real_store.grid.num_frames} XYZ={list(real_store.grid.size)} matches no "
                         f"preset; pass --preset (one of {', '.join(DOWNSTREAM_DEFAULTS)}) to choose the network's "
                         "widths and the sweep's defaults" if preset is None else
                         f"unknown preset {preset!r}; expected one of {', '.join(DOWNSTREAM_DEFAULTS)}")
    d = DOWNSTREAM_DEFAULTS[preset]
    real_counts = sweep_ints("--real-counts", d["real_counts"] if real_counts is None else real_counts, 1)
    seeds = sweep_ints("--seeds", d["seeds"] if seeds is None else seeds, 0)
    ratios = sweep_ratios(d["ratios"] if ratios is None else ratios)
    steps = d["steps"] if steps is None else steps
    batch_size = d["batch_size"] if batch_size is None else batch_size
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"--steps {steps}: expected a positive number of optimizer steps per run")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"--batch-size {batch_size}: expected a positive number of samples per step")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"--lr {lr}: expected a positive learning rate")
    if synthetic_share is not None and not (isinstance(synthetic_share, (int, float))
                                            and not isinstance(synthetic_share, bool) and 0 < synthetic_share < 1):
        raise ValueError(f"--synthetic-share {synthetic_share}: expected the share of every mixed batch drawn from "
                         "the added clips, a number strictly between 0 and 1")
    model = SSCNetConfig.from_dict({**ssc_preset(preset).to_dict(), "size": list(real_store.grid.size),
                                    "num_classes": real_store.grid.num_classes})
    evaluation, eval_idx, split_size, eval_sums = evaluation_clips(real_store, real_split, eval_path, eval_split,
                                                                    eval_clips)
    eval_is_real, n_train, n_eval = evaluation is real_store, real_store.indices(real_split).size, int(eval_idx.size)
    if max(real_counts) > n_train:
        raise ValueError(f"--real-counts {list(real_counts)}: {real} has {n_train} clips in split {real_split!r}, "
                         f"expected counts <= {n_train}")
    if not synthetic and gated_store is None:
        raise ValueError("no generated data: pass one or more synthetic stores or a gated synth output")

    # the synthetic pools, each checked against the real store
    stores: dict[str, SceneStore] = {}
    pools: dict[str, Pool] = {}
    taken: set[str] = set()
    seen_paths: set[str] = set()
    for path in synthetic:
        key = storage.resolve(path)
        if key in seen_paths:
            raise ValueError(f"synthetic store {path} is listed twice")
        seen_paths.add(key)
        store = SceneStore.open(path)
        if (why := same_grid(real_store, store)) is not None:
            raise ValueError(why)
        name = _pool_name(path, taken)
        stores[name], pools[name] = store, whole_store_pool(name, store)
    gate_names: tuple[str, str] | None = None
    gate_note, rejected = None, None
    if gated_store is not None:
        from dcgen.generate.batch import rejected_path

        gated = SceneStore.open(gated_store)
        if (why := same_grid(real_store, gated)) is not None:
            raise ValueError(why)
        rej_path = rejected_store or rejected_path(gated_store)
        try:
            rejected = SceneStore.open(rej_path)
        except ValueError as e:
            raise ValueError(f"{rej_path}: the gated job's rejected store cannot be opened ({e}); pass "
                             "--rejected STORE") from None
        if (why := same_grid(real_store, rejected)) is not None:
            raise ValueError(why)
        gated_name = next((n for n, s in stores.items() if storage.resolve(s.path) == gated_store), None)
        if gated_name is None:
            gated_name = _pool_name("gated", taken)
            stores[gated_name], pools[gated_name] = gated, whole_store_pool(gated_name, gated)
        ungated = ungated_pool(_pool_name("ungated", taken), gated, rejected)
        if set(ungated.clips()) <= set(pools[gated_name].clips()):
            gate_note = (f"{gated_store}: the gates rejected no first attempt, so the gated and ungated scenes are the "
                         "same; there is no gate value to measure")
            taken.discard(ungated.name)
        else:
            stores[ungated.name], pools[ungated.name] = gated, ungated
            gate_names = (gated_name, ungated.name)
    need_mix = int(round(max(real_counts) * max(ratios)))
    for name, pool in pools.items():
        need = max(need_mix, max(real_counts))
        if pool.size < need:
            raise ValueError(f"{stores[name].path}: the synthetic pool {name!r} holds {pool.size} clips but real "
                             f"count {max(real_counts)} x ratio {max(ratios):g} needs {need}; lower --real-counts or "
                             "--ratios, or generate more")

    # overlap with the evaluation clips, then collapse
    overlap = {}
    for store in stores.values():
        if store.path not in overlap:
            overlap[store.path] = overlap_report(store, evaluation, eval_split, eval_sums)
    if gate_names is not None:
        rep = overlap_report(rejected, evaluation, eval_split, eval_sums)
        # the rejected store records no generator of its own: the job's provenance, checked above, covers it
        rep["problems"] = [p for p in rep["problems"] if "provenance names no generator" not in p]
        rep.update(kind="same job as " + gated.path, generator=None)
        overlap[rejected.path] = rep
    problems = [p for rep in overlap.values() for p in rep["problems"]]
    if problems and not allow_overlap:
        raise ValueError("the evaluation clips may not be held out from the generator:\n  " + "\n  ".join(problems)
                         + f"\nchoose another --eval-split of {eval_path} or another --eval store, or pass "
                         "allow_overlap=True (--allow-overlap) to run anyway (the report then says so)")
    real_div = diversity([(real_store.path, int(i)) for i in real_store.indices(real_split)])
    # on the largest real subset of the first seed, the shuffled control's clips
    chance = position_prior(real_store, rng(seeds[0], 0).permutation(real_store.indices(real_split))[
        :max(real_counts)], evaluation, eval_idx)
    collapse = {name: collapse_report(pool, real_div) for name, pool in pools.items()}

    runs = plan_runs(real_store, real_split, [(evaluation.path, int(i)) for i in eval_idx], pools,
                     real_counts=real_counts, ratios=ratios, seeds=seeds,
                     controls=controls, gate_pools=(gate_names[1],) if gate_names else (),
                     synthetic_share=None if synthetic_share is None else float(synthetic_share))
    out = Path(out).resolve()
    cfg = SSCTrainConfig(model=model.to_dict(), grid=real_store.grid.to_dict(), runs=tuple(asdict(r) for r in runs),
                         steps=int(steps), batch_size=int(batch_size), lr=float(lr), out_dir=str(out))
    plan = {"real": real_store.path, "real_split": real_split, "eval_split": eval_split,
            "synthetic": {n: [p for p, _ in pool.parts] for n, pool in pools.items()},
            "train": {k: v for k, v in asdict(cfg).items() if k != "out_dir"}}
    # only where they differ from the default, so a benchmark directory of the default settings stays valid
    if not eval_is_real:
        plan["eval"] = evaluation.path
    if n_eval < split_size:
        plan["eval_clips"] = n_eval
    _check_out(out, plan, overwrite)
    first = f" (the first {n_eval} of {split_size})" if n_eval < split_size else ""
    log(f"downstream: {len(runs)} runs of {steps} steps x batch {batch_size} ({preset} network) on {backend}; "
        f"real {real} ({n_train} {real_split} clips), scored on {n_eval} {eval_split} clips of {evaluation.path}"
        f"{first}; pools "
        + ", ".join(f"{n} ({p.size} clips)" for n, p in pools.items()))
    arrays = _eval_arrays(evaluation)
    t_train = time.perf_counter()
    if backend == "ray":
        _execute_ray(cfg, evaluation.path, eval_split, eval_idx, arrays, out, workers=workers,
                     gpus_per_worker=gpus_per_worker, address=address, verbose=verbose)
    else:
        _execute_local(cfg, evaluation.path, eval_split, eval_idx, arrays, device)
    train_seconds = time.perf_counter() - t_train
    results = []
    for r in runs:
        res = read_result(str(out), r.run_id)
        if res is None:
            raise RuntimeError(f"run {r.run_id} finished without a result in {out / 'runs'}")
        results.append(res)

    rows = curves(results)
    flags = []
    for name, c in collapse.items():
        if c["collapsed"]:
            flags.append(f"COLLAPSED: pool {name!r} has {c['distinct_clips']} distinct of {c['clips']} clips and "
                         f"diversity {c['diversity']:.3f} against real {real_div:.3f}: its rows measure a few scenes "
                         "repeated, not a generator's spread")
        elif c["distinct_clips"] < c["clips"]:
            flags.append(f"duplicates: pool {name!r} repeats clips ({c['distinct_clips']} distinct of {c['clips']})")
    if problems:
        flags.append("OVERLAP NOT RULED OUT, run with --allow-overlap: " + "; ".join(problems))
    flags += [w for rep in overlap.values() for w in rep["warnings"]]
    if len(seeds) < 2:
        flags.append("one seed only: no spread over seeds (the target asks for >= 2)")
    flags += step_bound_flags(rows)
    if gate_note:
        flags.append(gate_note)
    report = {
        "benchmark": "downstream-ssc", "preset": preset, "backend": backend,
        "real": {"path": real_store.path, "train_split": real_split, "train_clips": int(n_train),
                 "diversity": real_div},
        "eval": {"path": evaluation.path, "split": eval_split, "clips": n_eval, "split_clips": int(split_size),
                 "is_real": eval_is_real, "observed_mask": evaluation.has_mask},
        "chance": chance,
        "synthetic": {n: {"paths": [p for p, _ in pool.parts], **collapse[n]} for n, pool in pools.items()},
        "overlap": overlap, "allow_overlap": bool(allow_overlap),
        "config": {"real_counts": list(real_counts), "ratios": list(ratios), "seeds": list(seeds),
                   "steps": int(steps), "batch_size": int(batch_size), "lr": float(lr), "controls": list(controls),
                   "synthetic_share": None if synthetic_share is None else float(synthetic_share),
                   # the stores as given, so 'dcgen report' can show the command that made this report
                   "synthetic_stores": list(synthetic), "gated_store": gated_store, "rejected_store": rejected_store,
                   "model": model.to_dict(), "workers": workers, "frames_per_clip": real_store.grid.num_frames},
        "curves": rows,
        "targets": targets(rows, [n for n in pools if not gate_names or n != gate_names[1]], real_counts, ratios,
                           seeds),
        "gate_value": (gate_value(rows, *gate_names, max(real_counts), ratios) if gate_names
                       else {"note": gate_note} if gate_note else None),
        "flags": flags, "runs": results,
        "seconds": {"total": time.perf_counter() - t0, "training": train_seconds},
        "files": {k: str(out / v) for k, v in FILES.items()},
    }
    report = jsonable(report)
    table = format_table(report)
    report["table"] = table
    (out / FILES["table"]).write_text(table + "\n")
    plot_curves(report, out / FILES["png"])
    tmp = out / (FILES["json"] + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / FILES["json"])
    return report
