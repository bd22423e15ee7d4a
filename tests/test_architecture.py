"""The package's shape (README "Architecture"): rooms in a fixed order, imports only go down (or stay in a room),
Ray lives in a few compute files, no source file grows past 500 lines, the compute rooms import no Typer."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dcgen"

# lowest first; a module may import its own room and the rooms before it
ROOMS = ("base", "data", "render", "models", "diffusion", "metrics", "presets", "train", "generate", "serve", "bench",
         "app")
BASE = {"__init__", "storage", "runtime", "checkpoint", "config", "project", "progress"}
APP = {"cli", "quickstart", "jobs_client", "cluster", "job_entry"}
RAY_FILES = {"runtime.py", "data/ray_dataset.py", "train/ray_trainer.py", "generate/batch.py", "serve/app.py",
             "jobs_client.py"}
MAX_LINES = 500


def room_of(module: str) -> str:
    """The room of a dotted module name inside dcgen (``dcgen.data.store`` -> ``data``)."""
    parts = module.split(".")
    head = parts[1] if len(parts) > 1 else "__init__"
    if head in BASE or head.startswith("__"):  # the package root and its attributes (__version__)
        return "base"
    if head in APP:
        return "app"
    assert head in ROOMS, f"{module}: not in any room of {ROOMS}; add it to the README's architecture and here"
    return head


def sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        yield path, ".".join(parts), ast.parse(path.read_text())


def imported(module: str, tree: ast.Module) -> list[tuple[str, int]]:
    """``(dcgen module, line)`` of every import in ``tree``, function-level ones included."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "dcgen"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dcgen":
                out += [(f"dcgen.{a.name}", node.lineno) for a in node.names]
            elif node.module.startswith("dcgen."):
                out.append((node.module, node.lineno))
    return out


def test_imports_only_go_down():
    upward = []
    for path, module, tree in sources():
        mine = ROOMS.index(room_of(module))
        for target, line in imported(module, tree):
            if ROOMS.index(room_of(target)) > mine:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} ({room_of(module)}) imports {target} "
                              f"({room_of(target)})")
    assert not upward, "imports that go up a room:\n" + "\n".join(upward)


def test_ray_lives_in_a_few_compute_files():
    found = set()
    for path, _, tree in sources():
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "ray" or n.startswith("ray.") for n in names):
                found.add(str(path.relative_to(PACKAGE)))
    assert found <= RAY_FILES, f"Ray imported outside its files: {sorted(found - RAY_FILES)}"
    assert len(RAY_FILES) <= 6


def test_compute_rooms_import_no_typer_and_files_stay_short():
    long_files, typer_users = [], []
    for path, module, tree in sources():
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long_files.append(f"{path.relative_to(PACKAGE)}: {lines} lines")
        if room_of(module) in ("data", "render", "models", "diffusion", "metrics"):
            for node in ast.walk(tree):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                    if any(n.split(".")[0] == "typer" for n in names):
                        typer_users.append(str(path.relative_to(PACKAGE)))
    assert not long_files, f"split these by concept (limit {MAX_LINES} lines): {long_files}"
    assert not typer_users, f"compute rooms import Typer: {typer_users}"


def test_room_order_is_the_readme_order():
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("## Architecture"):]
    positions = [section.index(f"`{room}`") for room in ROOMS if room not in ("base", "app")]
    assert positions == sorted(positions), "README's architecture lists the rooms in another order"
