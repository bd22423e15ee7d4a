"""The ``dcgen`` command lines behind what a report shows, rebuilt from what each output recorded about itself: a
training run's ``run.json`` (or its checkpoint's ``train`` config), a scene store's provenance (synthetic city,
import, ``dcgen sample``, ``dcgen synth`` job), and the inputs an evaluation result names.

A command recorded verbatim (a ``command`` string in ``run.json``) is shown as it is; otherwise the equivalent
command is rebuilt with every value that shaped the output spelled out (epochs, batch size, learning rate, seed),
so it reproduces the output rather than relying on defaults that may have changed since. Paths inside the report's
folder are written relative to it (the page says the commands run from there).
"""

from __future__ import annotations

import shlex
from pathlib import Path


class Paths:
    """Writes paths for commands: relative to ``root`` when inside it, else as recorded."""

    def __init__(self, root: Path):
        self.root = root.resolve()

    def __call__(self, path, missing: str = "PATH") -> str:
        """``path`` as a command writes it; ``missing`` (a placeholder in capitals) when nothing was recorded."""
        if path is None or str(path) == "":
            return missing
        p = Path(str(path))
        try:
            return str(p.resolve().relative_to(self.root)) or "."
        except ValueError:
            return str(path)


def join(argv: list) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def _opt(argv: list, flag: str, value, default=None) -> None:
    """Append ``flag value`` unless the value is missing or the command's default."""
    if value is not None and value != default:
        argv += [flag, value]


def train_command(kind: str, run: dict, scaling: dict | None, run_dir: Path, rel: Paths) -> str:
    """``dcgen train vae|dit|features`` that trains this run, from its run config (``run.json``'s ``run``)."""
    extra = run.get("extra") or {}
    scaling = scaling or {}
    if isinstance(run.get("command"), str):
        return run["command"]
    if kind == "vae":
        argv = ["dcgen", "train", "vae", "--data", rel(extra.get("data"), "STORE"), "--preset",
                extra.get("preset", "PRESET")]
        model = run.get("model") or {}
        _opt(argv, "--decoder", model.get("decoder"), "ess")
    elif kind == "dit":
        model = run.get("model") or {}
        argv = ["dcgen", "train", "dit", "--latents", rel(extra.get("latents"), "LATENTS.zarr")]
        _opt(argv, "--vae", rel(run["vae_checkpoint"]) if run.get("vae_checkpoint") else None)
        argv += ["--cond", ",".join(model.get("conditions") or []) or "none",
                 "--preset", extra.get("preset", "PRESET")]
        _opt(argv, "--prediction", model.get("prediction"), "v")
        _opt(argv, "--ema-decay", run.get("ema_decay"))
        _opt(argv, "--cond-drop", run.get("cond_drop"), 0.1)
        _opt(argv, "--cond-drop-all", run.get("cond_drop_all", 0.0), 0.1)  # runs that predate it dropped none
    elif kind == "features":
        trained_on = extra.get("trained_on") or {}
        argv = ["dcgen", "train", "features", "--data", rel(trained_on.get("data"), "STORE")]
        _opt(argv, "--preset", extra.get("preset"))
        nets = run.get("nets") or {}
        _opt(argv, "--render-size", nets.get("render_size"), 128)
    else:
        raise ValueError(f"{run_dir}: training run of kind {kind!r}; expected vae, dit or features")
    argv += ["--out", rel(run_dir)]
    for flag, key in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr")):
        _opt(argv, flag, run.get(key))
    _opt(argv, "--workers", scaling.get("workers"), 1)
    _opt(argv, "--gpus-per-worker", scaling.get("gpus_per_worker"), 0.0)
    _opt(argv, "--max-minutes", run.get("max_minutes"))
    if run.get("cpu_bf16"):
        argv.append("--cpu-bf16")
    argv += ["--seed", run.get("seed", 0)]
    return join(argv)


