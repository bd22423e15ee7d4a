"""The spec of a ``dcgen synth`` job (issue 6; SPEC §3 conditions): what to generate, from which checkpoints, with
which conditions and seeds, in which batches; saved into the output store so a re-run can prove it is the same job.

Conditions are always a ``Scenario``: a list of entries, scene k following entry ``pattern[k mod W]`` (each entry
listed ``weight`` times). ``--cond KIND`` is the one-entry scenario of that kind; ``--scenario FILE`` (JSON or YAML,
``schemas/scenario.schema.json``) mixes kinds and guidance scales. A condition marked ``source`` comes from the
scene's clip of the ``--source`` store: clip ``pool[perm[k mod P]]`` of a permutation of the store's P clips seeded
by the job seed, so every clip is used before any repeats. Without a source, ``command`` cycles k mod 4.

Scene k's generator seed is ``scene_seed(job_seed, k)`` (the seed ``dcgen sample`` and the Serve endpoint give scene
k of the same seed); a scene regenerated after a failed quality gate uses ``scene_seed(job_seed, k + a·2^40)`` for
attempt a, so attempts never share a seed with another scene. The spec splits into the *identity* (everything that
decides a scene's bytes: checkpoints, conditions, count, seed, sampler, steps, guidance, the ego-motion prior's
degree, batch and micro-batch) and the *policy* (gates and the attempt limit, which may change between runs of one
job; every block records the thresholds it passed) and the *placement* (workers, ``--serve``), which never matters.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from dcgen.config import schema_errors
from dcgen.data.grid import Grid
from dcgen.generate.conditions import DEFAULT_SAMPLER, SAMPLERS
from dcgen.runtime import scene_seed

CONDITION_KINDS = ("none", "command", "trajectory", "layout", "bev", "extend", "inpaint", "outpaint")
SOURCE_KINDS = ("trajectory", "layout", "bev", "extend", "inpaint", "outpaint")
COMMAND_NAMES = {"static": 0, "forward": 1, "left": 2, "right": 3}
CLIPS_PER_SHARD = 8  # SceneStore.clips_per_chunk: job batches are whole shards so writers never share one
ATTEMPT_STRIDE = 2 ** 40  # seed index of scene k's attempt a is k + a * ATTEMPT_STRIDE
MAX_ATTEMPTS = 100
# the steps of a job that names none, per sampler: DPM-Solver++'s usual 10 (samplers.DPMPP_STEPS), DDIM's and respaced
# DDPM's 50 (a synth job's DDPM was always respaced; `dcgen sample`'s DDPM default is the full 1000)
SYNTH_STEPS = {"ddim": 50, "ddpm": 50, "dpm++": 10}
SOURCE_STREAM = 2 ** 47  # seed index of the source-clip permutation (no scene attempt reaches it)
SCHEMA_FILE = Path(__file__).resolve().parents[2] / "schemas" / "scenario.schema.json"


def attempt_seed(job_seed: int, k: int, attempt: int) -> int:
    """Generator seed of scene ``k``'s ``attempt`` (0: the scene's own ``scene_seed(job_seed, k)``)."""
    return scene_seed(job_seed, int(k) + int(attempt) * ATTEMPT_STRIDE)


# ---- scenario ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ScenarioEntry:
    """One kind of scene: each field None (unset), a literal value, or ``"source"``."""

    name: str = ""
    weight: int = 1
    command: int | str | None = None  # 0..3, "source" or "cycle"
    trajectory: str | tuple[tuple[float, float, float], ...] | None = None  # "source" or T x 3
    layout: str | None = None  # "source"
    bev: str | None = None  # "source"
    extend: bool = False  # continue the source clip (prev_clip)
    inpaint: tuple[int, int, int, int] | None = None  # voxel box x0, x1, y0, y1 to regenerate
    outpaint: int | None = None  # voxels the scene moves along +X
    guidance: float | None = None  # None: the job's --guidance

    @property
    def needs_source(self) -> bool:
        return ("source" in (self.command, self.trajectory, self.layout, self.bev) or self.extend
                or self.inpaint is not None or self.outpaint is not None)

    @property
    def model_conditions(self) -> tuple[str, ...]:
        """The DiT conditions this entry sets (names of ``dcgen.models.dit`` conditions)."""
        out = [n for n in ("command", "trajectory", "layout", "bev") if getattr(self, n) is not None]
        return tuple(out + (["prev_clip"] if self.extend else []))

    @property
    def edit(self) -> str | None:
        return "inpaint" if self.inpaint is not None else "outpaint" if self.outpaint is not None else None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "weight": self.weight}
        for f in ("command", "layout", "bev", "guidance"):
            if getattr(self, f) is not None:
                out[f] = getattr(self, f)
        if self.trajectory is not None:
            out["trajectory"] = self.trajectory if self.trajectory == "source" else [list(r) for r in self.trajectory]
        if self.extend:
            out["extend"] = True
        if self.inpaint is not None:
            x0, x1, y0, y1 = self.inpaint
            out["inpaint"] = {"x": [x0, x1], "y": [y0, y1]}
        if self.outpaint is not None:
            out["outpaint"] = {"shift": self.outpaint}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ScenarioEntry":
        """An entry from its JSON form (already schema-valid)."""
        command = d.get("command")
        if isinstance(command, str) and command in COMMAND_NAMES:
            command = COMMAND_NAMES[command]
        traj = d.get("trajectory")
        if traj is not None and traj != "source":
            traj = tuple(tuple(float(v) for v in row) for row in traj)
        box = d.get("inpaint")
        return cls(name=str(d.get("name", "")), weight=int(d.get("weight", 1)), command=command, trajectory=traj,
                   layout=d.get("layout"), bev=d.get("bev"), extend=bool(d.get("extend", False)),
                   inpaint=None if box is None else (*map(int, box["x"]), *map(int, box["y"])),
                   outpaint=None if d.get("outpaint") is None else int(d["outpaint"]["shift"]),
                   guidance=None if d.get("guidance") is None else float(d["guidance"]))


@dataclass(frozen=True)
class Scenario:
    entries: tuple[ScenarioEntry, ...]

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError("a scenario needs at least one entry")

    @property
    def period(self) -> int:
        return sum(e.weight for e in self.entries)

    def entry_of(self, k: int) -> int:
        """Index of the entry scene ``k`` follows."""
        r = int(k) % self.period
        for i, e in enumerate(self.entries):
            if r < e.weight:
                return i
            r -= e.weight
        raise AssertionError("unreachable: r < period")

    @property
    def needs_source(self) -> bool:
        return any(e.needs_source for e in self.entries)

    @property
    def needs_source_clips(self) -> bool:
        """Whether some entry needs whole source clips (extension or editing), not just their side arrays."""
        return any(e.extend or e.edit is not None for e in self.entries)

    def to_dict(self) -> dict:
        return {"version": 1, "entries": [e.to_dict() for e in self.entries]}

    @classmethod
    def from_dict(cls, d: dict, what: str = "scenario", validate: bool = True) -> "Scenario":
        """A scenario from its JSON form, checked against the schema (``validate=False`` for a dict that came
        from ``to_dict``, e.g. a saved job spec)."""
        if validate:
            validate_scenario_dict(d, what)
        return cls(tuple(ScenarioEntry.from_dict(e) for e in d["entries"]))

    @classmethod
    def load(cls, path: str | Path) -> "Scenario":
        """A scenario file (``.json``, ``.yaml`` or ``.yml``), checked against ``schemas/scenario.schema.json``."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"scenario file {str(path)!r} does not exist")
        text = path.read_text()
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as e:  # json.JSONDecodeError or yaml.YAMLError
            raise ValueError(f"scenario file {path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'} "
                             f"({str(e).splitlines()[0]})") from None
        return cls.from_dict(data, what=f"scenario file {path}")


