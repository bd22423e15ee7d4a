"""``dcgen report``: one self-contained HTML page of a training run or a project folder (``dcgen.render.report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcgen.cli.common import app, user_errors


@app.command("report", help="Write one self-contained HTML page of a training run or a project folder (e.g. a "
             "quickstart's): real and generated clips side by side, VAE reconstructions, training curves from each "
             "run's metrics.jsonl, generation metrics, quality gates, fidelity and downstream results, and the "
             "command that produced each; what is missing is named with the command that makes it.\n\n"
             "Example: dcgen report dcgen-quickstart --out report.html")
def report_cmd(
    path: Path = typer.Argument(..., help="A training run directory (runs/vae) or a project folder "
                                "(dcgen-quickstart)."),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file to write (default: PATH/report.html)."),
) -> None:
    from dcgen.render.report import write_report

    with user_errors():
        summary = write_report(path, out)
    absent = f"; absent: {len(summary['absent'])} (named in the page)" if summary["absent"] else ""
    typer.echo(f"wrote {summary['out']} ({summary['bytes'] / 1e6:.1f} MB, {len(summary['sections'])} sections"
               f"{absent})")