def store_command(path: Path, meta: dict, rel: Paths) -> str | None:
    """The command that wrote a scene store, from its provenance; None when it records no generator."""
    prov = meta.get("provenance") or {}
    generator = prov.get("generator") or prov.get("importer")
    if generator == "dcgen.data.synth_city":
        argv = ["dcgen", "data", "synth-city", "--clips", prov.get("num_clips"), "--out", rel(path),
                "--preset", prov.get("preset"), "--seed", prov.get("seed", 0)]
        _opt(argv, "--val-fraction", prov.get("val_fraction"), 0.1)
        return join(argv)
    if generator == "dcgen.data.importers":
        argv = ["dcgen", "data", "import", prov.get("dataset"), rel(prov.get("src")), "--out", rel(path),
                "--split", prov.get("split")]
        _opt(argv, "--stride", prov.get("stride"), 1)
        return join(argv)
    if generator == "dcgen sample":
        argv = ["dcgen", "sample", "--vae", rel(prov.get("vae")), "--dit", rel(prov.get("dit")),
                "--n", meta.get("num_clips", "N"), "--sampler", prov.get("sampler"), "--steps", prov.get("steps")]
        _opt(argv, "--guidance", prov.get("guidance"))  # none: each condition's default
        argv += ["--seed", prov.get("seed", 0)]
        _opt(argv, "--eta", prov.get("eta"), 0.0)
        _opt(argv, "--chain", prov.get("chain"), 1)
        for key, value in (prov.get("cond") or {}).items():
            argv += ["--cond", f"{key}={value}"]
        for key, value in (prov.get("sources") or {}).items():
            argv += [f"--{key.replace('_clip', '')}-from", rel(value)]
        return join(argv + ["--out", rel(path)])
    if generator == "dcgen synth":
        return synth_command(path, prov.get("job") or {}, rel)
    return None


def synth_command(path: Path, job: dict, rel: Paths) -> str:
    argv = ["dcgen", "synth", "--vae", rel(job.get("vae")), "--dit", rel(job.get("dit")), "--n", job.get("n", "N")]
    if job.get("cond") == "scenario":
        argv += ["--scenario", rel(job.get("scenario_file"))]
    else:
        argv += ["--cond", job.get("cond", "none")]
    _opt(argv, "--source", rel(job["source"]) if job.get("source") else None)
    _opt(argv, "--source-split", job.get("source_split"))
    argv += ["--sampler", job.get("sampler"), "--steps", job.get("steps")]
    _opt(argv, "--guidance", job.get("guidance"))  # none: each condition's default
    argv += ["--seed", job.get("seed", 0)]
    _opt(argv, "--batch-size", job.get("batch_size"), 8)
    _opt(argv, "--max-attempts", job.get("max_attempts"), 3)
    gates = job.get("gates") or {}
    _opt(argv, "--reference", rel(gates["reference"]) if gates.get("reference") else None)
    _opt(argv, "--features", rel(gates["features"]) if gates.get("features") else None)
    _opt(argv, "--reference-data", rel(gates["reference_data"]) if gates.get("reference_data") else None)
    _opt(argv, "--reference-split", gates.get("reference_split"))
    if gates.get("use_2d"):
        argv.append("--gate-2d")
    _opt(argv, "--gate-slack", gates.get("slack"), 1.5)
    for name, value in sorted((gates.get("thresholds") or {}).items()):
        flag = {"fid_3d": "--gate-fid", "kid_3d": "--gate-kid"}.get(name, "--gate-" + name.replace("_", "-"))
        argv += [flag, value]
    return join(argv + ["--out", rel(path)])


def gen_eval_command(result: dict, json_path: Path, rel: Paths) -> str:
    real, fake = result.get("real") or {}, result.get("fake") or {}
    argv = ["dcgen", "eval", "gen", "--real", rel(real.get("path")), "--fake", rel(fake.get("path")),
            "--features", rel(result.get("features"))]
    if real.get("kind") == "store":
        _opt(argv, "--real-split", real.get("split"))
    _opt(argv, "--fake-split", fake.get("split"))
    return join(argv + ["--json", rel(json_path)])


