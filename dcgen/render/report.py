"""``dcgen report``: one self-contained HTML page of what a training run or a project folder (a quickstart's, or any
folder of runs, scene stores and evaluation results) holds, for people to look at rather than read.

``find_outputs`` walks the folder (a few levels deep; never into a Zarr store, a checkpoint or Ray's own files) and
sorts what it finds: training run directories (``metrics.jsonl``, ``run.json``, ``best/``), real and generated scene
stores (told apart by their provenance), and the JSON results of ``dcgen eval gen|fidelity|recon|downstream`` and
the quickstart. A project file (``dcgen.yaml``) beside them adds the paths it names to the walk. ``build_report``
turns them into the page's sections (``report_sections``) and ``write_report`` writes it atomically, so a failed
report leaves an earlier one whole.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import dcgen
from dcgen.render.report_commands import Paths
from dcgen.render.report_html import page

MAX_DEPTH = 4  # quickstart/runs/<stage> is 2 deep; a project may nest runs one or two levels further
SKIP_DIRS = {"ray", "tensorboard", "best", "last", "__pycache__", "node_modules"}
MAX_JSON_BYTES = 64 * 2 ** 20
PROJECT_FILE = "dcgen.yaml"


@dataclass
class Run:
    """A training run directory: its kind, the config it recorded, and its ``metrics.jsonl`` rows (None: no file)."""

    path: Path
    kind: str
    run: dict | None
    scaling: dict | None
    rows: list[dict] | None
    notes: list[str] = field(default_factory=list)


@dataclass
class Outputs:
    root: Path
    single_run: bool
    runs: list[Run] = field(default_factory=list)
    real_stores: list[Path] = field(default_factory=list)
    generated_stores: list[Path] = field(default_factory=list)
    results: dict[str, list[tuple[Path, dict]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def result(self, kind: str) -> list[tuple[Path, dict]]:
        return self.results.get(kind, [])


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "metrics.jsonl").is_file() or (path / "run.json").is_file()
                              or any((path / d / "meta.json").is_file() for d in ("best", "last")))


def read_rows(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of a ``metrics.jsonl`` and notes on lines that are not JSON objects (a run killed mid-write leaves
    a partial last line: the rows before it are still worth drawing, and the page says what was left out)."""
    rows, notes = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            notes.append(f"{path} line {number} is not JSON ({e}); it is left out of the curves")
            continue
        if not isinstance(row, dict):
            notes.append(f"{path} line {number} is a JSON {type(row).__name__}, not an object; left out")
            continue
        rows.append(row)
    return rows, notes


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found a {type(value).__name__}")
    return value


def _guess_kind(rows: list[dict] | None) -> str:
    keys = set().union(*rows) if rows else set()
    for key, kind in (("val_miou", "vae"), ("val_loss_raw", "dit"), ("val_score", "features")):
        if key in keys:
            return kind
    return "unknown"


def load_run(path: Path) -> Run:
    """A run directory's kind and config (``run.json``, else its checkpoint's ``meta.json``) and its rows."""
    kind, run, scaling, notes = None, None, None, []
    if (path / "run.json").is_file():
        saved = _read_json(path / "run.json")
        kind, run, scaling = saved.get("kind"), saved.get("run"), saved.get("scaling")
    else:
        for d in ("best", "last"):
            if (path / d / "meta.json").is_file():
                meta = _read_json(path / d / "meta.json")
                kind, run = meta.get("kind"), meta.get("train")
                break
    rows = None
    if (path / "metrics.jsonl").is_file():
        rows, notes = read_rows(path / "metrics.jsonl")
    return Run(path, kind or _guess_kind(rows), run, scaling, rows, notes)


def _store_kind(path: Path) -> str | None:
    """``scene-store``/``latent-store`` from a local Zarr group's attributes; None for anything else."""
    try:
        attrs = json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return None
    meta = attrs.get("dcgen") if isinstance(attrs, dict) else None
    return meta.get("kind") if isinstance(meta, dict) else None


GENERATED_SOURCES = ("dcgen-synth", "dcgen-sample")


def _classify_json(path: Path, value: dict) -> str | None:
    if path.name == "quickstart.json" and "seconds" in value:
        return "quickstart"
    if value.get("kind") == "dcgen-fidelity-report":
        return "fidelity"
    if value.get("benchmark") == "downstream-ssc":
        return "downstream"
    if {"metrics", "paper_table2", "real", "fake"} <= set(value):
        return "gen"
    if path.name == "recon.json" and "miou" in value:
        return "recon"
    return None