def validate_scenario_dict(data, what: str = "scenario") -> None:
    """Raise naming the entry index and field of the first schema violation."""
    if not isinstance(data, dict):
        raise ValueError(f"{what}: expected a mapping with 'entries', got {type(data).__name__}")
    errors = schema_errors(SCHEMA_FILE, data, what, "scenario")
    if not errors:
        return
    err = errors[0]
    parts = list(err.absolute_path)
    where = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(parts))
    if err.validator == "not":
        raise ValueError(f"{what}: {where}: inpaint and outpaint are exclusive; give one of them")
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        raise ValueError(f"{what}: {where or 'top level'}: {err.message}; expected fields: {', '.join(allowed)}")
    if err.validator == "oneOf":
        raise ValueError(f"{what}: {where}: {err.instance!r} is not valid; expected "
                         f"{err.schema.get('description', 'a value the schema allows')}")
    raise ValueError(f"{what}: {where or 'top level'}: {err.message}")


def scenario_for_kind(kind: str, grid: Grid, has_source: bool) -> Scenario:
    """The one-entry scenario of ``--cond KIND``: conditions from the source clip; the inpaint box is the half
    ahead of the ego (x >= X/2), the outpaint shift a quarter of the grid."""
    if kind not in CONDITION_KINDS:
        raise ValueError(f"unknown condition kind {kind!r}; expected one of {', '.join(CONDITION_KINDS)}")
    x, y, _ = grid.size
    entry = {
        "none": ScenarioEntry(name="none"),
        "command": ScenarioEntry(name="command", command="source" if has_source else "cycle"),
        "trajectory": ScenarioEntry(name="trajectory", trajectory="source"),
        "layout": ScenarioEntry(name="layout", layout="source"),
        "bev": ScenarioEntry(name="bev", bev="source"),
        "extend": ScenarioEntry(name="extend", extend=True),
        "inpaint": ScenarioEntry(name="inpaint", inpaint=(x // 2, x, 0, y)),
        "outpaint": ScenarioEntry(name="outpaint", outpaint=x // 4),
    }[kind]
    return Scenario((entry,))


# ---- the job -----------------------------------------------------------------------------------------------

IDENTITY_FIELDS = ("n", "checkpoints", "scenario", "source", "source_split", "source_clips", "seed", "sampler",
                   "steps", "guidance", "trajectory_degree", "batch_size", "micro_batch", "estimate_trajectory")


@dataclass(frozen=True)
class SynthJob:
    """Everything ``dcgen synth`` was asked to do. ``checkpoints`` holds the VAE and DiT checkpoint ids."""

    n: int
    checkpoints: dict
    scenario: Scenario
    seed: int = 0
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None  # None: SYNTH_STEPS of the sampler, resolved when the job is made
    guidance: float | None = None  # None: each scene's conditions' default (conditions.default_guidance)
    # the ego-motion prior (SamplerDefaults.trajectory_degree; 0 keeps the sampled trajectory); None for an ego-frame
    # VAE, which has no trajectory slot to project (build_job resolves it from the VAE checkpoint)
    trajectory_degree: int | None = None
    batch_size: int = 8
    micro_batch: int = 8
    estimate_trajectory: bool = False  # search the ego motion of scenes without a requested trajectory
    cond: str = "none"  # the --cond kind, or "scenario"
    scenario_file: str | None = None
    source: str | None = None  # scene store the 'source' conditions come from
    source_split: str | None = None
    source_clips: int = 0  # complete clips of that split when the job started (the permutation's length)
    vae: str | None = None
    dit: str | None = None
    grid: dict = field(default_factory=dict)
    max_attempts: int = 3  # policy
    gates: dict = field(default_factory=dict)  # policy: dcgen.generate.gates.GateConfig.to_dict()
    serve_app: str | None = None  # placement
    workers: int | None = None  # placement

    def __post_init__(self) -> None:
        _positive_int("n", self.n)
        _positive_int("batch_size", self.batch_size)
        _positive_int("micro_batch", self.micro_batch)
        if self.batch_size % CLIPS_PER_SHARD:
            raise ValueError(f"--batch-size {self.batch_size}: expected a multiple of {CLIPS_PER_SHARD} (the store's "
                             "clips per shard), so every block of scenes owns whole shards")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if self.steps is None:  # the job's identity records the steps it ran, never None
            object.__setattr__(self, "steps", SYNTH_STEPS[self.sampler])
        # DPM-Solver++ is multistep (>= 2 steps) and needs one timestep past its last (the training schedule's 1000)
        low, limit = (2, 999) if self.sampler == "dpm++" else (1, 1000)
        if int(self.steps) != self.steps or not low <= self.steps <= limit:
            raise ValueError(f"--steps {self.steps!r}: expected an integer in {low}..{limit}"
                             + (" for --sampler dpm++" if self.sampler == "dpm++" else ""))
        if self.guidance is not None and (not np.isfinite(self.guidance) or self.guidance < 0):
            raise ValueError(f"--guidance {self.guidance}: expected a finite number >= 0")
        if self.trajectory_degree is not None:
            check_trajectory_degree(self.trajectory_degree)
        if int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"--seed {self.seed!r}: expected a non-negative integer")
        if int(self.max_attempts) != self.max_attempts or not 1 <= self.max_attempts <= MAX_ATTEMPTS:
            raise ValueError(f"--max-attempts {self.max_attempts!r}: expected an integer in 1..{MAX_ATTEMPTS}")
        if self.workers is not None:
            _positive_int("workers", self.workers)
        if self.scenario.needs_source and self.source is None:
            need = next(i for i, e in enumerate(self.scenario.entries) if e.needs_source)
            what = f"--cond {self.cond}" if self.cond != "scenario" else f"scenario entries[{need}]"
            raise ValueError(f"{what} takes its conditions from a source clip; pass --source STORE")

    # ---- blocks and seeds -------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return -(-self.n // self.batch_size)

    def block_range(self, b: int) -> range:
        return range(b * self.batch_size, min(self.n, (b + 1) * self.batch_size))

    @property
    def padded_n(self) -> int:
        """``n`` rounded up to whole shards (a rejected attempt's slots start at ``attempt * padded_n``)."""
        return -(-self.n // CLIPS_PER_SHARD) * CLIPS_PER_SHARD

    def seeds(self, ks, attempt: int) -> list[int]:
        return [attempt_seed(self.seed, k, attempt) for k in ks]

    def source_permutation(self) -> np.ndarray:
        """Positions into the source pool: scene k uses pool position ``perm[k mod P]``."""
        if self.source_clips < 1:
            return np.zeros(0, dtype=np.int64)
        g = np.random.default_rng(scene_seed(self.seed, SOURCE_STREAM))
        return g.permutation(self.source_clips).astype(np.int64)

    # ---- (de)serialisation and identity -----------------------------------------------------------------

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["scenario"] = self.scenario.to_dict()
        out["checkpoints"] = dict(self.checkpoints)
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, d: dict) -> "SynthJob":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["scenario"] = Scenario.from_dict(d["scenario"], validate=False)
        return cls(**kwargs)

    def identity(self) -> dict:
        """The fields that decide the bytes of the scenes (a re-run must match them to continue)."""
        d = self.to_dict()
        return {k: d[k] for k in IDENTITY_FIELDS}

    def identity_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]


def identity_difference(stored: dict, wanted: dict) -> list[str]:
    """``["seed: 0 -> 1", ...]`` for identity fields that differ."""
    out = []
    for k in IDENTITY_FIELDS:
        a, b = stored.get(k), wanted.get(k)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            out.append(f"{k}: {_short(a)} -> {_short(b)}")
    return out


def _short(value, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[:width] + "..."


def check_trajectory_degree(value, what: str = "--trajectory-degree") -> int:
    """The ego-motion prior's degree (``SamplerDefaults.trajectory_degree``), or an error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{what} {value!r}: expected 0 (off) or a polynomial degree >= 1")
    return int(value)


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"--{name.replace('_', '-')} {value!r}: expected an integer >= 1")


# ---- checks against the model and the source ---------------------------------------------------------------

def check_against_model(job: SynthJob, grid: Grid, accepted: tuple[str, ...], latent_down: int) -> None:
    """Every scenario entry against the model's grid and conditions, before any generation; errors name the
    ``--cond`` kind, or the scenario entry index and field."""
    x, y, _ = grid.size
    t = grid.num_frames
    if job.grid and Grid.from_dict(job.grid) != grid:
        raise ValueError(f"the job's grid {job.grid} is not the model's {grid.to_dict()}")
    for i, e in enumerate(job.scenario.entries):
        at = (f"scenario {job.scenario_file or ''}: entries[{i}].".replace(" :", ":") if job.cond == "scenario"
              else f"--cond {job.cond}: ")
        for name in e.model_conditions:
            if name not in accepted:
                field_name = "extend" if name == "prev_clip" else name
                model = [c for c in accepted if c not in ("inpaint", "outpaint")]
                raise ValueError(f"{at}{field_name}: the DiT was not trained with the {name!r} condition (it accepts "
                                 f"{', '.join(model) or 'no conditions'})")
        if isinstance(e.trajectory, tuple) and len(e.trajectory) != t:
            raise ValueError(f"{at}trajectory: {len(e.trajectory)} rows; expected {t} (one [x, y, yaw] per frame)")
        if e.inpaint is not None:
            x0, x1, y0, y1 = e.inpaint
            if not (0 <= x0 < x1 <= x and 0 <= y0 < y1 <= y):
                raise ValueError(f"{at}inpaint: box x [{x0}, {x1}) y [{y0}, {y1}); expected 0 <= x0 < x1 <= {x} and "
                                 f"0 <= y0 < y1 <= {y}")
            if (x1 - x0) * (y1 - y0) == x * y:
                raise ValueError(f"{at}inpaint: the box covers the whole grid; generate without an edit instead")
        if e.outpaint is not None and (not 0 < e.outpaint < x or e.outpaint % latent_down):
            raise ValueError(f"{at}outpaint.shift: {e.outpaint} voxels; expected a multiple of {latent_down} (one "
                             f"latent cell) in 1..{x - 1}")


def check_source(path: str, split: str | None, grid: Grid) -> int:
    """The number of complete clips of ``split`` in the source store, which must have the model's grid."""
    from dcgen.data.store import SceneStore

    store = SceneStore.open(path)
    if (store.grid.shape, store.grid.num_classes, store.grid.layout_downsample) != \
            (grid.shape, grid.num_classes, grid.layout_downsample):
        raise ValueError(f"--source {path}: its grid (T={store.grid.num_frames}, XYZ={list(store.grid.size)}, "
                         f"K={store.grid.num_classes}) is not the model's (T={grid.num_frames}, XYZ={list(grid.size)}, "
                         f"K={grid.num_classes}); expected a store of the grid the model was trained on")
    count = int(store.indices(split).size)
    if count == 0:
        raise ValueError(f"--source {path}: no complete clips in split {split or 'any'}")
    return count


def inpaint_mask(box: tuple[int, int, int, int], grid: Grid) -> np.ndarray:
    """``[X, Y]`` bool, True inside the box (the region regenerated)."""
    x0, x1, y0, y1 = box
    mask_XY = np.zeros(grid.size[:2], dtype=bool)
    mask_XY[x0:x1, y0:y1] = True
    return mask_XY


def checkpoint_facts(vae: str, dit: str) -> dict:
    """Grid, accepted conditions, latent downsampling and checkpoint ids of a VAE + DiT pair, from their metadata
    and a memory-mapped read of their weights (no tensor data loaded), the pairing checked: a checkpoint the workers
    could not load (missing, corrupt, carrying pickled objects, of the wrong kind) fails here, before any Ray work."""
    from dcgen.generate.sample_calibration import decode_offsets_id
    from dcgen.models.loading import check_checkpoints, vae_config

    checked = check_checkpoints(vae, dit)
    dit_meta = checked["dit"]
    ids = dict(checked["ids"])
    offsets = decode_offsets_id(dit_meta, ids["vae"])  # the workers decode with them (GenerationPipeline)
    if offsets is not None:
        ids["decode_offsets"] = offsets
    grid = Grid.from_dict(dit_meta["grid"])
    latent_x = int(dit_meta["config"]["latent"]["x"])
    # a reference-frame VAE is the one with a trajectory slot (HexPlaneVAE.needs_trajectory)
    reference_frame = vae_config(checked["vae"], vae).frame == "reference"
    return {"grid": grid, "accepted": tuple(dit_meta.get("conditions", ())) + ("inpaint", "outpaint"),
            "latent_down": grid.size[0] // latent_x, "checkpoints": ids,
            "trajectory_slot": reference_frame}


def _abs(path: str | None) -> str | None:
    """A path for the job's workers, whose working directory is not the caller's (None stays None)."""
    from dcgen import storage

    return None if path is None else storage.resolve(path)


def build_job(*, vae: str, dit: str, n: int, cond: str = "none", scenario: str | None = None,
              source: str | None = None, source_split: str | None = None, seed: int = 0, sampler: str = DEFAULT_SAMPLER,
              steps: int | None = None, guidance: float | None = None, batch_size: int = 8, micro_batch: int = 8,
              estimate_trajectory: bool = False, max_attempts: int = 3, gates: dict | None = None,
              serve_app: str | None = None, workers: int | None = None,
              trajectory_degree: int | None = None) -> SynthJob:
    """The job of a ``dcgen synth`` command line, every input checked before any Ray work (no tensor data loaded):
    condition kind, checkpoints (as the workers will read them) and their pairing, scenario file, source store grid,
    gate options. ``trajectory_degree`` (None: the pipeline's default) is recorded for a reference-frame VAE and
    None for an ego-frame one, whose scenes it does not touch, as ``dcgen sample`` records it."""
    from dcgen.generate.gates import GateConfig
    from dcgen.generate.pipeline import SamplerDefaults

    if trajectory_degree is not None:
        check_trajectory_degree(trajectory_degree)
    if cond not in CONDITION_KINDS + ("scenario",):
        raise ValueError(f"unknown condition kind {cond!r}; expected one of {', '.join(CONDITION_KINDS)}")
    if scenario is not None and cond not in ("none", "scenario"):
        raise ValueError(f"--cond {cond} and --scenario {scenario}: give one of them (a scenario sets each entry's "
                         "conditions)")
    gate_config = GateConfig(**{k: (_abs(v) if k in ("reference", "features", "reference_data") else v)
                                for k, v in (gates or {}).items()})
    facts = checkpoint_facts(vae, dit)
    grid = facts["grid"]
    scen = Scenario.load(scenario) if scenario is not None else scenario_for_kind(cond, grid, source is not None)
    source_clips = check_source(source, source_split, grid) if source is not None else 0
    degree = SamplerDefaults().trajectory_degree if trajectory_degree is None else int(trajectory_degree)
    job = SynthJob(n=n, checkpoints=facts["checkpoints"], scenario=scen, seed=seed, sampler=sampler, steps=steps,
                   guidance=guidance, trajectory_degree=degree if facts["trajectory_slot"] else None,
                   batch_size=batch_size, micro_batch=micro_batch,
                   estimate_trajectory=estimate_trajectory,
                   cond="scenario" if scenario is not None else cond, scenario_file=_abs(scenario),
                   source=_abs(source), source_split=source_split, source_clips=source_clips, vae=_abs(vae),
                   dit=_abs(dit), grid=grid.to_dict(), max_attempts=max_attempts,
                   gates=gate_config.resolve().to_dict(), serve_app=serve_app, workers=workers)
    check_against_model(job, grid, facts["accepted"], facts["latent_down"])
    return job
