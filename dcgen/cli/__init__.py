"""The ``dcgen`` command line: each command parses its options and calls one function.

One module per command group: ``data`` (+ render, export), ``train`` (+ encode), ``generate`` (sample, synth,
quickstart), ``eval``, ``serve``, ``bench``, ``jobs``; ``common`` holds the root app, the error exit and the
remote-run options. Heavy modules (torch, ray, zarr) are imported inside the commands so ``dcgen --help`` is
instant.
"""

from __future__ import annotations

import typer

import dcgen
from dcgen.cli import generate, serve  # noqa: F401 (their commands register on the root app as they import)
from dcgen.cli.bench import bench_app
from dcgen.cli.common import app
from dcgen.cli.data import data_app
from dcgen.cli.eval import eval_app
from dcgen.cli.jobs import jobs_app
from dcgen.cli.train import train_app

__all__ = ["app"]

# `dcgen --help` lists the top-level commands in this order (the one they had before the CLI became a package),
# not in the order the modules above happen to register them; a command missing here fails the import.
COMMAND_ORDER = ("render", "quickstart", "encode", "sample", "serve", "synth", "export")
app.registered_commands.sort(key=lambda info: COMMAND_ORDER.index(info.name))

app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")
app.add_typer(jobs_app, name="jobs")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dcgen {dcgen.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """dcgen command line."""
