"""``dcgen synth``: mass production of conditioned scenes on Ray Data with per-batch quality gates (issue 6).

The job's n scenes are cut into blocks of ``batch_size`` scenes (whole shards of the output store). Ray Data runs
block ids → condition rows (``block_conditions``: each scene's requested conditions, source clips read from the
``--source`` store) → ``map_batches`` on an actor pool of ``SynthWorker``s (one generation pipeline per GPU, or per
CPU slot locally; or, with ``--serve APP``, a handle to the running Serve model deployment, whose scenes are the
same bytes) that generate and gate a block, regenerating it with fresh seeds while the gate fails, up to
``max_attempts`` → ``BlockWriter``s (CPU) that derive the side arrays and write: the accepted attempt straight to
its final index range (arrays first, then the block's manifest part, so the store is always consistent), failed
attempts to the ``rejected`` store. A block failing every attempt is given up (reported; the store then stays
incomplete). The ego-motion search behind the derived trajectories is CPU work and stays off the GPUs.

Resumable: a block is done once its manifest part exists; re-running the same command skips done blocks and
continues a block's attempts after the ones recorded as rejected. The job spec is saved in the store's attributes
(``provenance.job``); another job on an existing store is an error unless ``--overwrite``.

Output (``OUT``, readable with zarr and pyarrow alone): the scene store arrays (occupancy; trajectory = the
requested one, else estimated from the clip; command = the requested one, else derived; layout and bev derived
from the generated occupancy), the requested conditions as ``cond_*`` arrays, and manifest columns for provenance
(seed, attempt, scenario entry, conditions, source clip, the block's gate numbers and thresholds, per-scene
occupancy and flicker). ``OUT/rejected`` is a scene store of the same arrays holding every failed attempt, scene k
of attempt a at index ``a * padded_n + k`` (valid only where its manifest lists it).

Legend: B scenes per block, T/X/Y/Z clip axes.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass

import numpy as np

from dcgen.data.grid import Grid
from dcgen.data.store import SceneStore
from dcgen.generate.conditions import SceneRequest
from dcgen.generate.job import SynthJob, identity_difference
from dcgen.generate.synth_block import (SOURCE, block_arrays, block_conditions, block_rows, cond_arrays,
                                        requests_from_conditions)

REJECTED = "rejected"
WRITER_CPUS = 0.5  # derived side arrays (ego-motion search) and zarr writes: CPU work off the generation actors


def rejected_path(out: str) -> str:
    return posixpath.join(str(out).rstrip("/"), REJECTED)


# ---- generation backends ------------------------------------------------------------------------------------

class LocalBackend:
    """A ``GenerationPipeline`` in this process, with the job's ego-motion prior (``trajectory_degree``, None for
    an ego-frame VAE)."""

    def __init__(self, vae: str, dit: str, device: str, micro_batch: int, trajectory_degree: int | None):
        from dcgen.generate.pipeline import GenerationPipeline

        pipeline = GenerationPipeline.from_checkpoints(vae, dit, device=device, micro_batch=micro_batch)
        # build_job records a degree exactly when the VAE has a trajectory slot, so the record says what was applied
        assert (trajectory_degree is not None) == pipeline.vae.needs_trajectory, (vae, trajectory_degree)
        self.pipeline = pipeline.with_trajectory_degree(trajectory_degree)

    def generate(self, reqs: list[SceneRequest], seeds: list[int], sampler: str, steps: int) -> np.ndarray:
        return self.pipeline.generate(reqs, seeds, sampler=sampler, steps=steps)


class ServeBackend:
    """The model deployment of a running ``dcgen serve`` application: every scene is one ``SceneJob`` sent through
    the deployment handle, so scenes of this job share model batches with the deployment's other clients."""

    def __init__(self, app: str, trajectory_degree: int | None):
        self.handle = serve_handle(app)
        self.trajectory_degree = trajectory_degree  # sent with every scene (None: an ego-frame VAE, nothing to apply)

    def generate(self, reqs: list[SceneRequest], seeds: list[int], sampler: str, steps: int) -> np.ndarray:
        from dcgen.generate.conditions import SceneJob

        responses = [self.handle.generate.remote(SceneJob(r, int(s), sampler, steps, self.trajectory_degree))
                     for r, s in zip(reqs, seeds)]
        results = [r.result() for r in responses]
        failed = [r.error for r in results if r.error is not None]
        if failed:
            raise RuntimeError(f"the Serve deployment failed a scene: {failed[0]}")
        return np.stack([r.occupancy_TXYZ for r in results])


