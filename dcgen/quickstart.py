"""``dcgen quickstart``: the whole product on the embedded local Ray, in minutes on a laptop CPU.

Synthetic city → VAE → latents → DiT → metric feature networks → reference statistics → ``synth`` of a few
layout-conditioned scenes with quality gates → a rendered GIF, the Table 2 metrics and VAE reconstructions → the
fidelity report of those scenes and of unconditional ones against a city the models never saw → one HTML page of all
of it (``dcgen report``). Every stage is the same function the individual commands call, each
skipped when its output is already there, so a second run (or a run after an interruption) picks up where the last
one stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Sizes chosen so the whole run fits in about twenty minutes on 2 CPU cores (debug) or a GPU (small).
QUICKSTART_SIZES = {
    # preset: clips in the city, VAE epochs, DiT epochs, feature epochs, scenes to synthesise, sampler steps.
    # Sampling is the default sampler, DPM-Solver++ at these 10 steps: on this preset's models it came within 10 % of
    # DDPM-1000's 3D and 2D FID (bench dit), where ancestral DDPM respaced to 50, the quickstart's sampler before,
    # scored 2.6x and 2.1x.
    # 10 VAE epochs, not 4: no DiT decodes better than its VAE, and at 4 epochs the VAE erased poles and
    # pedestrians (val IoU 2 % and 4 %), so every generated one was a single voxel. With the column encoder
    # (presets.py) they take 4.4 minutes on 2 AVX2 cores and reconstruct as well as real clips score.
    # 60 DiT epochs of the 4 × 256 DiT (presets.py), 20 minutes there: the minutes the VAE gave back. (The v DiT,
    # ``DiTConfig.prediction``, learns the nearly clean steps slowly: the 2 × 128 DiT needed 120 epochs, at 60 its
    # DDPM-50 scenes had 3D FID 73 against 36 at 120.)
    "debug": (320, 10, 60, 3, 32, 10),
    "small": (400, 8, 40, 4, 16, 10),
}
CONDITIONS = ("command", "trajectory", "layout")
# The fidelity report scores the scenes against a second city the models never saw (seed + 1), every clip of it
# 'val' but a tenth: its two real halves hold the 32 clips per set the report compares.
HELDOUT_CLIPS = 80

@dataclass(frozen=True)
class QuickstartConfig:
    out: str = "dcgen-quickstart"
    preset: str = "debug"
    clips: int | None = None
    scenes: int | None = None
    seed: int = 0
    max_minutes_per_stage: float | None = None
    verbose: bool = False  # show Ray's own log lines (workers, Ray Data, Ray Train) in the terminal

    def sizes(self) -> tuple[int, int, int, int, int, int]:
        if self.preset not in QUICKSTART_SIZES:
            raise ValueError(f"quickstart preset {self.preset!r}; expected one of {', '.join(QUICKSTART_SIZES)}")
        clips, vae_e, dit_e, feat_e, scenes, steps = QUICKSTART_SIZES[self.preset]
        if self.clips is not None:
            if self.clips < 32:
                raise ValueError(f"--clips {self.clips}: the quickstart needs at least 32 clips (train and val)")
            clips = self.clips
        if self.scenes is not None:
            if self.scenes < 8 or self.scenes % 8:
                raise ValueError(f"--scenes {self.scenes}: expected a positive multiple of 8")
            scenes = self.scenes
        return clips, vae_e, dit_e, feat_e, scenes, steps


def run_quickstart(cfg: QuickstartConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or continue) the quickstart into ``cfg.out``; returns where everything is and the metrics."""
    from dcgen.data.store import SceneStore
    from dcgen.data.synth_city import write_synthetic_city
    from dcgen.generate.batch import run_synth
    from dcgen.generate.conditions import DEFAULT_SAMPLER
    from dcgen.generate.job import build_job
    from dcgen.generate.sample_calibration import ensure_sample_calibration
    from dcgen.metrics.gen_eval import evaluate_generation, format_table
    from dcgen.metrics.reference import make_reference
    from dcgen.render.clip import save_clip
    from dcgen.runtime import init_ray
    from dcgen.train.pipeline import train_pipeline

    clips, vae_epochs, dit_epochs, feat_epochs, scenes, steps = cfg.sizes()
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.time()
    init_ray(quiet=not cfg.verbose)

    def stage(name: str):
        timings[name] = time.time()

    def done(name: str, output: Path | None = None):  # each stage's output is shown as soon as it exists
        timings[name] = round(time.time() - timings[name], 1)
        log(f"[{name}] {timings[name]:.1f} s" + (f": {output}" if output is not None else ""))

    city = out / "city.zarr"
    stage("city")
    if city.exists() and SceneStore.open(str(city)).num_clips == clips:
        log(f"[city] {city} exists")
    else:
        log(f"[city] generating {clips} synthetic {cfg.preset} clips into {city}")
        write_synthetic_city(str(city), cfg.preset, clips, seed=cfg.seed, overwrite=city.exists())
    real_gif = out / "real.gif"
    city_store = SceneStore.open(str(city))
    k = int(city_store.indices("val")[0])
    save_clip(real_gif, city_store.read(slice(k, k + 1), ("occupancy",))["occupancy"][0],
              title=f"synthetic city clip {k} (real data)")
    log(f"[city] a real clip to look at while the models train: {real_gif}")
    done("city", city)

    runs = out / "runs"
    stage("train")
    # no decoder stage: its minutes (on the small preset 28 for 6 epochs) would break the quickstart's budget
    trained = train_pipeline(str(city), cfg.preset, runs, conditions=CONDITIONS, vae_epochs=vae_epochs,
                             dit_epochs=dit_epochs, decoder_epochs=0, features_epochs=feat_epochs,
                             max_minutes=cfg.max_minutes_per_stage, seed=cfg.seed, log=log)
    ensure_sample_calibration(trained["sampling_vae"], trained["dit"], str(city), log=log)
    done("train", runs)
    features = runs / "features" / "best"

    ref = out / "reference.npz"
    stage("reference")
    if not ref.exists():
        make_reference(str(city), str(features), ref, split="train")
    done("reference", ref)

    scenes_path = out / "scenes.zarr"
    stage("synth")
    job = build_job(vae=trained["vae"], dit=trained["dit"], n=scenes, cond="layout", source=str(city),
                    source_split="val", seed=cfg.seed, sampler=DEFAULT_SAMPLER, steps=steps,
                    gates={"reference": str(ref), "features": str(features), "reference_data": str(city),
                           "reference_split": "train", "use_2d": False, "thresholds": {}})
    stale = stale_synth(scenes_path, job)
    if stale:  # e.g. made by an earlier quickstart's sampler: the quickstart's own output, so made anew
        log(f"[synth] {scenes_path} holds another job's scenes ({stale}): generating them anew")
    summary = run_synth(job, str(scenes_path), overwrite=bool(stale))
    done("synth", scenes_path)

    stage("render")
    gif = out / "scene.gif"
    synth_store = SceneStore.open(str(scenes_path))
    if synth_store.num_clips == 0:
        raise ValueError(f"{scenes_path}: no generated scene passed the quality gates (rejected attempts are in "
                         f"{scenes_path / 'rejected'}); train longer (re-run with a larger --clips) and "
                         "re-run the quickstart, which continues where it stopped")
    if not summary["complete"]:
        log(f"[synth] only {synth_store.num_clips} of {scenes} scenes passed the gates; rendering what passed")
    first = int(synth_store.indices()[0])
    save_clip(gif, synth_store.read(slice(first, first + 1), ("occupancy",))["occupancy"][0],
              title=f"dcgen {cfg.preset}: generated scene {first} (layout-conditioned)")
    done("render", gif)

    stage("metrics")
    result = evaluate_generation(str(city), str(scenes_path), str(features), real_split="val")
    table = format_table(result)
    (out / "metrics.txt").write_text(table + "\n")
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float))
    done("metrics", out / "metrics.txt")

    stage("recon")  # the report shows the VAE's reconstructions of real clips beside the generated scenes
    if not (out / "eval-recon" / "recon.json").exists():
        from dcgen.metrics.recon_eval import evaluate_reconstruction

        evaluate_reconstruction(trained["vae"], str(city), "val", out / "eval-recon", num_renders=2, max_clips=16)
    done("recon", out / "eval-recon")

    stage("fidelity")
    fidelity = fidelity_stage(out, cfg, trained, features, scenes_path, scenes, steps)
    done("fidelity", out / "fidelity.txt")

    total = round(time.time() - t_all, 1)
    report = {
        "out": str(out), "city": str(city), "vae": trained["vae"], "latents": trained["latents"],
        "dit": trained["dit"], "features": str(features), "reference": str(ref), "scenes": str(scenes_path),
        "gif": str(gif), "real_gif": str(real_gif), "metrics_table": str(out / "metrics.txt"),
        "fidelity": fidelity,
        "synth": {k: summary[k] for k in ("accepted_total", "rejected_total", "scenes_per_s", "gate_share")},
        "seconds": timings | {"total": total},
    }
    # dcgen.yaml names what was built, so commands run in OUT need no paths (`dcgen synth --n 16 --cond layout`);
    # generation decodes with the VAE itself, named, as the run has no RUNS/decoder/best
    from dcgen.project import write_project

    report["project"] = str(write_project(out, data=city.name, preset=cfg.preset, runs=runs.name, reference=ref.name,
                                          decoder=f"{runs.name}/vae/best", force=True,
                                          options={"synth": {"sampler": DEFAULT_SAMPLER, "steps": steps}}))
    report["report"] = str(out / "report.html")
    (out / "quickstart.json").write_text(json.dumps(report, indent=2, default=str))
    from dcgen.render.report import write_report

    write_report(out, report["report"])  # one page of everything above: `dcgen report OUT`
    log("")
    log(table)
    log("")
    log((out / "fidelity.txt").read_text())
    for key in ("city", "vae", "dit", "features", "reference", "scenes", "gif", "real_gif", "metrics_table",
                "project"):
        log(f"{key:>14}  {report[key]}")
    log(f"{'report':>14}  {report['report']}")
    log(f"{'total':>14}  {total:.0f} s")
    return report


