"""What the downstream benchmark checks before it trains anything: the sweep's numbers, that the stores can be
compared, which clips are scored, which clips each synthetic pool holds, whether a generator saw the evaluation
clips, and whether a pool is collapsed.

A *pool* is the set of clips one arm draws its generated data from: a whole store, or for the gate-value comparison
the first attempt of every scene of a ``dcgen synth`` job, which is what the job would have written without gates
(a scene's bytes depend on its seed and attempt only, so attempt 0 is the ungated scene) and which lies partly in
the job's store and partly in its ``rejected`` store.

Overlap: a generated store records its generator in ``attrs["dcgen"]["provenance"]`` (``dcgen synth``: the job's
VAE and DiT; ``dcgen sample``: ``vae`` and ``dit``); each checkpoint's metadata names the data it was trained on
(the VAE's scene store; the DiT's latent store, whose ``source`` is the scene store), always its ``train`` split,
with the best checkpoint chosen on ``val`` (``train/runs.py``). Clips are compared by content (the manifests'
CRC-32C of every clip's occupancy), so a copy of the training store at another path is still caught; where the
training store cannot be opened only its path is compared, and the check says it could not verify. Any clip of a
synthetic store identical to an evaluation clip is a leak too, whatever the provenance says.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from dcgen.data.integrity import CHECKSUM_PREFIX, clip_checksum
from dcgen.data.store import SceneStore
from dcgen.metrics.provenance import same_store

TRAIN_SPLIT, SELECTION_SPLIT = "train", "val"  # what train/runs.py fits generators on and picks their best by
PROCEDURAL = ("dcgen.data.synth_city",)  # generators with no training data
COLLAPSE_RATIO = 0.25  # a pool whose clips differ from each other this much less than real clips is collapsed
DIVERSITY_PAIRS = 32


@dataclass(frozen=True)
class Pool:
    """Named clips: ``(store path, sorted indices)`` per store."""

    name: str
    parts: tuple[tuple[str, tuple[int, ...]], ...]
    owner: str  # the store whose provenance describes the generator

    @property
    def size(self) -> int:
        return sum(len(i) for _, i in self.parts)

    def clips(self) -> list[tuple[str, int]]:
        return [(p, int(i)) for p, idx in self.parts for i in idx]


def sweep_ints(name: str, values, minimum: int) -> tuple[int, ...]:
    """Clip counts or seeds of a sweep: at least one, integers >= ``minimum``, none twice; sorted."""
    out = tuple(values)
    if not out:
        raise ValueError(f"{name}: expected at least one value")
    if any(isinstance(v, bool) or int(v) != v or v < minimum for v in out):
        raise ValueError(f"{name} {list(out)}: expected integers >= {minimum}")
    if len(set(out)) != len(out):
        raise ValueError(f"{name} {list(out)}: a value is listed twice")
    return tuple(sorted(int(v) for v in out))


def sweep_ratios(values) -> tuple[float, ...]:
    """Synthetic:real ratios of a sweep: at least one, positive and finite, none twice; sorted."""
    out = tuple(float(v) for v in values)
    if not out:
        raise ValueError("--ratios: expected at least one synthetic:real ratio")
    if any(not (math.isfinite(v) and v > 0) for v in out):
        raise ValueError(f"--ratios {list(out)}: expected positive numbers (synthetic clips per real clip)")
    if len(set(out)) != len(out):
        raise ValueError(f"--ratios {list(out)}: a ratio is listed twice")
    return tuple(sorted(out))


def same_grid(a: SceneStore, b: SceneStore) -> str | None:
    """Why clips of ``b`` cannot stand in for clips of ``a`` (grid or class table), or None."""
    ga, gb = a.grid, b.grid
    keys = ("num_frames", "size", "num_classes", "voxel_size", "z_min")
    diff = [f"{k} {getattr(gb, k)} vs {getattr(ga, k)}" for k in keys if getattr(ga, k) != getattr(gb, k)]
    if diff:
        return f"{b.path}: grid differs from the real store {a.path} ({'; '.join(diff)})"
    ca = [(c["id"], c["name"]) for c in a.meta.get("classes", [])]
    cb = [(c["id"], c["name"]) for c in b.meta.get("classes", [])]
    if ca != cb:
        return (f"{b.path}: class table {[n for _, n in cb]} differs from the real store's {[n for _, n in ca]} "
                f"({a.path})")
    return None


def checksums(store: SceneStore, split: str | None) -> dict[int, int]:
    """Clip index -> CRC-32C of its occupancy, from the manifest (read and computed for stores without one)."""
    table = store.manifest()
    idx = store.indices(split)
    column = CHECKSUM_PREFIX + "occupancy"
    if column in table.column_names:
        listed = dict(zip(table.column("index").to_pylist(), table.column(column).to_pylist()))
        return {int(i): int(listed[int(i)]) for i in idx}
    return {int(i): clip_checksum(store.read([int(i)], ("occupancy",))["occupancy"][0]) for i in idx}


def whole_store_pool(name: str, store: SceneStore) -> Pool:
    idx = store.indices()
    if idx.size == 0:
        raise ValueError(f"{store.path}: the synthetic store's manifest lists no complete clip; nothing to train on")
    return Pool(name, ((store.path, tuple(int(i) for i in idx)),), store.path)


def ungated_pool(name: str, gated: SceneStore, rejected: SceneStore) -> Pool:
    """Attempt 0 of every scene of a synth job: accepted first tries plus the first tries the gates rejected."""
    parts = []
    for store in (gated, rejected):
        table = store.manifest()
        if table.num_rows and "attempt" not in table.column_names:
            raise ValueError(f"{store.path}: its manifest has no 'attempt' column; expected the output (or the "
                             "rejected store) of a `dcgen synth` job")
        if table.num_rows:
            attempt = np.asarray(table.column("attempt").to_pylist())
            idx = table.column("index").to_numpy()[attempt == 0]
            if idx.size:
                parts.append((store.path, tuple(int(i) for i in np.sort(idx))))
    return Pool(name, tuple(parts), gated.path)


# ---- generator provenance and overlap ---------------------------------------------------------------------------

def evaluation_clips(real: SceneStore, real_split: str, eval_path: str, eval_split: str,
                     eval_clips: int | None) -> tuple[SceneStore, np.ndarray, int, dict[int, int]]:
    """The clips every arm is scored on: the store (``real`` itself when ``eval_path`` names it), the indices (the
    first ``eval_clips`` of ``eval_split`` in store order, so every run and seed scores the same ones; None: all),
    the split's size and the scored clips' checksums; or a ``ValueError`` naming what is wrong: the real arms' own
    split, another grid or class table, an empty split, a bad count, copies of the real training clips."""
    eval_is_real = same_store(eval_path, real.path)
    if eval_is_real and real_split == eval_split:
        raise ValueError(f"--real-split and --eval-split are both {eval_split!r}: the real arm would train on the "
                         "clips it is scored on")
    evaluation = real if eval_is_real else SceneStore.open(eval_path)
    if (why := same_grid(real, evaluation)) is not None:
        raise ValueError(f"--eval {why}")
    split_idx = evaluation.indices(eval_split)
    if split_idx.size == 0:
        raise ValueError(f"{eval_path}: split {eval_split!r} (the evaluation clips) has no complete clip")
    if eval_clips is not None and (isinstance(eval_clips, bool) or int(eval_clips) != eval_clips or eval_clips < 1):
        raise ValueError(f"--eval-clips {eval_clips}: expected a positive number of evaluation clips")
    if eval_clips is not None and eval_clips > split_idx.size:
        raise ValueError(f"--eval-clips {eval_clips}: {eval_path} has {split_idx.size} clips in split "
                         f"{eval_split!r}, expected <= {split_idx.size}")
    eval_idx = split_idx[:eval_clips]
    scored = set(eval_idx.tolist())
    eval_sums = {i: c for i, c in checksums(evaluation, eval_split).items() if i in scored}
    if not eval_is_real:  # a copy of the training clips elsewhere would score the real arm on what it trained on
        copies = set(eval_sums.values()) & set(checksums(real, real_split).values())
        if copies:
            raise ValueError(f"--eval {eval_path}: {len(copies)} of its {eval_idx.size} evaluation clips (split "
                             f"{eval_split!r}) are identical to clips of split {real_split!r} of {real.path}, which "
                             "the real arms train on; expected held-out clips")
    return evaluation, eval_idx, int(split_idx.size), eval_sums


def generator_training(store: SceneStore) -> dict:
    """What ``store``'s provenance says its generator was trained on: kind ``procedural`` (no training data),
    ``checkpoints`` (with the data of each, or the problem reading it) or ``unknown``."""
    from dcgen import checkpoint

    prov = store.meta.get("provenance") or {}
    generator = prov.get("generator")
    if generator in PROCEDURAL:
        return {"kind": "procedural", "generator": generator, "trained_on": []}
    if generator == "dcgen synth":
        job = prov.get("job") or {}
        ckpts = {"vae": job.get("vae"), "dit": job.get("dit")}
    elif generator == "dcgen sample":
        ckpts = {"vae": prov.get("vae"), "dit": prov.get("dit")}
    else:
        return {"kind": "unknown", "generator": generator, "trained_on": []}
    trained = []
    for role, path in ckpts.items():
        entry = {"checkpoint": path, "role": role, "store": None, "split": TRAIN_SPLIT,
                 "selected_on": SELECTION_SPLIT, "problem": None}
        try:
            if not path:
                raise ValueError(f"the provenance records no {role} checkpoint")
            if "://" not in str(path) and not os.path.isdir(str(path)):
                raise ValueError(f"the provenance records {path!r}, not a checkpoint directory here (a checkpoint "
                                 "id, or a path that moved), so what it trained on cannot be looked up")
            extra = (checkpoint.read_meta(path, kind=role).get("train") or {}).get("extra") or {}
            if role == "vae":
                entry["store"] = extra.get("data")
            else:
                from dcgen.data.latent_store import LatentStore

                latents = extra.get("latents")
                if not latents:
                    raise ValueError(f"{path}: the DiT checkpoint records no latent store")
                entry["latents"] = latents
                entry["store"] = LatentStore.open(latents, require_complete=False).meta.get("source")
            if not entry["store"]:
                raise ValueError(f"{path}: the {role} checkpoint records no training data")
        except ValueError as e:
            entry["problem"] = str(e)
        trained.append(entry)
    return {"kind": "checkpoints", "generator": generator, "trained_on": trained}


def overlap_report(pool_store: SceneStore, evaluation: SceneStore, eval_split: str,
                   eval_sums: dict[int, int]) -> dict:
    """How the evaluation clips (``eval_sums``, of split ``eval_split`` of the store ``evaluation``) relate to what
    ``pool_store``'s generator saw and to the store's own clips."""
    info = generator_training(pool_store)
    eval_set = set(eval_sums.values())
    problems, warnings = [], []
    if info["kind"] == "unknown":
        problems.append(f"{pool_store.path}: its provenance names no generator this benchmark knows (generator "
                        f"{info['generator']!r}), so it cannot tell whether the generator saw the evaluation clips")
    for entry in info["trained_on"]:
        if entry["problem"]:
            problems.append(f"{pool_store.path}: cannot check its {entry['role']} ({entry['problem']})")
            continue
        try:
            trained = SceneStore.open(entry["store"])
        except ValueError:
            trained = None
        if trained is None:
            entry["verified"] = "path"
            same = same_store(entry["store"], evaluation.path)
            entry["eval_clips_seen"] = None
            if same and eval_split == entry["split"]:
                problems.append(f"{pool_store.path}: its {entry['role']} {entry['checkpoint']} trained on split "
                                f"{entry['split']!r} of {entry['store']}, the evaluation clips")
            elif not same:
                problems.append(f"{pool_store.path}: its {entry['role']} trained on {entry['store']}, which cannot "
                                "be opened from here, so whether it holds the evaluation clips is unverified")
            continue
        entry["verified"] = "content"
        seen = eval_set & set(checksums(trained, entry["split"]).values())
        chosen = eval_set & set(checksums(trained, entry["selected_on"]).values())
        entry["eval_clips_seen"], entry["eval_clips_selected_on"] = len(seen), len(chosen)
        if seen:
            problems.append(f"{pool_store.path}: its {entry['role']} {entry['checkpoint']} trained on {len(seen)} of "
                            f"the {len(eval_set)} evaluation clips (split {entry['split']!r} of {entry['store']})")
        if chosen:
            warnings.append(f"{pool_store.path}: its {entry['role']} chose its best checkpoint on {len(chosen)} of the "
                            f"evaluation clips (split {entry['selected_on']!r} of {entry['store']}); a mild leak")
    identical = eval_set & set(checksums(pool_store, None).values())
    if identical:
        problems.append(f"{pool_store.path}: holds {len(identical)} clips identical to evaluation clips")
    return {**info, "store": pool_store.path, "identical_to_eval": len(identical), "problems": problems,
            "warnings": warnings}


# ---- collapse ---------------------------------------------------------------------------------------------------

def diversity(clips: list[tuple[str, int]], seed: int = 0, pairs: int = DIVERSITY_PAIRS) -> float:
    """Mean share of voxels whose class differs between two clips, over ``pairs`` random pairs of distinct clips
    (0 for identical scenes); NaN with fewer than two clips."""
    from dcgen.data.torch_dataset import SceneDataset

    if len(clips) < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    datasets: dict[str, SceneDataset] = {}

    def occ(k: int) -> np.ndarray:
        path, index = clips[k]
        if path not in datasets:
            datasets[path] = SceneDataset(path, split=None, arrays=("occupancy",))
        ds = datasets[path]
        return ds[int(np.searchsorted(ds.indices, index))]["occupancy"]

    shares = []
    for _ in range(pairs):
        a, b = rng.choice(len(clips), size=2, replace=False)
        shares.append(float(np.mean(occ(int(a)) != occ(int(b)))))
    return float(np.mean(shares))


def collapse_report(pool: Pool, real_diversity: float) -> dict:
    """Distinct clips (by checksum) and diversity of a pool against the real clips'; ``collapsed`` when the pool's
    clips differ from each other less than ``COLLAPSE_RATIO`` times as much as real clips do."""
    sums = []
    for path, idx in pool.parts:
        by_index = checksums(SceneStore.open(path), None)
        sums += [by_index[i] for i in idx]
    distinct = len(set(sums))
    div = diversity(pool.clips())
    collapsed = bool((pool.size > 1 and distinct == 1) or (np.isfinite(div) and real_diversity > 0
                                       and div < COLLAPSE_RATIO * real_diversity))
    return {"clips": pool.size, "distinct_clips": distinct, "diversity": div, "real_diversity": real_diversity,
            "collapsed": collapsed}
