"""``dcgen eval fidelity`` (issue 23): one report of how generated clips differ from real ones, each number beside
what real data scores against itself at the same sample count.

Protocol. The real clips of the chosen split are cut into two disjoint halves, A and B, by scene: scenes in a
seeded random order, each to the half holding fewer clips, so consecutive clips of one drive never sit on both
sides (they would make real-vs-real look better than it is). A is the reference. With N = min(|A|, |B|, generated
clips made from pure noise, ``max_clips``), every row sets N clips against the same first N clips of A:

- real-vs-real: the first N clips of B, what a perfect generator scores with N samples (each metric's floor at N);
- generated: the first N generated clips (store order) made from pure noise;
- reconstruction (with a VAE): the VAE's reconstructions of those N clips of B, the ceiling of a generator that
  decodes with this VAE.

Each row gets the feature metrics of ``gen_eval.compare_features`` (2D and 3D IS, FID, KID, k-NN and Gaussian
precision/recall), with the ratio row / real-vs-real for each (None where the real-vs-real value is not positive:
an unbiased KID of two samples of one distribution can come out <= 0), and the object statistics of
``object_stats.compare`` against A. With N at most the feature width (N clips in 3D, N x views images in 2D) the
covariances are rank-deficient and FID is rough: a warning says so.

Pure noise only (``provenance.py`` reads it from the stores). A scene whose first clip was seeded from encoded
ground truth (a previous clip read from a store, inpainting or outpainting) measures reconstruction, not
generation: it is left out and counted; chained continuations of a noise-born scene count as generated. A store
whose manifest does not say how its clips were made is scored as given, with a warning. Where the generator's DiT
checkpoint can be followed to the clips it trained on, real clips among them raise a loud warning: those numbers
flatter the model. Clips whose trajectory is unknown (``trajectory_origin`` "none") contribute no static
consistency, and their persistence is not ego-compensated, unless ``estimate_trajectories`` searches one
(``ego_motion.estimate_trajectory``).
Legend: N clips.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from dcgen.data.classes import CLASS_IDS, CLASS_NAMES
from dcgen.metrics.fidelity_table import ROWS, format_table  # noqa: F401  (format_table: the report's own table)
from dcgen.metrics.object_stats import SetStats, clip_stats, compare
from dcgen.metrics.provenance import (GENERATED_SOURCES, generation_origin, generator_training_data, overlap_warning,
                                      same_store, trajectory_origins, vae_training_store)

SPLITS = ("train", "val", "test")
RATIO_METRICS = ("fid", "kid_mean", "precision", "recall", "gaussian_precision", "gaussian_recall", "is_mean")
PLOT_CLASSES = ("vehicle", "pedestrian", "bicycle", "pole", "barrier", "other")  # movers and thin objects
REPORT_JSON, REPORT_PNG = "report.json", "report.png"
PURE_NOISE = ("scores only clips generated from pure noise: scenes seeded from encoded ground truth (previous clip "
              "from a store, inpainting, outpainting) are reconstructions, not generations, and are left out")
PROTOCOL = ("real clips split by scene into halves A (reference) and B; every row compares N clips with the same "
            "first N clips of A: real-vs-real = N clips of B, generated = the first N clips generated from pure "
            "noise, reconstruction = the VAE's reconstructions of the N clips of B; ratio = row / real-vs-real")


def parse_store_split(spec: str) -> tuple[str, str | None]:
    """``STORE[:split]`` as ``(store, split)``; no split or ``all`` gives None (every complete clip)."""
    head, sep, tail = str(spec).rpartition(":")
    if not sep or not head or "/" in tail:  # no suffix, or the ':' of a URI scheme
        return str(spec), None
    if tail not in (*SPLITS, "all"):
        raise ValueError(f"{spec}: split {tail!r} is not one of {', '.join(SPLITS)}, all (expected STORE[:split])")
    return head, None if tail == "all" else tail


def real_halves(store, split: str | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clip indices of two disjoint halves (A, B) of ``split`` (None: every complete clip), whole scenes on one
    side each: scenes in the order ``seed`` draws, each to the half with fewer clips. Clips of a scene keep their
    order; a clip with no scene name counts as a scene of its own."""
    table = store.manifest()
    idx = table.column("index").to_numpy().astype(np.int64)
    scenes = table.column("scene").to_pylist()
    if split is not None:
        keep = np.asarray(table.column("split").to_pylist(), dtype=object) == split
        idx, scenes = idx[keep], [s for s, k in zip(scenes, keep) if k]
    groups: dict[str, list[int]] = {}
    for i, s in zip(idx.tolist(), scenes):
        groups.setdefault(s if s is not None else f"clip-{i}", []).append(i)
    if len(groups) < 2:
        raise ValueError(f"{store.path}: {'split ' + repr(split) if split else 'the store'} holds {idx.size} clips "
                         f"of {len(groups)} scene(s); two halves of whole scenes need at least two scenes")
    names = list(groups)
    halves: tuple[list[int], list[int]] = ([], [])
    for k in np.random.default_rng(seed).permutation(len(names)):
        halves[0 if len(halves[0]) <= len(halves[1]) else 1].extend(groups[names[k]])
    return np.asarray(halves[0], np.int64), np.asarray(halves[1], np.int64)


