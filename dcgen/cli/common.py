"""What every command group of the ``dcgen`` command line shares: the root Typer app, the one-line error exit, the
remote-run options and their dispatch to Ray Jobs.

A user error is a ValueError whose message names the bad value and what was expected (STYLE); ``user_errors()``
is the one place that turns it into ``error: MESSAGE`` on stderr and exit status 2. Nothing here imports torch, ray
or zarr: ``dcgen --help`` must stay instant.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NoReturn, Optional

import typer
from typer.core import TyperGroup


class _RootGroup(TyperGroup):
    """The root command: an option value that is missing or refused says what the project file has to do with it
    (``dcgen.cli.project``): how to give a missing one, or that a refused one came from the file."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except typer.BadParameter as e:  # MissingParameter too (Typer does not export that subclass)
            if e.ctx is not None and e.param is not None:
                from dcgen.cli.project import project_hint, project_source

                missing = type(e).__name__ == "MissingParameter"
                note = (project_hint if missing else project_source)(e.ctx, e.param.name)
                if note:
                    e.message = f"{e.message} {note}" if e.message else note
            raise


app = typer.Typer(
    help="dcgen: learn and mass-produce 4D semantic occupancy scenes (DynamicCity) on Ray.\n\n"
    "Quick start on a laptop CPU: dcgen quickstart",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=_RootGroup,
)


def fail(message: str) -> NoReturn:
    """Print a one-line error and exit non-zero (for user errors: bad input, missing files)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@contextmanager
def user_errors(*also: type[Exception], worker_errors: bool = False) -> Iterator[None]:
    """Inside the block, a ValueError (or one of ``also``) is a user error: ``fail`` with its message (exit 2).

    With ``worker_errors``, a RuntimeError (a Ray worker failed for a reason other than bad input; its message
    names it) prints ``error: MESSAGE`` and exits 1, so a script can tell it from a refused input.
    """
    try:
        yield
    except (typer.Exit, typer.Abort):  # Typer's own exits are RuntimeErrors too: they pass untouched
        raise
    except (ValueError, *also) as e:
        fail(str(e))
    except RuntimeError as e:
        if not worker_errors:
            raise
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from e


# ---- remote runs (Ray Jobs) --------------------------------------------------------------------------------
# A long command opts in with: a `ctx: typer.Context` parameter, `cluster: Optional[Path] = CLUSTER_OPTION` and
# `address: Optional[str] = ADDRESS_OPTION` parameters, and `address = remote(ctx, cluster, address)` as the first
# line of its body (pass joins_ray=False if it starts no Ray, entrypoint_gpus=1 if it computes in its own process
# on a GPU, and then take GPU_JOB_ADDRESS_OPTION, whose help says so). A new top-level command also needs its entry
# point jobs/<command>.py.

CLUSTER_OPTION = typer.Option(None, "--cluster", help="Ray cluster-launcher YAML (e.g. cluster.yaml): run this "
                              "command there as a Ray Job, bringing the cluster up if no head runs.")
ADDRESS_OPTION = typer.Option(None, "--address", help="http(s)://HEAD:8265 runs this command as a Ray Job on that "
                              "cluster's job server (log streamed, exit status returned); ray://HOST:10001, "
                              "HOST:6379 or 'auto' joins that Ray from here. Default: an embedded local Ray.")
GPU_JOB_ADDRESS_OPTION = typer.Option(None, "--address", help="http(s)://HEAD:8265 runs this command as a Ray "
                                      "Job on that cluster's job server, on a GPU unless --device cpu.")


def remote(ctx: typer.Context, cluster: Optional[Path], address: Optional[str], *, joins_ray: bool = True,
           entrypoint_gpus: float = 0.0) -> Optional[str]:
    """With --cluster or a job-server --address, run the current command as a Ray Job and exit with its status;
    otherwise return the address to run with here (None: the embedded local Ray)."""
    from dcgen.jobs_client import is_job_server

    if cluster is None and not is_job_server(address):
        if address is not None and not joins_ray:
            fail(f"--address {address!r}: this command starts no Ray here, so --address must be a job server URL "
                 "such as http://HEAD:8265")
        from dcgen.cli.project import check_inputs

        check_inputs(ctx)  # a path the project file names and nothing has written yet says what writes it
        return address
    from dcgen.jobs_client import run_remote

    with user_errors():
        code = run_remote(ctx, cluster=cluster, address=address, entrypoint_gpus=entrypoint_gpus,
                          log=lambda m: typer.echo(m, err=True), write=lambda s: typer.echo(s, nl=False))
    raise typer.Exit(code=code)


# ---- option files -------------------------------------------------------------------------------------------
# ``--config FILE`` fills a command's options from a JSON or YAML mapping of option names (as ``--dry-run`` prints
# them under "options"); options given on the command line win. Click's default_map does the filling, so every
# option keeps its own type conversion and checks.

def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Optional[Path]) -> Optional[Path]:
    if value is None:
        return None
    import json

    import yaml

    try:
        text = value.read_text()
        data = json.loads(text) if value.suffix == ".json" else yaml.safe_load(text)
    except OSError as e:
        raise typer.BadParameter(f"{value}: cannot read it ({e.strerror})") from None
    except (ValueError, yaml.YAMLError) as e:
        raise typer.BadParameter(f"{value}: not valid {'JSON' if value.suffix == '.json' else 'YAML'} ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("options"), dict):
        data = data["options"]  # a --dry-run printout
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value}: expected a mapping of option names to values")
    names = {p.name: p for p in ctx.command.params if p.name not in ("config", "dry_run", "ctx")}
    given = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise typer.BadParameter(f"{value}: unknown options {unknown}; this command takes "
                                 f"{', '.join(sorted(names))}")
    ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, v in given.items() if v is not None}}
    return value


CONFIG_OPTION = typer.Option(None, "--config", is_eager=True, callback=_load_config,
                             help="JSON or YAML file of this command's options (e.g. a --dry-run printout); options "
                             "on the command line win.")
DEVICE_OPTION = typer.Option("auto", help="auto | cpu | cuda | cuda:N.")  # where a command computes
DRY_RUN_OPTION = typer.Option(False, "--dry-run", help="Check everything and print the resolved options and run as "
                              "JSON, without training or writing anything.")


def print_dry_run(ctx: typer.Context, resolved: dict) -> None:
    """The command's options as given or defaulted (what --config reads back) and the resolved run, as JSON."""
    import json

    options = {k: v for k, v in ctx.params.items() if k not in ("config", "dry_run", "cluster", "address", "ctx")}
    typer.echo(json.dumps({"options": options, **resolved}, indent=2, default=str))
