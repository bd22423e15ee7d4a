"""Generated clips into a scene store (SPEC §1 arrays), so ``dcgen render``, ``dcgen data info`` and the metrics read
them like any other store.

A generated clip has no poses: its trajectory is the requested one when the request gave it, else (when asked:
an exhaustive search, seconds per clip on the debug grid, minutes on larger ones) the ego motion estimated from the
clip's static classes (``metrics.ego_motion``), else unknown (zeros, identity poses, origin "none"); the command is the
requested one, else derived from a known trajectory as importers do, else 0; layout and BEV are derived from the
occupancy. A chained sequence of k·T frames becomes k consecutive clips of one scene (``frame_start`` = j·T), as
importers cut long scenes.

Legend: N scenes, T frames, X/Y/Z voxels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from dcgen.data.derive import bev_semantics, command_from_trajectory, pose_from_xyyaw, vehicle_layout
from dcgen.data.grid import Grid
from dcgen.generate.conditions import DEFAULT_SAMPLER, SceneRequest

SOURCE = "dcgen-sample"


def clip_arrays(occ_TXYZ: np.ndarray, grid: Grid, request: SceneRequest | None,
                estimate: bool = True) -> tuple[dict, str]:
    """The store arrays of one generated clip and where its trajectory came from (requested | estimated | none)."""
    from dcgen.metrics.ego_motion import estimate_trajectory

    if request is not None and request.trajectory is not None:
        traj_T3, origin = np.asarray(request.trajectory, np.float32), "requested"
    elif estimate:
        traj_T3, origin = estimate_trajectory(occ_TXYZ, grid), "estimated"
    else:
        traj_T3, origin = np.zeros((grid.num_frames, 3), np.float32), "none"
    if request is not None and request.command is not None:
        command = request.command
    else:
        command = command_from_trajectory(traj_T3) if origin != "none" else 0
    if origin == "none":  # unknown motion: identity poses
        poses = np.repeat(np.eye(4)[None], grid.num_frames, axis=0)
    else:
        poses = np.stack([pose_from_xyyaw(float(x), float(y), float(yaw)) for x, y, yaw in traj_T3])
    return {
        "occupancy": occ_TXYZ.astype(np.uint8),
        "trajectory": traj_T3,
        "ego_pose": poses.astype(np.float32),
        "command": np.uint8(command),
        "layout": vehicle_layout(occ_TXYZ, grid.layout_downsample),
        "bev": bev_semantics(occ_TXYZ[0]),
    }, origin


def write_samples(out: str, grid: Grid, occ_NTXYZ: np.ndarray, requests: Sequence[SceneRequest],
                  seeds: Sequence[int], *, provenance: dict | None = None, overwrite: bool = False,
                  estimate: bool = False) -> str:
    """A new scene store at ``out`` holding the generated scenes (``[N, k·T, X, Y, Z]``, k >= 1); ``estimate``
    searches the ego motion of clips whose trajectory was not requested."""
    from dcgen.data.store import SceneStore

    occ_NTXYZ = np.asarray(occ_NTXYZ)
    t = grid.num_frames
    if occ_NTXYZ.ndim != 5 or occ_NTXYZ.shape[2:] != grid.size or occ_NTXYZ.shape[1] % t:
        raise ValueError(f"generated scenes have shape {list(occ_NTXYZ.shape)}, expected [N, k*{t}, "
                         f"{', '.join(map(str, grid.size))}]")
    if not len(requests) == len(seeds) == occ_NTXYZ.shape[0]:
        raise ValueError(f"{occ_NTXYZ.shape[0]} scenes, {len(requests)} requests and {len(seeds)} seeds; expected "
                         "one of each per scene")
    store = SceneStore.create(out, grid, source=SOURCE, attrs=provenance, with_mask=False, overwrite=overwrite)
    clips, rows = [], []
    for i, (scene_TXYZ, req, seed) in enumerate(zip(occ_NTXYZ, requests, seeds)):
        for j in range(scene_TXYZ.shape[0] // t):
            arrays, origin = clip_arrays(scene_TXYZ[j * t:(j + 1) * t], grid, req if j == 0 else None, estimate)
            clips.append(arrays)
            rows.append({"scene": f"sample-{i}", "frame_start": j * t, "split": "test", "seed": int(seed),
                         "source": SOURCE, "trajectory_origin": origin,
                         "conditions": ",".join(req.used()) if j == 0 else "prev_clip"})
    store.append({k: np.stack([c[k] for c in clips]) for k in clips[0]}, rows)
    store.finalize()
    return store.path


COMMAND_NAMES = {"static": 0, "forward": 1, "left": 2, "right": 3}
FROM_STORE = ("trajectory", "layout", "bev", "prev_clip")


def parse_cond(pairs: Sequence[str]) -> dict:
    """``["command=left"]`` (or ``"command=2"``; comma-separated pairs too) -> ``{"command": 2}``."""
    out: dict = {}
    for item in (p.strip() for pair in pairs for p in pair.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--cond {item!r}: expected KEY=VALUE, e.g. command=left")
        if key != "command":
            raise ValueError(f"--cond {key}=...: only command takes a value on the command line; take trajectory, "
                             "layout, bev and prev_clip from a store with --trajectory-from/--layout-from/"
                             "--bev-from/--prev-from")
        v = value.strip().lower()
        if v in COMMAND_NAMES:
            out["command"] = COMMAND_NAMES[v]
        elif v.isdigit() and int(v) in COMMAND_NAMES.values():
            out["command"] = int(v)
        else:
            raise ValueError(f"--cond command={value!r}: expected 0..3 or one of {', '.join(COMMAND_NAMES)}")
    return out


def build_requests(n: int, cond: dict, sources: dict[str, str], split: str | None, guidance: float | None
                   ) -> list[SceneRequest]:
    """``n`` requests: the command from ``cond``; each ``sources[name]`` store gives clip i's array to scene i
    (``prev_clip`` takes the clip's occupancy)."""
    from dcgen.data.store import SceneStore

    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    fields: dict[str, list] = {}
    for name, path in sources.items():
        if name not in FROM_STORE:
            raise ValueError(f"cannot take {name!r} from a store; expected one of {', '.join(FROM_STORE)}")
        store = SceneStore.open(path)
        idx = store.indices(split)
        if idx.size < n:
            raise ValueError(f"{path}: {idx.size} clips in split {split or 'any'}, need {n} for --n {n}")
        array = "occupancy" if name == "prev_clip" else name
        fields[name] = list(store.read(idx[:n], (array,))[array])
    return [SceneRequest(command=cond.get("command"), guidance=guidance,
                         **{name: values[i] for name, values in fields.items()}) for i in range(n)]


def sample_to_store(vae: str, dit: str, out: str, *, n: int, cond: dict, sources: dict[str, str],
                    split: str | None = None, seed: int = 0, sampler: str = DEFAULT_SAMPLER, steps: int | None = None,
                    guidance: float | None = None, chain: int = 1, device: str = "auto", micro_batch: int = 8,
                    overwrite: bool = False, estimate_trajectory: bool = False, eta: float = 0.0,
                    trajectory_degree: int | None = None) -> dict:
    """Generate ``n`` scenes (scene k from ``scene_seed(seed, k)``) and write them to a scene store at ``out``;
    ``eta`` is DDIM's noise level (0 deterministic, 1 ancestral-like); ``trajectory_degree`` overrides the
    pipeline's ego-motion prior (``SamplerDefaults.trajectory_degree``; 0 keeps the sampled trajectory)."""
    import time

    from dcgen.data.store import _exists
    from dcgen.generate.job import check_trajectory_degree
    from dcgen.generate.pipeline import GenerationPipeline
    from dcgen.progress import Progress
    from dcgen.runtime import scene_seed

    if _exists(out) and not overwrite:
        raise ValueError(f"{out}: already exists; pass --overwrite to replace it")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"--eta {eta}: expected a DDIM noise level in [0, 1]")
    if eta and sampler != "ddim":
        raise ValueError(f"--eta {eta} is DDIM's noise level; --sampler {sampler} has none (use --sampler ddim)")
    if trajectory_degree is not None:
        check_trajectory_degree(trajectory_degree)
    pipe = GenerationPipeline.from_checkpoints(vae, dit, device=device, micro_batch=micro_batch)
    pipe = pipe.with_trajectory_degree(trajectory_degree)
    requests = build_requests(n, cond, sources, split, guidance)
    seeds = [scene_seed(seed, k) for k in range(n)]
    t0 = time.perf_counter()
    parts = []
    with Progress("sample", total=n, unit="scene") as bar:
        # one network batch per call, for the progress: the pipeline cuts a call into the same micro-batches
        # (requests here carry no edits), so each scene's bytes are those of a single call for all n
        for a in range(0, n, pipe.micro_batch):
            part_requests, part_seeds = requests[a:a + pipe.micro_batch], seeds[a:a + pipe.micro_batch]
            if chain > 1:
                parts.append(pipe.chain(part_requests, part_seeds, chain, sampler=sampler, steps=steps, eta=eta))
            else:
                parts.append(pipe.generate(part_requests, part_seeds, sampler=sampler, steps=steps, eta=eta))
            bar.update(advance=len(part_requests))
    occ = np.concatenate(parts)
    seconds = time.perf_counter() - t0
    # the checkpoints' paths (what trained on what can be traced from them) and their ids, as synth records them
    provenance = {"generator": "dcgen sample", "vae": str(vae), "dit": str(dit),
                  "checkpoints": dict(pipe.checkpoint_ids), "seed": int(seed), "sampler": sampler, "steps": steps,
                  "eta": eta, "guidance": guidance, "chain": chain,
                  "trajectory_degree": pipe.trajectory_degree, "cond": dict(cond), "sources": dict(sources)}
    path = write_samples(out, pipe.grid, occ, requests, seeds, provenance=provenance, overwrite=overwrite,
                         estimate=estimate_trajectory)
    return {"path": path, "scenes": n, "clips": n * chain, "seconds": seconds, "device": str(pipe.device)}
