"""One block of a ``dcgen synth`` job (issue 6; SPEC §3 conditions): its condition rows, the ``SceneRequest``s made
from them, and what the block writes: the store arrays (side arrays derived from the generated occupancy, the
requested conditions as ``cond_*`` arrays) and one manifest row per scene with its provenance and the block's gate
numbers. Pure numpy and store reads; the Ray Data job (``dcgen.generate.batch``) moves these rows between stages.

Legend: B scenes per block, T/X/Y/Z clip axes.
"""

from __future__ import annotations

import json

import numpy as np

from dcgen.data.grid import Grid
from dcgen.data.store import ArraySpec, SceneStore
from dcgen.generate.conditions import SceneRequest
from dcgen.generate.job import Scenario, SynthJob, inpaint_mask

SOURCE = "dcgen-synth"

COND_ARRAYS: dict[str, ArraySpec] = {a.name: a for a in (
    ArraySpec("cond_command", "int16", ("clip",), "requested driving command (0 static, 1 forward, 2 left, "
              "3 right); -1 where the scene had none"),
    ArraySpec("cond_trajectory", "float32", ("clip", "t", "xyyaw"), "requested ego trajectory (x, y, yaw per "
              "frame); zeros where the manifest's 'conditions' lack trajectory"),
    ArraySpec("cond_layout", "uint8", ("clip", "t", "lx", "ly"), "requested vehicle layout; zeros where the "
              "manifest's 'conditions' lack layout"),
    ArraySpec("cond_bev", "uint8", ("clip", "x", "y"), "requested BEV semantic layout; zeros where the manifest's "
              "'conditions' lack bev"),
    ArraySpec("cond_inpaint_mask", "bool", ("clip", "x", "y"), "true where the source clip was regenerated "
              "(inpainting); all false for other scenes"),
    ArraySpec("cond_outpaint_shift", "int32", ("clip",), "voxels the source scene was moved along +X "
              "(outpainting); 0 for other scenes"),
    ArraySpec("cond_source_index", "int64", ("clip",), "index of the --source store clip the conditions came from "
              "(provenance.job.source); -1 for none"),
    ArraySpec("cond_guidance", "float32", ("clip",), "classifier-free guidance scale the scene was sampled with"),
)}


def cond_arrays(scenario: Scenario) -> list[ArraySpec]:
    """The ``cond_*`` arrays a job's output holds: those its scenario can set, plus guidance."""
    e = scenario.entries
    used = {
        "cond_command": any(x.command is not None for x in e),
        "cond_trajectory": any(x.trajectory is not None for x in e),
        "cond_layout": any(x.layout is not None for x in e),
        "cond_bev": any(x.bev is not None for x in e),
        "cond_inpaint_mask": any(x.inpaint is not None for x in e),
        "cond_outpaint_shift": any(x.outpaint is not None for x in e),
        "cond_source_index": scenario.needs_source,
        "cond_guidance": True,
    }
    return [COND_ARRAYS[n] for n, on in used.items() if on]


# ---- condition rows ------------------------------------------------------------------------------------------