# ---- measuring ---------------------------------------------------------------------------------------------------

@dataclass
class MeasuredSet:
    """Features and object statistics of one set of clips, and where their trajectories came from."""

    parts: list = field(default_factory=list)  # ClipFeatures of each batch
    stats: SetStats = field(default_factory=SetStats)
    trajectories: dict[str, int] = field(default_factory=dict)

    @property
    def features(self):
        from dcgen.metrics.extract import ClipFeatures

        return ClipFeatures.concat(self.parts)

    def add(self, nets, occ_NTXYZ: np.ndarray, traj_NT3: list, origins: list[str], voxel_size, names: list[str],
            batch_size: int) -> None:
        from dcgen.metrics.extract import extract_features

        self.parts.append(extract_features(nets, occ_NTXYZ, batch_size))
        for occ_TXYZ, traj_T3, origin, name in zip(occ_NTXYZ, traj_NT3, origins, names):
            self.stats.add(clip_stats(occ_TXYZ, traj_T3, voxel_size, what=name))
            self.trajectories[origin] = self.trajectories.get(origin, 0) + 1


def _batches(indices: np.ndarray, batch_size: int):
    """Sorted ``indices`` in chunks of at most ``batch_size``: a slice where a chunk is contiguous (the fast read)."""
    idx = np.sort(indices)
    for a in range(0, idx.size, batch_size):
        chunk = idx[a:a + batch_size]
        contiguous = chunk[-1] - chunk[0] + 1 == chunk.size
        yield chunk, slice(int(chunk[0]), int(chunk[-1]) + 1) if contiguous else chunk


def measure(store, indices: np.ndarray, nets, *, batch_size: int = 8, estimate_trajectories: bool = False,
            vae=None, name: str = "measure") -> tuple[MeasuredSet, MeasuredSet | None]:
    """Features and object statistics of the clips ``indices`` of ``store`` and, given a VAE model, of its
    reconstructions of them (posterior mean, the clips' own trajectories); progress on stderr as ``name``."""
    import torch

    from dcgen.metrics.ego_motion import estimate_trajectory
    from dcgen.metrics.recon_eval import reconstruct
    from dcgen.progress import Progress

    origins = trajectory_origins(store)
    vs = store.grid.voxel_size
    clips, recon = MeasuredSet(), MeasuredSet() if vae is not None else None
    with Progress(name, total=len(indices), unit="clip") as bar:
        for chunk, selection in _batches(np.asarray(indices, np.int64), batch_size):
            batch = store.read(selection, ("occupancy", "trajectory"))
            occ_NTXYZ, traj_NT3 = batch["occupancy"], batch["trajectory"]
            names = [f"{store.path} clip {int(i)}" for i in chunk]
            trajs, kinds = [], []
            for k, i in enumerate(chunk):
                origin = origins.get(int(i), "recorded")
                if origin != "none":
                    trajs.append(traj_NT3[k])
                    kinds.append(origin)
                elif estimate_trajectories:
                    trajs.append(estimate_trajectory(occ_NTXYZ[k], store.grid))
                    kinds.append("estimated here")
                else:
                    trajs.append(None)
                    kinds.append("none")
            clips.add(nets, occ_NTXYZ, trajs, kinds, vs, names, batch_size)
            if recon is not None:
                device = next(vae.parameters()).device
                rec_NTXYZ = reconstruct(vae, torch.from_numpy(occ_NTXYZ.astype(np.int64)).to(device),
                                        trajectory=torch.from_numpy(np.ascontiguousarray(traj_NT3)).to(device))
                recon.add(nets, rec_NTXYZ.cpu().numpy().astype(np.uint8), list(traj_NT3), ["recorded"] * len(chunk), vs,
                          [f"reconstruction of {n}" for n in names], batch_size)
            bar.update(advance=len(chunk))
    return clips, recon


# ---- the report --------------------------------------------------------------------------------------------------

def _grid_facts(grid) -> str:
    return f"T={grid.num_frames} XYZ={list(grid.size)} voxel {list(grid.voxel_size)} m K={grid.num_classes}"


