"""The ``dcgen`` command line: each command parses its options and calls one function.

One module per command group: ``data`` (+ render, export), ``train`` (+ encode), ``generate`` (sample, synth,
quickstart), ``eval``, ``serve``, ``bench``, ``jobs``, ``project`` (the root ``--project`` option and ``init``);
``common`` holds the root app, the error exit and the remote-run options. Heavy modules (torch, ray, zarr) are
imported inside the commands so ``dcgen --help`` is instant.
"""

from __future__ import annotations

from typing import Optional

import typer

import dcgen
# their commands register on the root app as they import
from dcgen.cli import generate, project, report, serve  # noqa: F401
from dcgen.cli.bench import bench_app
from dcgen.cli.common import app, user_errors
from dcgen.cli.data import data_app
from dcgen.cli.eval import eval_app
from dcgen.cli.jobs import jobs_app
from dcgen.cli.train import train_app

__all__ = ["app"]

# `dcgen --help` lists the top-level commands in this order (the one they had before the CLI became a package),
# not in the order the modules above happen to register them; a command missing here fails the import.
COMMAND_ORDER = ("init", "render", "quickstart", "encode", "sample", "serve", "synth", "export", "report")
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
    project_file: Optional[str] = project.PROJECT_OPTION,
    verbose: bool = typer.Option(False, "--verbose", help="Show Ray's own log lines (workers, Ray Data, Ray Train) "
                                 "in any command: dcgen --verbose COMMAND ..."),
) -> None:
    """dcgen command line."""
    from dcgen.progress import interval_from_env

    with user_errors():
        interval_from_env()  # a bad DCGEN_PROGRESS_INTERVAL is refused before a command writes anything
    if verbose:  # read by dcgen.runtime.init_ray, in this process and the ones it starts
        import os

        from dcgen.runtime import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"
