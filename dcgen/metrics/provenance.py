"""What a scene store says about how its clips were made, and what the models behind them trained on, for the
fidelity report (issue 23): read from the stores and checkpoints as any downstream user would.

- ``generation_origin``: per clip, whether it was generated from pure noise. ``dcgen sample`` and ``dcgen synth``
  list each clip's model conditions and edits in the manifest's ``conditions`` column; a scene whose first clip
  lists ``prev_clip``, ``inpaint`` or ``outpaint`` started from encoded ground truth (a stored clip continued,
  repainted or shifted), so all of its clips measure reconstruction, not generation. A later clip of a scene
  whose first clip is in the store continues that generated clip: it is generated. Without a ``conditions`` column
  the store cannot tell.
- ``generator_training_data``: the DiT checkpoint named by the provenance (``job.dit`` of ``dcgen synth``, ``dit``
  of ``dcgen sample``) -> its training config's latent store -> that store's source scene store and the clips of
  its train split, the only ones the DiT loop reads.
- ``vae_training_store``: the scene store a VAE's training config names (its train split is what it saw).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

SEEDING_CONDITIONS = ("prev_clip", "inpaint", "outpaint")  # the sample starts from encoded ground truth
GENERATED_SOURCES = ("dcgen-sample", "dcgen-synth")
CHECKPOINT_ID = re.compile(r"dit-\d+-[0-9a-f]{12}")  # train.checkpoint.checkpoint_id of a DiT


def generation_origin(store) -> dict:
    """How the complete clips of a store were made, from its manifest: ``{"indices", "pure" (bool per clip),
    "known", "seeded" {condition: clips}, "continued" (generated clips continuing their scene's generated clip),
    "conditioned" {condition: generated clips}, "source", "statement"}``."""
    table = store.manifest()
    idx = table.column("index").to_numpy().astype(np.int64)
    source = store.meta.get("source")
    if "conditions" not in table.column_names:
        return {"indices": idx, "pure": np.ones(idx.size, bool), "known": False, "seeded": {}, "continued": 0,
                "conditioned": {}, "source": source,
                "statement": f"the manifest does not say how its clips were made (source {source!r}, no "
                             "'conditions' column): they are scored as given, not confirmed as generated from "
                             "pure noise"}
    conds = [set(filter(None, (c or "").split(","))) for c in table.column("conditions").to_pylist()]
    scenes = table.column("scene").to_pylist()
    starts = table.column("frame_start").to_numpy()
    first: dict[str, int] = {}  # the scene's first clip decides how the scene began
    for k, (s, f) in enumerate(zip(scenes, starts)):
        if s is not None and (s not in first or f < starts[first[s]]):
            first[s] = k
    seeded_by = [sorted(conds[first.get(s, k) if s is not None else k] & set(SEEDING_CONDITIONS))
                 for k, s in enumerate(scenes)]
    pure = np.array([not by for by in seeded_by], bool)
    seeded = {c: n for c in SEEDING_CONDITIONS if (n := sum(c in by for by in seeded_by))}
    conditioned: dict[str, int] = {}
    continued = 0
    for k in np.flatnonzero(pure):
        continued += "prev_clip" in conds[k]
        for c in conds[k] - set(SEEDING_CONDITIONS):
            conditioned[c] = conditioned.get(c, 0) + 1
    num_seeded = int((~pure).sum())
    if num_seeded:
        what = ", ".join(f"{c} {n}" for c, n in seeded.items())
        statement = (f"{num_seeded} of {idx.size} clips were seeded from encoded ground truth ({what}) and are left "
                     "out: scored, they would measure reconstruction, not generation")
    else:
        statement = f"all {idx.size} clips were generated from pure noise"
    if continued:
        statement += f"; {continued} generated clips continue a generated clip of their scene (chained)"
    if conditioned:
        statement += "; conditions of the generated clips: " + ", ".join(
            f"{c} {n}" for c, n in sorted(conditioned.items()))
    return {"indices": idx, "pure": pure, "known": True, "seeded": seeded, "continued": continued,
            "conditioned": conditioned, "source": source, "statement": statement}


def trajectory_origins(store) -> dict[int, str]:
    """Clip index -> the manifest's ``trajectory_origin`` (requested | estimated | none); empty when the store
    records none (an imported store: its trajectories come from recorded poses)."""
    table = store.manifest()
    if "trajectory_origin" not in table.column_names:
        return {}
    return dict(zip(table.column("index").to_pylist(), table.column("trajectory_origin").to_pylist()))


def same_store(a: str, b: str) -> bool:
    """Whether two paths name one store: ``storage.resolve``'s comparison (local paths resolved, symlinks too;
    URIs as written), a URI's trailing slash aside."""
    from dcgen import storage

    return storage.resolve(a).rstrip("/") == storage.resolve(b).rstrip("/")


