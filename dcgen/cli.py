"""The ``dcgen`` command line: each command parses its options and calls one function.

Heavy modules (torch, ray, zarr) are imported inside the commands so ``dcgen --help`` is instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import dcgen

app = typer.Typer(
    help="dcgen: learn and mass-produce 4D semantic occupancy scenes (DynamicCity) on Ray.\n\n"
    "Quick start on a laptop CPU: dcgen quickstart",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Build and inspect scene stores: synthetic city, dataset importers, summaries.",
                       no_args_is_help=True)
train_app = typer.Typer(help="Train models on Ray Train: vae, dit, features (or the whole pipeline).",
                        invoke_without_command=True)
eval_app = typer.Typer(help="Evaluate: reconstruction IoU, reference statistics, generation metrics.",
                       no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that write JSON: data, vae, dit, metrics, synth, serve.",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dcgen {dcgen.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """dcgen command line."""


def fail(message: str) -> None:
    """Print a one-line error and exit non-zero (for user errors: bad input, missing files)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


# ---- data ------------------------------------------------------------------------------------------------

# ---- render ----------------------------------------------------------------------------------------------

# ---- train -----------------------------------------------------------------------------------------------

# ---- encode / sample ---------------------------------------------------------------------------------------

# ---- eval ------------------------------------------------------------------------------------------------

# ---- bench -----------------------------------------------------------------------------------------------