def block_conditions(job: SynthJob, block: int, source: SceneStore | None,
                     pool: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The requested conditions of every scene of ``block`` as arrays with a leading B (absent ones zero, with
    ``has_*`` flags; ``command`` -1 when absent); ``source_occ`` holds the source clips when the scenario extends or
    edits them. ``pool`` is the source store's clip indices of the job's split (read when None)."""
    grid = Grid.from_dict(job.grid)
    t, (x, y, z) = grid.num_frames, grid.size
    lx, ly = grid.layout_size
    ks = np.asarray(job.block_range(block), dtype=np.int64)
    b = ks.size
    entries = [job.scenario.entry_of(k) for k in ks]
    out = {
        "k": ks, "entry": np.asarray(entries, np.int32), "source_index": np.full(b, -1, np.int64),
        "command": np.full(b, -1, np.int16), "trajectory": np.zeros((b, t, 3), np.float32),
        "has_trajectory": np.zeros(b, bool), "layout": np.zeros((b, t, lx, ly), np.uint8),
        "has_layout": np.zeros(b, bool), "bev": np.zeros((b, x, y), np.uint8), "has_bev": np.zeros(b, bool),
        "inpaint_mask": np.zeros((b, x, y), bool), "outpaint_shift": np.zeros(b, np.int32),
        "guidance": np.zeros(b, np.float32),
    }
    if job.scenario.needs_source_clips:
        out["source_occ"] = np.zeros((b, t, x, y, z), np.uint8)
    src: dict[str, np.ndarray] = {}
    if job.scenario.needs_source:
        if pool is None:
            pool = source.indices(job.source_split)
        perm = job.source_permutation()
        out["source_index"] = np.asarray([pool[perm[k % perm.size]] if job.scenario.entries[e].needs_source else -1
                                          for k, e in zip(ks, entries)], np.int64)
        wanted = out["source_index"][out["source_index"] >= 0]
        names = ("command", "trajectory", "layout", "bev") + (("occupancy",) if "source_occ" in out else ())
        if wanted.size:
            order = np.unique(wanted)
            got = source.read(order, names)
            rows = {int(i): r for r, i in enumerate(order)}
            src = {n: got[n] for n in names}
            src["row"] = np.asarray([rows.get(int(i), -1) for i in out["source_index"]])
    for i, (k, e_idx) in enumerate(zip(ks, entries)):
        e = job.scenario.entries[e_idx]
        r = int(src["row"][i]) if src else -1
        scale = job.guidance if e.guidance is None else e.guidance
        out["guidance"][i] = np.nan if scale is None else scale  # NaN: the conditions' default (default_guidance)
        if e.command == "cycle":
            out["command"][i] = int(k) % 4
        elif e.command == "source":
            out["command"][i] = int(src["command"][r])
        elif e.command is not None:
            out["command"][i] = int(e.command)
        if e.trajectory is not None:
            out["trajectory"][i] = src["trajectory"][r] if e.trajectory == "source" else np.asarray(e.trajectory)
            out["has_trajectory"][i] = True
        for name in ("layout", "bev"):
            if getattr(e, name) is not None:
                out[name][i] = src[name][r]
                out[f"has_{name}"][i] = True
        if e.inpaint is not None:
            out["inpaint_mask"][i] = inpaint_mask(e.inpaint, grid)
        if e.outpaint is not None:
            out["outpaint_shift"][i] = e.outpaint
        if "source_occ" in out and (e.extend or e.edit is not None):
            out["source_occ"][i] = src["occupancy"][r]
    return out


def requests_from_conditions(job: SynthJob, cond: dict[str, np.ndarray]) -> list[SceneRequest]:
    """One ``SceneRequest`` per scene of a block's condition arrays."""
    reqs = []
    for i, e_idx in enumerate(cond["entry"]):
        e = job.scenario.entries[int(e_idx)]
        source_occ = cond["source_occ"][i] if "source_occ" in cond else None
        reqs.append(SceneRequest(
            command=int(cond["command"][i]) if cond["command"][i] >= 0 else None,
            trajectory=cond["trajectory"][i] if cond["has_trajectory"][i] else None,
            layout=cond["layout"][i] if cond["has_layout"][i] else None,
            bev=cond["bev"][i] if cond["has_bev"][i] else None,
            prev_clip=source_occ if e.extend else None,
            source=source_occ if e.edit is not None else None,
            inpaint_mask=cond["inpaint_mask"][i] if e.inpaint is not None else None,
            outpaint_shift=int(cond["outpaint_shift"][i]) if e.outpaint is not None else None,
            guidance=None if np.isnan(cond["guidance"][i]) else float(cond["guidance"][i])))
    return reqs


# ---- block output --------------------------------------------------------------------------------------------

def scene_arrays(occ_TXYZ: np.ndarray, grid: Grid, req: SceneRequest, estimate: bool) -> tuple[dict, str, str]:
    """The store's side arrays of one generated scene, and where its trajectory and command came from.

    Layout and bev are derived from the occupancy. The trajectory is the requested one; else, with ``estimate``,
    the ego motion searched from the clip's static classes (``dcgen.metrics.ego_motion``: exhaustive, affordable on
    the debug grid, minutes per clip on larger ones); else unknown: zeros (identity poses), origin "none". The
    command is the requested one, else derived from a known trajectory, else 0 with origin "none"."""
    from dcgen.generate.sample_store import clip_arrays

    arrays, origin = clip_arrays(occ_TXYZ, grid, req, estimate)
    if req.command is not None:
        return arrays, origin, "requested"
    return arrays, origin, "derived" if origin != "none" else "none"


def block_arrays(occ_BTXYZ: np.ndarray, reqs: list[SceneRequest], cond: dict[str, np.ndarray], grid: Grid,
                 names: tuple[str, ...], estimate: bool = False) -> tuple[dict[str, np.ndarray], list[tuple]]:
    """The store arrays of a generated block (side arrays + ``cond_*``) and each scene's (trajectory origin,
    command origin)."""
    clips, origins = [], []
    for occ_TXYZ, req in zip(occ_BTXYZ, reqs):
        arrays, traj_origin, cmd_origin = scene_arrays(occ_TXYZ, grid, req, estimate)
        clips.append(arrays)
        origins.append((traj_origin, cmd_origin))
    batch = {k: np.stack([c[k] for c in clips]) for k in clips[0]}
    cond_values = {
        "cond_command": cond["command"].astype(np.int16), "cond_trajectory": cond["trajectory"],
        "cond_layout": cond["layout"], "cond_bev": cond["bev"], "cond_inpaint_mask": cond["inpaint_mask"],
        "cond_outpaint_shift": cond["outpaint_shift"].astype(np.int32),
        "cond_source_index": cond["source_index"].astype(np.int64),
        "cond_guidance": np.asarray([r.guidance_scale() for r in reqs], np.float32),  # the scale each scene used
    }
    batch.update({n: cond_values[n] for n in names if n.startswith("cond_")})
    return batch, origins


def block_rows(job: SynthJob, block: int, attempt: int, seeds: list[int], reqs: list[SceneRequest],
               cond: dict[str, np.ndarray], origins: list[str], occupied_B, flicker_B, record: dict) -> list[dict]:
    """Manifest rows of a block: provenance of every scene, its occupancy and flicker, and the block's gate
    numbers (``record``, as JSON)."""
    rows = []
    gate_json = json.dumps(record, sort_keys=True)
    for i, (k, seed, req) in enumerate(zip(cond["k"], seeds, reqs)):
        e = job.scenario.entries[int(cond["entry"][i])]
        used = list(req.used()) + ([req.edit] if req.edit else [])
        rows.append({"index": int(k), "scene": f"synth-{int(k):09d}", "frame_start": 0, "split": "train",
                     "seed": int(seed), "source": SOURCE, "scene_index": int(k), "attempt": int(attempt),
                     "block": int(block), "entry": int(cond["entry"][i]), "entry_name": e.name,
                     "conditions": ",".join(used), "guidance": req.guidance_scale(),
                     "source_index": int(cond["source_index"][i]), "trajectory_origin": origins[i][0],
                     "command_origin": origins[i][1],
                     "occupied_fraction": float(occupied_B[i]), "flicker": float(flicker_B[i]), "gate": gate_json})
    return rows