def _check_grids(real_store, fake_store, nets, features: str) -> None:
    r, f = real_store.grid, fake_store.grid
    if (r.num_frames, tuple(r.size), tuple(r.voxel_size), r.num_classes) != \
            (f.num_frames, tuple(f.size), tuple(f.voxel_size), f.num_classes):
        raise ValueError(f"--real {real_store.path} holds clips of grid {_grid_facts(r)} but --fake "
                         f"{fake_store.path} of {_grid_facts(f)}; expected one grid (component sizes are in voxels)")
    g = nets.grid
    if (g.num_frames, tuple(g.size)) != (r.num_frames, tuple(r.size)) or r.num_classes > g.num_classes:
        raise ValueError(f"--features {features}: the feature networks read clips of grid T={g.num_frames} "
                         f"XYZ={list(g.size)} K={g.num_classes}, but the stores hold {_grid_facts(r)}; use a "
                         "features checkpoint trained on this grid")


def _ratio(value, floor) -> float | None:
    if value is None or floor is None or not np.isfinite(floor) or floor <= 0:
        return None
    return float(value) / float(floor)


def _metric_table(feature_metrics: dict) -> dict:
    """``{space: {metric: {row: value, row + "_ratio": value / real-vs-real}}}``."""
    out: dict = {}
    for space in ("2d", "3d"):
        out[space] = {}
        for m in RATIO_METRICS:
            floor = feature_metrics["real_vs_real"][space].get(m)
            entry = {"real_vs_real": floor}
            for row in ROWS[1:]:
                if row in feature_metrics:
                    value = feature_metrics[row][space].get(m)
                    entry[row] = value
                    entry[f"{row}_ratio"] = _ratio(value, floor)
            out[space][m] = entry
    return out


def _class_mix(stats: SetStats) -> dict[str, float]:
    occupied = int(stats.class_voxels_K[1:].sum())
    return {CLASS_NAMES[c]: (int(stats.class_voxels_K[c]) / occupied if occupied else 0.0)
            for c in range(1, len(stats.class_voxels_K))}