def _project_paths(root: Path) -> list[Path]:
    """Existing paths a project file beside the outputs names (any string value, resolved against its folder)."""
    project = root / PROJECT_FILE
    if not project.is_file():
        return []
    import yaml

    try:
        data = yaml.safe_load(project.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{project}: not valid YAML ({e}); fix it or move it away to report without it") from e
    found, todo = [], [data]
    while todo:
        v = todo.pop()
        if isinstance(v, dict):
            todo += list(v.values())
        elif isinstance(v, list):
            todo += v
        elif isinstance(v, str) and "://" not in v and len(v) < 4096:
            p = (root / v).resolve() if not os.path.isabs(v) else Path(v)
            if p.exists():
                found.append(p)
    return sorted(set(found))


def find_outputs(path: str | Path) -> Outputs:
    """Everything a report can show under ``path``: a training run directory (that run alone) or a project folder.
    Raises a ValueError naming the path when it is neither."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ValueError(f"{path}: no such file or directory; expected a training run directory or a project folder "
                         "(e.g. dcgen-quickstart)")
    if not root.is_dir():
        raise ValueError(f"{path}: a file, not a directory; expected a training run directory (with metrics.jsonl, "
                         "run.json or best/) or a project folder (e.g. dcgen-quickstart)")
    root = root.resolve()
    if is_run_dir(root):
        return Outputs(root, True, runs=[load_run(root)])
    out = Outputs(root, False)
    seen: set[Path] = set()
    starts = [(root, 0)] + [(p, 1) for p in _project_paths(root) if not p.is_relative_to(root)]
    for start, depth in starts:
        _walk(start, depth, out, seen)
    out.runs.sort(key=lambda r: ("vae", "dit", "features").index(r.kind) if r.kind in ("vae", "dit", "features")
                  else 3)
    if not (out.runs or out.real_stores or out.generated_stores or out.results):
        raise ValueError(f"{path}: neither a training run directory (metrics.jsonl, run.json or best/meta.json) nor "
                         "a project folder: no training runs, scene stores or evaluation results within "
                         f"{MAX_DEPTH} levels; expected e.g. a 'dcgen quickstart' output or a 'dcgen train' --out")
    return out


def _walk(path: Path, depth: int, out: Outputs, seen: set[Path]) -> None:
    path = path.resolve()
    if path in seen:
        return
    seen.add(path)
    if path.is_file():
        _take_file(path, out)
        return
    if path.suffix == ".zarr" or _store_kind(path) is not None:
        _take_store(path, out)
        return
    if is_run_dir(path):
        out.runs.append(load_run(path))
        return
    try:
        entries = sorted(path.iterdir())
    except OSError as e:
        out.notes.append(f"{path}: not listed ({e})")
        return
    for entry in entries:
        if entry.is_file() and entry.suffix == ".json":
            _take_file(entry, out)
    if (path / "downstream.json").is_file() or depth >= MAX_DEPTH:
        return  # a downstream benchmark's runs/ hold dozens of its own small training runs: the report covers them
    for entry in entries:
        if (entry.is_dir() and not entry.name.startswith(".") and entry.name not in SKIP_DIRS
                and not entry.name.startswith(("ckpt-", "checkpoint_"))):
            _walk(entry, depth + 1, out, seen)


def _take_file(path: Path, out: Outputs) -> None:
    if path.suffix != ".json" or path.name in ("run.json", "meta.json", "zarr.json"):
        return
    if path.stat().st_size > MAX_JSON_BYTES:
        out.notes.append(f"{path}: {path.stat().st_size / 2 ** 20:.0f} MiB of JSON, not read")
        return
    try:
        value = _read_json(path)
    except ValueError as e:
        out.notes.append(f"{e}; left out")
        return
    kind = _classify_json(path, value)
    if kind is not None:
        out.results.setdefault(kind, []).append((path, value))


def _take_store(path: Path, out: Outputs) -> None:
    from dcgen.data.store import SceneStore

    kind = _store_kind(path)
    if kind != "scene-store":
        return  # latent stores and other Zarr groups have nothing to look at
    try:
        store = SceneStore.open(str(path))
    except ValueError as e:  # one damaged store should not hide the rest of the folder; the page names it
        out.notes.append(f"{e}; left out (dcgen data verify {path} tells what is wrong)")
        return
    if store.meta.get("source") in GENERATED_SOURCES:
        out.generated_stores.append(path)
    elif not str(store.meta.get("source", "")).endswith("-rejected"):
        out.real_stores.append(path)


def build_report(path: str | Path, log=None) -> tuple[str, dict]:
    """The page for ``path`` and a summary: what each section showed and what it found absent."""
    from dcgen.render import report_sections as sections

    t0 = time.perf_counter()
    found = find_outputs(path)
    # a run's commands read best from the folder holding it (`--out RUN`); a project's from the project
    workdir = found.root.parent if found.single_run else found.root
    rel = Paths(workdir)
    parts = [sections.overview(found, rel)] if not found.single_run else []
    if not found.single_run:
        parts += [sections.clips(found, rel, log), sections.reconstructions(found, rel)]
    parts.append(sections.curves(found, rel))
    if not found.single_run:
        parts += [sections.generation(found, rel), sections.gates(found, rel), sections.fidelity(found, rel),
                  sections.downstream(found, rel)]
    what = "training run" if found.single_run else "project"
    intro = [f"{what} {found.root}", f"written {time.strftime('%Y-%m-%d %H:%M:%S')} by dcgen {dcgen.__version__}; "
             f"the commands below run from {workdir}"]
    html_text = page(f"dcgen report: {found.root.name}", intro, parts)
    summary = {"root": str(found.root), "single_run": found.single_run, "runs": [str(r.path) for r in found.runs],
               "sections": [s.title for s in parts],
               "absent": [what for s in parts for what, _ in s.absent],
               "seconds": time.perf_counter() - t0}
    return html_text, summary


def write_report(path: str | Path, out: str | Path | None = None, log=None) -> dict:
    """Write the report of ``path`` to ``out`` (default ``PATH/report.html``); returns ``build_report``'s summary
    with the output path and size. The file is replaced only once the new page is complete."""
    out_path = Path(out) if out is not None else Path(path) / "report.html"
    if out_path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {out_path}: expected a file name ending in .html")
    if out_path.is_dir():
        raise ValueError(f"--out {out_path}: a directory; expected a file name ending in .html")
    html_text, summary = build_report(path, log)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(html_text, encoding="utf-8")
    os.replace(tmp, out_path)
    return summary | {"out": str(out_path.resolve()), "bytes": out_path.stat().st_size}