SERVE_MODEL_DEPLOYMENT = "SceneModel"


def serve_handle(app: str):
    from ray import serve

    try:
        return serve.get_deployment_handle(SERVE_MODEL_DEPLOYMENT, app_name=app)
    except Exception as e:  # Serve raises several types when the application or deployment is missing
        raise ValueError(f"--serve {app}: no running Serve application {app!r} with a {SERVE_MODEL_DEPLOYMENT} "
                         f"deployment on this Ray ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                         "start one with 'dcgen serve' (its app name) first") from None


def check_serve(job: SynthJob) -> None:
    """The deployment must serve the job's checkpoints with the job's micro-batch (else its scenes would differ)."""
    info = serve_handle(job.serve_app).info.remote().result()
    if dict(info["checkpoints"]) != dict(job.checkpoints):
        raise ValueError(f"--serve {job.serve_app}: the deployment serves checkpoints {info['checkpoints']}, not the "
                         f"job's --vae/--dit {job.checkpoints}; its scenes would not be the job's")
    if int(info["micro_batch"]) != job.micro_batch:
        raise ValueError(f"--serve {job.serve_app}: the deployment runs micro-batch {info['micro_batch']} but the job "
                         f"asks for --micro-batch {job.micro_batch}; pass --micro-batch {info['micro_batch']} (a "
                         "scene's bytes depend on it)")


# ---- the workers --------------------------------------------------------------------------------------------

class SynthWorker:
    """One actor of the pool: a generation backend and the gate. Each call takes one block's condition row,
    generates and gates it until it passes or runs out of attempts, and passes the row on with every attempt's
    scenes and gate record (``occ [1, A, B, T, X, Y, Z]``, ``records``: JSON) to ``BlockWriter``."""

    def __init__(self, job: dict, out: str, device: str, thresholds: dict, reference, features_device: str = "auto"):
        from dcgen.generate.gates import Gate, feature_function

        self.job = SynthJob.from_dict(job)
        self.grid = Grid.from_dict(self.job.grid)
        if self.job.serve_app is not None:
            self.backend = ServeBackend(self.job.serve_app, self.job.trajectory_degree)
        else:
            self.backend = LocalBackend(self.job.vae, self.job.dit, device, self.job.micro_batch,
                                        self.job.trajectory_degree)
        gates = self.job.gates or {}
        features = None
        if any(c.startswith(("fid", "kid")) for c in thresholds):
            features = feature_function(gates["features"], features_device, bool(gates.get("use_2d")))
        self.gate = Gate(thresholds, reference, self.grid.num_classes, features)
        self.store = SceneStore.open(out)
        self.rejected = SceneStore.open(rejected_path(out))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        job = self.job
        t_block = time.perf_counter()
        cond = {k: v[0] for k, v in batch.items() if k not in ("block", "attempt0")}
        reqs = requests_from_conditions(job, cond)
        ks = [int(k) for k in cond["k"]]
        # Ray Data re-runs the block of an actor that died: skip what was already committed
        attempt0 = int(batch["attempt0"][0])
        rejected_ranges = set(self.rejected.committed_ranges())
        while (attempt0 * job.padded_n + ks[0], attempt0 * job.padded_n + ks[-1] + 1) in rejected_ranges:
            attempt0 += 1
        done = (ks[0], ks[-1] + 1) in self.store.committed_ranges()
        scenes, records = [], []
        gen_s = gate_s = 0.0
        for attempt in ([] if done else range(attempt0, job.max_attempts)):
            seeds = job.seeds(ks, attempt)
            t0 = time.perf_counter()
            occ_BTXYZ = self.backend.generate(reqs, seeds, job.sampler, job.steps)
            gen_s += time.perf_counter() - t0
            result = self.gate(occ_BTXYZ, seeds[0])
            gate_s += result.seconds
            scenes.append(occ_BTXYZ)
            records.append({**result.record(self.gate.thresholds, attempt), "seeds": seeds,
                            "occupied": result.occupied_B.tolist(), "flicker": result.flicker_B.tolist()})
            if result.passed:
                break
        t, (x, y, z) = self.grid.num_frames, self.grid.size
        occ_ABTXYZ = np.stack(scenes) if scenes else np.zeros((0, len(ks), t, x, y, z), np.uint8)
        return {**batch, "occ": occ_ABTXYZ[None], "records": np.asarray([json.dumps(records)]),
                "already_done": np.asarray([done]), "gen_s": np.asarray([gen_s]), "gate_s": np.asarray([gate_s]),
                "worker_s": np.asarray([time.perf_counter() - t_block])}


class BlockWriter:
    """The write stage (a CPU task per block): side arrays derived from each attempt's scenes, the accepted attempt into
    its final index range of the store, the failed ones into ``OUT/rejected``; returns the block's summary row."""

    def __init__(self, job: dict, out: str):
        self.job = SynthJob.from_dict(job)
        self.grid = Grid.from_dict(self.job.grid)
        self.store = SceneStore.open(out, "a")
        self.rejected = SceneStore.open(rejected_path(out), "a")
        self.names = tuple(n for n in self.store.array_names if n.startswith("cond_"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        job = self.job
        t_write = time.perf_counter()
        block = int(batch["block"][0])
        skip = {"block", "attempt0", "occ", "records", "already_done", "gen_s", "gate_s", "worker_s"}
        cond = {k: v[0] for k, v in batch.items() if k not in skip}
        reqs = requests_from_conditions(job, cond)
        ks = [int(k) for k in cond["k"]]
        accepted = rejected = 0
        for occ_BTXYZ, rec in zip(batch["occ"][0], json.loads(str(batch["records"][0]))):
            a = int(rec["attempt"])
            arrays, origins = block_arrays(occ_BTXYZ, reqs, cond, self.grid, self.names, job.estimate_trajectory)
            gate = {k: rec[k] for k in ("attempt", "passed", "failed", "values", "thresholds")}
            rows = block_rows(job, block, a, rec["seeds"], reqs, cond, origins, rec["occupied"], rec["flicker"], gate)
            if rec["passed"]:
                self.store.write(ks[0], arrays, rows)
                accepted = len(ks)
                continue
            slot = a * job.padded_n + ks[0]
            for i, r in enumerate(rows):
                r.update(index=slot + i, rejected_by=",".join(rec["failed"]))
            # the job's last block alone owns the last shard of its attempt's slots, even when n ends mid-shard
            owns_tail = ks[-1] + 1 == job.n and job.n != job.padded_n
            self.rejected.write(slot, arrays, rows, aligned=not owns_tail)
            rejected += len(ks)
        if bool(batch["already_done"][0]):
            accepted = len(ks)
        return {"block": np.asarray([block]), "scenes": np.asarray([len(ks)]), "accepted": np.asarray([accepted]),
                "rejected": np.asarray([rejected]), "given_up": np.asarray([accepted == 0]),
                "gen_s": batch["gen_s"], "gate_s": batch["gate_s"], "worker_s": batch["worker_s"],
                "write_s": np.asarray([time.perf_counter() - t_write])}


# ---- output store ---------------------------------------------------------------------------------------------

@dataclass
class OutputState:
    """What a (re)started job finds in its output store."""

    store: SceneStore
    rejected: SceneStore
    done_blocks: set
    attempts_done: dict  # block -> attempts recorded as rejected
    resumed: bool

    def pending(self, job: SynthJob) -> list[tuple[int, int]]:
        """``(block, first attempt)`` of every block still to generate (given-up blocks excluded)."""
        return [(b, self.attempts_done.get(b, 0)) for b in range(job.num_blocks)
                if b not in self.done_blocks and self.attempts_done.get(b, 0) < job.max_attempts]

    def given_up(self, job: SynthJob) -> list[int]:
        return [b for b in range(job.num_blocks)
                if b not in self.done_blocks and self.attempts_done.get(b, 0) >= job.max_attempts]


def _provenance(job: SynthJob, calibration: dict | None) -> dict:
    return {"generator": "dcgen synth", "job": job.to_dict(), "identity": job.identity_hash(),
            "checkpoints": dict(job.checkpoints), "gates": calibration, "runs": []}


def update_provenance(path: str, updates: dict) -> None:
    """Merge ``updates`` into the store's ``provenance`` attribute (driver only)."""
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["dcgen"])
    prov = dict(meta.get("provenance", {}))
    prov.update(updates)
    meta["provenance"] = prov
    group.attrs["dcgen"] = meta


def _calibrated_since(stored: dict, job: SynthJob) -> str:
    """Why the VAE's id changed, when the job's VAE is the store's VAE calibrated since (``dcgen train calibrate``,
    or ``dcgen train`` calibrating a finished stage in place): its decode offsets are part of its weights, so its
    scenes differ and the store cannot be continued with it. Empty when that is not the reason."""
    from dcgen import checkpoint

    before = (stored.get("checkpoints") or {}).get("vae")
    if job.vae is None or before is None or before == job.checkpoints.get("vae"):
        return ""
    try:
        record = checkpoint.read_meta(job.vae, kind="vae").get("calibration") or {}
    except (OSError, ValueError):
        return ""
    if record.get("from_checkpoint") != before:
        return ""
    return (f". The VAE {job.vae} is the store's VAE {before} calibrated since (dcgen train calibrate: new decode "
            "offsets, so other scenes): --overwrite regenerates the store with it")


def open_output(job: SynthJob, out: str, overwrite: bool, calibration: dict | None) -> OutputState:
    """Create the output stores, or reopen those of the same job to continue it."""
    from dcgen.data.store import _exists

    grid = Grid.from_dict(job.grid)
    extra = cond_arrays(job.scenario)
    rej_path = rejected_path(out)
    if _exists(out):
        try:
            existing = SceneStore.open(out, "a")
        except ValueError as e:
            raise ValueError(f"--out {out}: exists and is not a scene store ({e}); refusing to touch it") from None
        prov = existing.meta.get("provenance", {})
        if not overwrite:
            stored = prov.get("job")
            if prov.get("generator") != "dcgen synth" or not isinstance(stored, dict):
                raise ValueError(f"--out {out}: exists and was not made by 'dcgen synth' (source "
                                 f"{existing.meta.get('source')!r}); pass --overwrite to replace it")
            diff = identity_difference(stored, job.to_dict())
            if diff:
                raise ValueError(f"--out {out}: holds another synth job (differs in {'; '.join(diff)}); re-run that "
                                 "job's command to continue it, or pass --overwrite to replace it"
                                 + _calibrated_since(stored, job))
            rejected = SceneStore.open(rej_path, "a") if _exists(rej_path) else SceneStore.create(
                rej_path, grid, source=SOURCE + "-rejected", with_mask=False, extra_arrays=extra,
                capacity=job.max_attempts * job.padded_n)
            if rejected.capacity < job.max_attempts * job.padded_n:
                rejected.resize(job.max_attempts * job.padded_n)
            update_provenance(out, {"job": job.to_dict(), "gates": calibration})
            done = {int(i) // job.batch_size for i in existing.indices()}
            attempts: dict[int, int] = {}
            table = rejected.manifest()
            if table.num_rows:
                for b, a in zip(table.column("block").to_pylist(), table.column("attempt").to_pylist()):
                    attempts[int(b)] = max(attempts.get(int(b), 0), int(a) + 1)
            return OutputState(existing, rejected, done, attempts, True)
    store = SceneStore.create(out, grid, source=SOURCE, attrs=_provenance(job, calibration), with_mask=False,
                              capacity=job.n, overwrite=overwrite, extra_arrays=extra)
    rejected = SceneStore.create(rej_path, grid, source=SOURCE + "-rejected", with_mask=False, extra_arrays=extra,
                                 capacity=job.max_attempts * job.padded_n, overwrite=True)
    return OutputState(store, rejected, set(), {}, False)


# ---- the driver -------------------------------------------------------------------------------------------------

def _pool(ray, workers: int | None, serve_app: str | None) -> tuple[int, dict, str]:
    """Actor count, per-actor resources and device: one GPU each when the cluster has GPUs, else one CPU each
    (leaving one CPU to the condition reads); with --serve the deployment holds the GPUs."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), float(res.get("CPU", 1))
    if serve_app is not None:
        return (workers or 2), {"num_cpus": 1}, "cpu"
    if gpus:
        return (workers or gpus), {"num_gpus": 1, "num_cpus": 1}, "cuda"
    return (workers or max(1, int(cpus) - 1)), {"num_cpus": 1}, "cpu"


def prepare_gates(job: SynthJob) -> tuple[dict | None, object]:
    """Calibrated thresholds (``None`` when gates are off) and the ``GateReference`` workers compare with."""
    from dcgen.generate.gates import (GateConfig, GateReference, calibrate, real_clips_from_store,
                                      real_features_from_reference)

    config = GateConfig.from_dict(job.gates)
    grid = Grid.from_dict(job.grid)
    if not config.enabled:
        return None, GateReference(None, None)
    clips = feats = None
    if config.reference_data is not None:
        clips = real_clips_from_store(config.reference_data, config.reference_split, config.max_reference_clips,
                                      grid)
    if config.reference is not None:
        feats, _ = real_features_from_reference(config.reference, config.features, grid)
    calibration = calibrate(config, clips, feats, job.batch_size, job.seed)
    reference = GateReference(None if clips is None else clips.class_counts_NK.sum(0), feats)
    return calibration, reference


def run_synth(job: SynthJob, out: str, *, overwrite: bool = False, ray_address: str | None = None) -> dict:
    """Run (or continue) a synth job into the store ``out``; returns the summary. ``job`` comes from
    ``dcgen.generate.job.build_job`` (inputs checked); the gates are calibrated and a ``--serve`` deployment checked
    here, still before any generation. Progress (scenes accepted, rejected, rate, ETA) goes to stderr."""
    import os

    from dcgen.data.ray_dataset import map_on_actors
    from dcgen.progress import Progress
    from dcgen.runtime import error_summary, init_ray, unwrap_ray_error

    out = out if "://" in str(out) else os.path.abspath(out)
    t_start = time.perf_counter()
    if job.serve_app is not None:
        init_ray(ray_address)
        check_serve(job)
    calibration, reference = prepare_gates(job)
    state = open_output(job, out, overwrite, calibration)
    pending = state.pending(job)
    done_before = sum(len(job.block_range(b)) for b in state.done_blocks)
    rows: list[dict] = []
    if pending:
        ray = init_ray(ray_address)
        size, resources, device = _pool(ray, job.workers, job.serve_app)
        size = min(size, len(pending))
        job_dict = job.to_dict()
        source_pool = None
        if job.source is not None:
            source_pool = SceneStore.open(job.source).indices(job.source_split)

        def conditions(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            j = SynthJob.from_dict(job_dict)
            src = SceneStore.open(j.source) if j.source is not None else None
            b = int(batch["block"][0])
            cond = block_conditions(j, b, src, source_pool)
            return {"block": batch["block"], "attempt0": batch["attempt0"], **{k: v[None] for k, v in cond.items()}}

        ds = ray.data.from_items([{"block": b, "attempt0": a} for b, a in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(conditions, batch_size=1, batch_format="numpy", num_cpus=0.25)
        # never restarted: a failed run keeps its finished blocks and the same command continues
        ds = map_on_actors(ds, SynthWorker, batch_size=1, batch_format="numpy",
                           fn_constructor_kwargs={"job": job_dict, "out": out, "device": device,
                                                  "thresholds": (calibration or {}).get("thresholds", {}),
                                                  "reference": reference},
                           compute=ray.data.ActorPoolStrategy(size=size), **resources)

        def write(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return BlockWriter(job_dict, out)(batch)  # tasks reuse Ray's warm worker processes; actors would not

        ds = ds.map_batches(write, batch_size=1, batch_format="numpy", num_cpus=WRITER_CPUS)
        bar = Progress("synth", total=job.n, unit="scene", done=done_before)
        try:
            for row in ds.iter_rows():
                row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
                rows.append(row)
                given_up = sum(int(r["scenes"]) for r in rows if r["given_up"])
                bar.update(advance=int(row["accepted"]), rejected=sum(int(r["rejected"]) for r in rows),
                           given_up=given_up or None)
        except Exception as e:  # Ray wraps a worker's exception (RayTaskError, ActorDiedError, UserCodeException)
            root = unwrap_ray_error(e)
            kept = (f"the {len(rows)} blocks finished in this run are kept: fix the cause and re-run the same "
                    "command to continue")
            if isinstance(root, ValueError):  # bad input a worker found (a checkpoint, a source clip): its own words
                raise ValueError(f"{str(root).strip().splitlines()[0]}; {kept}") from None
            raise RuntimeError(f"a synth worker failed ({error_summary(root)}); {kept}") from e
        finally:
            bar.close()
    store = SceneStore.open(out, "a")
    accepted_total = int(store.indices().size)
    given_up = state.given_up(job) + [int(r["block"]) for r in rows if r["given_up"]]
    complete = accepted_total == job.n
    seconds = time.perf_counter() - t_start
    worker_s = sum(r["worker_s"] for r in rows)
    summary = {
        "path": out, "n": job.n, "accepted_total": accepted_total, "complete": complete,
        "resumed": state.resumed, "blocks": job.num_blocks, "blocks_run": len(rows),
        "blocks_skipped": len(state.done_blocks), "blocks_given_up": sorted(given_up),
        "accepted": int(sum(r["accepted"] for r in rows)), "rejected": int(sum(r["rejected"] for r in rows)),
        "rejected_total": int(SceneStore.open(rejected_path(out)).manifest().num_rows),
        "seconds": seconds, "scenes_per_s": sum(r["accepted"] for r in rows) / max(seconds, 1e-9),
        "worker_seconds": worker_s,
        "gate_seconds": sum(r["gate_s"] for r in rows),
        "gate_share": sum(r["gate_s"] for r in rows) / worker_s if worker_s else 0.0,
        "generate_share": sum(r["gen_s"] for r in rows) / worker_s if worker_s else 0.0,
        "write_seconds": sum(r["write_s"] for r in rows),
        "gates": calibration, "checkpoints": dict(job.checkpoints),
    }
    if complete:
        store.finalize()
    summary["bytes_per_scene"] = _store_bytes(out, exclude=(REJECTED,)) / max(accepted_total, 1)
    runs = list(SceneStore.open(out).meta.get("provenance", {}).get("runs", []))
    runs.append({k: summary[k] for k in ("accepted", "rejected", "blocks_run", "seconds", "complete")})
    update_provenance(out, {"runs": runs})
    return summary


def _store_bytes(path: str, exclude: tuple[str, ...] = ()) -> int:
    """Bytes on disk under a local store directory (0 for a URI)."""
    import os

    if "://" in path:
        return 0
    total = 0
    for root, dirs, files in os.walk(path):
        if root == path:
            dirs[:] = [d for d in dirs if d not in exclude]
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total