def fidelity_command(report: dict, out_dir: Path, rel: Paths) -> str:
    real = report.get("real") or {}
    split = real.get("split")
    argv = ["dcgen", "eval", "fidelity", "--real", rel(real.get("path")) + (f":{split}" if split else ""),
            "--fake", rel((report.get("fake") or {}).get("path")),
            "--features", rel((report.get("features") or {}).get("path"))]
    vae = report.get("vae") or {}
    _opt(argv, "--vae", rel(vae["path"]) if vae.get("path") else None)
    config = report.get("config") or {}
    _opt(argv, "--max-clips", config.get("max_clips"))
    _opt(argv, "--seed", config.get("seed"), 0)
    if config.get("estimate_trajectories"):
        argv.append("--estimate-trajectories")
    return join(argv + ["--out", rel(out_dir)])


def downstream_command(report: dict, out_dir: Path, rel: Paths) -> str:
    """``dcgen eval downstream`` that made this report: the stores as given (a report from before they were
    recorded: every pool's stores), the evaluation store, split and cap, and every setting off its default."""
    real, ev, config = report.get("real") or {}, report.get("eval") or {}, report.get("config") or {}
    argv = ["dcgen", "eval", "downstream", "--real", rel(real.get("path"))]
    given = config.get("synthetic_stores")
    if given is None:
        given = [p for pool in (report.get("synthetic") or {}).values() for p in pool.get("paths", [])]
    if given:
        argv += ["--synthetic", ",".join(rel(p) for p in given)]
    for flag, key in (("--gated", "gated_store"), ("--rejected", "rejected_store")):
        if config.get(key):
            argv += [flag, rel(config[key])]
    _opt(argv, "--real-split", real.get("train_split"), "train")
    if ev.get("path") and not ev.get("is_real", True):
        argv += ["--eval", rel(ev["path"])]
    _opt(argv, "--eval-split", ev.get("split"), "val")
    if ev.get("clips") is not None and ev.get("split_clips") is not None and ev["clips"] < ev["split_clips"]:
        argv += ["--eval-clips", ev["clips"]]
    _opt(argv, "--preset", report.get("preset"))
    for flag, key in (("--real-counts", "real_counts"), ("--ratios", "ratios"), ("--seeds", "seeds")):
        if config.get(key):
            argv += [flag, ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in config[key])]
    _opt(argv, "--steps", config.get("steps"))
    _opt(argv, "--batch-size", config.get("batch_size"))
    _opt(argv, "--lr", config.get("lr"), 5e-3)
    _opt(argv, "--synthetic-share", config.get("synthetic_share"))
    if config.get("controls"):
        argv += ["--controls", ",".join(config["controls"])]
    if report.get("allow_overlap"):
        argv.append("--allow-overlap")
    _opt(argv, "--workers", config.get("workers"), 1)
    if report.get("backend") == "local":
        argv.append("--local")
    return join(argv + ["--out", rel(out_dir)])


def recon_command(result: dict, out_dir: Path, rel: Paths) -> str:
    argv = ["dcgen", "eval", "recon", "--vae", rel(result.get("vae")), "--data", rel(result.get("data")),
            "--split", result.get("split") or "all", "--max-clips", result.get("num_clips")]
    _opt(argv, "--renders", len(result.get("renders") or []), 3)
    return join(argv + ["--out", rel(out_dir)])


def quickstart_command(out, preset: str | None, clips: int | None, scenes: int | None, max_minutes: float | None,
                       seed: int) -> str:
    argv = ["dcgen", "quickstart", "--out", out]
    _opt(argv, "--preset", preset)
    _opt(argv, "--clips", clips)
    _opt(argv, "--scenes", scenes)
    _opt(argv, "--max-minutes-per-stage", max_minutes)
    _opt(argv, "--seed", seed, 0)
    return join(argv)