def fidelity_stage(out: Path, cfg: QuickstartConfig, trained: dict, features: Path, scenes_path: Path, scenes: int,
                   steps: int) -> dict:
    """The fidelity report (``dcgen eval fidelity``) of the layout-conditioned scenes of ``synth`` and of as many
    unconditional ones, against a second city the models never saw, with the VAE's reconstructions (the
    ceiling) beside them; the one-screen table goes to OUT/fidelity.txt. Returns where each report is."""
    from dcgen.data.store import SceneStore
    from dcgen.data.synth_city import write_synthetic_city
    from dcgen.generate.conditions import DEFAULT_SAMPLER
    from dcgen.generate.job import checkpoint_facts
    from dcgen.generate.sample_store import sample_to_store
    from dcgen.metrics.fidelity import fidelity_report
    from dcgen.metrics.fidelity_table import format_comparison

    heldout = out / "heldout.zarr"
    if not heldout.exists():
        write_synthetic_city(str(heldout), cfg.preset, HELDOUT_CLIPS, seed=cfg.seed + 1, val_fraction=0.9)
    uncond = out / "scenes-uncond.zarr"
    # the same sampler as synth, no condition (and no gates): what the DiT makes alone; made anew when the store
    # there came from other checkpoints or another sampler (an earlier quickstart's)
    wanted = {"checkpoints": checkpoint_facts(trained["vae"], trained["dit"])["checkpoints"], "seed": cfg.seed,
              "sampler": DEFAULT_SAMPLER, "steps": steps}
    made = SceneStore.open(str(uncond)).meta.get("provenance", {}) if uncond.exists() else None
    if made is not None and made.get("generator") != "dcgen sample":
        raise ValueError(f"{uncond}: holds a scene store not made by 'dcgen sample' (the quickstart's unconditional "
                         "scenes are); move it away and re-run the quickstart")
    if made is None or {k: made.get(k) for k in wanted} != wanted:
        sample_to_store(trained["vae"], trained["dit"], str(uncond), n=scenes, cond={}, sources={}, seed=cfg.seed,
                        sampler=DEFAULT_SAMPLER, steps=steps, overwrite=made is not None)
    reports = {}
    for label, store, vae in (("generated, layout", scenes_path, trained["vae"]), ("generated, uncond", uncond, None)):
        name = "fidelity-layout" if vae else "fidelity-uncond"
        reports[label] = fidelity_report(str(heldout), str(store), str(features), real_split="val", vae=vae,
                                         out=out / name)
    (out / "fidelity.txt").write_text(format_comparison(reports) + "\n")
    return {"heldout": str(heldout), "uncond": str(uncond), "table": str(out / "fidelity.txt"),
            "layout": str(out / "fidelity-layout"), "unconditional": str(out / "fidelity-uncond")}


def stale_synth(path: Path, job) -> str:
    """How the synth job stored at ``path`` differs from ``job`` ("" when there is none, or it is that job, which
    run_synth continues; a store not made by synth is left for run_synth to refuse, untouched)."""
    from dcgen.data.store import SceneStore
    from dcgen.generate.job import identity_difference

    if not path.exists():
        return ""
    try:
        prov = SceneStore.open(str(path)).meta.get("provenance", {})
    except ValueError:
        return ""
    stored = prov.get("job")
    if prov.get("generator") != "dcgen synth" or not isinstance(stored, dict):
        return ""
    return "; ".join(identity_difference(stored, job.to_dict()))