def train_extra(path: str, meta: dict) -> dict:
    """The ``extra`` of a checkpoint's training config: from its metadata, else its run directory's run.json."""
    extra = (meta.get("train") or {}).get("extra") or {}
    run_file = Path(str(path)).parent / "run.json"
    if not extra and run_file.is_file():
        try:
            extra = json.loads(run_file.read_text())["run"].get("extra") or {}
        except (OSError, ValueError, KeyError, AttributeError):  # an unreadable run.json records nothing usable
            extra = {}
    return extra


def generator_training_data(provenance: dict) -> dict:
    """The scene store and clips the DiT of a generated store trained on: ``{"dit", "latents", "store", "split":
    "train", "clip_indices"}``, or ``{"dit", "unknown": why it cannot be told}``."""
    from dcgen import checkpoint
    from dcgen.data.latent_store import LatentStore

    job = provenance.get("job") if isinstance(provenance.get("job"), dict) else {}
    dit = job.get("dit") or provenance.get("dit")
    if not dit:
        return {"dit": None, "unknown": "the fake store's provenance names no DiT checkpoint"}
    if CHECKPOINT_ID.fullmatch(str(dit)) and not Path(str(dit)).exists():
        return {"dit": dit, "unknown": f"its provenance records the DiT's checkpoint id {dit!r}, not where the "
                                       "checkpoint is ('dcgen sample' stores do)"}
    try:
        meta = checkpoint.read_meta(dit, kind="dit")
    except ValueError as e:
        return {"dit": dit, "unknown": f"its provenance's DiT {dit!r} is not a readable DiT checkpoint here ({e})"}
    latents = train_extra(dit, meta).get("latents")
    if not latents:
        return {"dit": dit, "unknown": f"the DiT checkpoint {dit} does not record its latent store"}
    try:
        lat = LatentStore.open(latents, require_complete=False)
        clip_indices = lat.read(lat.rows("train"), ("clip_index",))["clip_index"].astype(np.int64)
    except ValueError as e:
        return {"dit": dit, "latents": latents, "unknown": f"its latent store is unreadable ({e})"}
    return {"dit": dit, "latents": latents, "store": lat.meta.get("source"), "split": "train",
            "clip_indices": clip_indices}


def overlap_warning(trained: dict, real: str, real_split: str | None, scored: np.ndarray) -> str | None:
    """A loud warning when clips ``scored`` of the store ``real`` are among those the generator trained on."""
    if "unknown" in trained or not trained.get("store") or not same_store(trained["store"], real):
        return None
    hit = np.intersect1d(trained["clip_indices"], scored)
    if not hit.size:
        return None
    return (f"OVERLAP: {hit.size} of the {scored.size} real clips scored ({real} split {real_split or 'all'}) are "
            f"clips the generator's DiT {trained['dit']} trained on (via latents {trained['latents']}): these numbers "
            f"flatter the model; evaluate against a held-out split, e.g. --real {real}:val")


def vae_training_store(vae: str, meta: dict) -> str | None:
    """The scene store a VAE checkpoint's training config names (it trained on that store's train split)."""
    return train_extra(vae, meta).get("data")