def _json_ready(node):
    if isinstance(node, dict):
        return {k: _json_ready(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_json_ready(v) for v in node]
    if isinstance(node, np.ndarray):
        return node.tolist()
    if isinstance(node, np.generic):
        return node.item()
    if isinstance(node, float) and not np.isfinite(node):
        return None
    return node


def _select(real_store, fake_store, real_split: str | None, max_clips: int | None, seed: int) -> dict:
    """The clips of each row (see the module docstring), or a ValueError when fewer than ``MIN_CLIPS`` remain."""
    from dcgen.metrics.reference import MIN_CLIPS

    half_a, half_b = real_halves(real_store, real_split, seed)
    origin = generation_origin(fake_store)
    pure = origin["indices"][origin["pure"]]
    if pure.size == 0:
        raise ValueError(f"--fake {fake_store.path}: {origin['statement']}; no clip is left that was generated from "
                         "pure noise (generate without --prev-from, inpainting or outpainting to score generation)")
    n = min(half_a.size, half_b.size, pure.size, max_clips or pure.size)
    if n < MIN_CLIPS:
        cap = f", --max-clips {max_clips}" if max_clips is not None else ""
        raise ValueError(f"N = {n} clips per set (real halves {half_a.size} and {half_b.size} clips of "
                         f"{real_store.path} split {real_split or 'all'}, {pure.size} generated from pure noise in "
                         f"{fake_store.path}{cap}); at least {MIN_CLIPS} are needed (covariances and the k-NN "
                         "precision/recall with k = 3)")
    return {"n": n, "halves": (half_a.size, half_b.size), "origin": origin, "pure": pure,
            "reference": half_a[:n], "real_vs_real": half_b[:n], "generated": pure[:n]}


def _input_warnings(real: str, real_split: str | None, fake: str, real_store, fake_store, chosen: dict,
                    vae: str | None, vae_meta: dict | None) -> tuple[list[str], list[str], dict | None]:
    """``(warnings, notes, generator training data)`` about what the inputs are (everything but sample counts)."""
    warnings: list[str] = []
    notes: list[str] = []
    origin = chosen["origin"]
    if not origin["known"] or not origin["pure"].all():
        warnings.append(f"--fake {fake}: {origin['statement']}")
    if same_store(real, fake):
        warnings.append(f"--fake {fake} is the --real store itself: its clips are real, and may be the very clips "
                        "of the reference half")
    if real_store.meta.get("source") in GENERATED_SOURCES:
        warnings.append(f"--real {real}: holds generated clips (source {real_store.meta.get('source')!r}), not real "
                        "data")
    trained = None
    if origin["known"] or fake_store.meta.get("source") in GENERATED_SOURCES:
        trained = generator_training_data(fake_store.meta.get("provenance") or {})
        scored = np.union1d(chosen["reference"], chosen["real_vs_real"])
        overlap = overlap_warning(trained, real, real_split, scored)
        if overlap:
            warnings.append(overlap)
        elif "unknown" in trained:
            warnings.append(f"cannot tell whether the generator trained on these real clips: {trained['unknown']}")
    if vae is not None:
        vae_data = vae_training_store(vae, vae_meta or {})
        if vae_data is None:
            notes.append(f"the VAE {vae} does not record its training store: cannot tell whether it trained on the "
                         "reconstructed clips")
        elif same_store(vae_data, real):
            table = real_store.manifest()
            split_of = dict(zip(table.column("index").to_pylist(), table.column("split").to_pylist()))
            seen = int(sum(split_of.get(int(i)) == "train" for i in chosen["real_vs_real"]))
            if seen:
                warnings.append(f"the reconstruction row reconstructs {seen} of {chosen['n']} clips the VAE {vae} "
                                "trained on: the ceiling is optimistic")
    return warnings, notes, trained


def fidelity_report(real: str, fake: str, features: str, *, real_split: str | None = None, vae: str | None = None,
                    out: str | Path | None = None, max_clips: int | None = None, device: str = "auto", seed: int = 0,
                    batch_size: int = 8, estimate_trajectories: bool = False, kid_subsets: int = 100,
                    log: Callable[[str], None] | None = None) -> dict:
    """The fidelity report of the generated store ``fake`` against the real store ``real`` (one split, or every
    complete clip), under the features checkpoint ``features`` and, given ``vae``, with its reconstruction
    ceiling. Writes ``OUT/report.json`` and ``OUT/report.png`` when ``out`` is given (only once everything is
    measured). Returns the JSON-able report (see ``format_table``)."""
    from dcgen.data.store import SceneStore
    from dcgen.metrics.feature_nets import load_feature_nets
    from dcgen.metrics.gen_eval import compare_features
    from dcgen.metrics.generation import GenerationMetricsConfig
    from dcgen.runtime import pick_device

    t0 = time.perf_counter()
    if max_clips is not None and (int(max_clips) != max_clips or max_clips < 1):
        raise ValueError(f"max_clips {max_clips!r}: expected a positive integer (or None for all)")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size {batch_size!r}: expected a positive integer")
    if real_split is not None and real_split not in SPLITS:
        raise ValueError(f"real split {real_split!r} is not one of {', '.join(SPLITS)} (None for every clip)")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out}: exists and is not a directory; expected a directory for {REPORT_JSON} and "
                         f"{REPORT_PNG}")
    real_store, fake_store = SceneStore.open(real), SceneStore.open(fake)
    dev = pick_device(device)
    loaded = load_feature_nets(features, dev)
    nets = loaded.nets
    _check_grids(real_store, fake_store, nets, features)
    vae_loaded = None
    if vae is not None:
        from dcgen.models.loading import load_vae

        vae_loaded = load_vae(vae, dev)
        c, r = vae_loaded.model.config, real_store.grid
        if tuple(c.shape) != tuple(r.shape) or r.num_classes > c.num_classes:
            raise ValueError(f"--vae {vae}: the VAE reads clips of grid T={c.num_frames} XYZ={list(c.size)} "
                             f"K={c.num_classes}, but the stores hold {_grid_facts(r)}; use a VAE trained on this "
                             "grid")
    chosen = _select(real_store, fake_store, real_split, max_clips, seed)
    n, views = chosen["n"], loaded.config.views_per_clip
    dims = {"2d": int(nets.dims[0]), "3d": int(nets.dims[1])}
    warnings = [f"{space.upper()}: N = {samples} samples for {dims[space]} features: FID with N at or below the "
                "feature width is rough (rank-deficient covariances); compare ratios, not values, or score more clips"
                for space, samples in (("2d", n * views), ("3d", n)) if samples <= dims[space]]
    more, notes, trained = _input_warnings(real, real_split, fake, real_store, fake_store, chosen, vae,
                                           vae_loaded.meta if vae_loaded else None)
    warnings += more

    if log is not None:
        log(f"measuring N = {n} clips per set: real A (reference), real B, generated"
            + (", reconstruction" if vae_loaded else ""))
    ref, _ = measure(real_store, chosen["reference"], nets, batch_size=batch_size, name="fidelity: real A")
    cmp_set, rec_set = measure(real_store, chosen["real_vs_real"], nets, batch_size=batch_size,
                               vae=vae_loaded.model if vae_loaded else None, name="fidelity: real B")
    gen_set, _ = measure(fake_store, chosen["generated"], nets, batch_size=batch_size,
                         estimate_trajectories=estimate_trajectories, name="fidelity: generated")
    sets = {"real_vs_real": cmp_set, "generated": gen_set, **({"reconstruction": rec_set} if rec_set else {})}
    config = GenerationMetricsConfig(kid_subsets=kid_subsets, seed=seed)
    if n * views <= config.kid_subset_size:
        # both sides hold N (3D) or N x views (2D) rows, so a KID subset of min(size, N) rows is the whole set in
        # either space: every subset gives the same value, one suffices
        config = GenerationMetricsConfig(kid_subsets=1, seed=seed)
    ref_features = ref.features
    feature_metrics = {row: compare_features(ref_features, s.features, config) for row, s in sets.items()}
    missing = gen_set.trajectories.get("none", 0)
    if missing:
        notes.append(f"{missing} of {n} generated clips have no trajectory (trajectory_origin 'none'): their static "
                     "consistency is not measured and their persistence is not ego-compensated (pass "
                     "estimate_trajectories / --estimate-trajectories to search one)")

    origin = chosen["origin"]
    report = _json_ready({
        "kind": "dcgen-fidelity-report",
        "generation": PURE_NOISE,
        "protocol": PROTOCOL,
        "num_clips": n,
        "num_images": n * views,
        "real": {"path": str(real), "split": real_split, "source": real_store.meta.get("source"),
                 "halves": dict(zip("ab", chosen["halves"])), "split_by": "scene",
                 "reference_clips": chosen["reference"], "real_vs_real_clips": chosen["real_vs_real"]},
        "fake": {"path": str(fake), "source": origin["source"], "num_clips": origin["indices"].size,
                 "pure_noise_clips": chosen["pure"].size, "scored_clips": chosen["generated"],
                 "provenance_known": origin["known"], "seeded_from_ground_truth": origin["seeded"],
                 "continued": origin["continued"], "conditioned": origin["conditioned"],
                 "origin": origin["statement"], "generator": (fake_store.meta.get("provenance") or {}).get("generator"),
                 "generator_training_data": None if trained is None else
                 {k: v for k, v in trained.items() if k != "clip_indices"}},
        "features": {"path": str(features), "checkpoint_id": loaded.checkpoint_id,
                     "image_kind": loaded.config.image_kind, "dims": dims, "views_per_clip": views},
        "vae": None if vae_loaded is None else {"path": str(vae), "checkpoint_id": vae_loaded.checkpoint_id},
        "metrics": _metric_table(feature_metrics),
        "feature_metrics": feature_metrics,
        "objects": {row: compare(ref.stats, s.stats) for row, s in sets.items()},
        "trajectories": {row: s.trajectories for row, s in {"reference": ref, **sets}.items()},
        "config": {**asdict(config), "seed": seed, "max_clips": max_clips, "batch_size": batch_size,
                   "estimate_trajectories": estimate_trajectories},
        "warnings": warnings,
        "notes": notes,
        "device": str(dev),
        "files": {},
        "seconds": 0.0,
    })
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        report["files"] = {"json": str(out / REPORT_JSON), "png": str(_draw(out / REPORT_PNG, ref.stats, sets,
                                                                              report))}
    report["seconds"] = time.perf_counter() - t0
    if out is not None:
        tmp = out / f".{REPORT_JSON}.tmp"
        tmp.write_text(json.dumps(report, indent=2, allow_nan=False))
        os.replace(tmp, out / REPORT_JSON)  # a reader never sees half a report
    return report


def _draw(path: Path, reference: SetStats, sets: dict[str, MeasuredSet], report: dict) -> Path:
    from dcgen.render.histograms import object_histograms

    series = {"real (A)": reference, "generated": sets["generated"].stats}
    if "reconstruction" in sets:
        series["reconstruction"] = sets["reconstruction"].stats
    sizes = {name: {label: s.component_sizes(CLASS_IDS[name]) for label, s in series.items()}
             for name in PLOT_CLASSES if any(s.component_sizes(CLASS_IDS[name]).size for s in series.values())}
    mix = {label: _class_mix(s) for label, s in series.items()}
    title = (f"{report['fake']['path']} vs {report['real']['path']} ({report['real']['split'] or 'all'}), "
             f"N = {report['num_clips']} clips per set")
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    object_histograms(tmp, sizes, mix, title)
    os.replace(tmp, path)
    return path
