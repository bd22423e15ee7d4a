"""The ``dcgen.cli`` package: importing it and asking any command for --help stays instant (no torch, ray or zarr),
every group and command answers --help, ``user_errors`` maps exceptions to the documented exits, and ``dcgen serve``
runs until SIGTERM and then shuts Serve down."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from dcgen.cli import app
from dcgen.cli.common import user_errors

runner = CliRunner()
HEAVY = ("torch", "ray", "zarr")


def command_paths(command=None, path=()) -> list[tuple[str, ...]]:
    """Every group and command of the CLI as its argv prefix (``()`` is ``dcgen`` itself)."""
    command = typer.main.get_command(app) if command is None else command
    out = [path]
    for name, sub in getattr(command, "commands", {}).items():
        out += command_paths(sub, (*path, name))
    return out


def test_importing_the_cli_and_every_help_imports_no_heavy_module():
    code = f"""
import sys

import typer.main
from typer.testing import CliRunner

import dcgen.cli

heavy = {HEAVY!r}
assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]

def walk(command, path):
    yield path
    for name, sub in getattr(command, "commands", {{}}).items():
        yield from walk(sub, (*path, name))

for path in walk(typer.main.get_command(dcgen.cli.app), ()):
    result = CliRunner().invoke(dcgen.cli.app, [*path, "--help"])
    assert result.exit_code == 0, (path, result.output)
    loaded = [m for m in heavy if m in sys.modules]
    assert not loaded, f"dcgen {{' '.join(path)}} --help imported {{loaded}}"
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_every_group_and_command_answers_help():
    paths = command_paths()
    groups = {p for p in paths if len(p) == 1 and p[0] in ("data", "train", "eval", "bench", "jobs")}
    assert len(groups) == 5 and len(paths) > 30, paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage:" in result.output, (path, result.output)


def test_help_lists_the_commands_in_their_documented_order():
    assert list(typer.main.get_command(app).commands) == [
        "init", "render", "quickstart", "encode", "sample", "serve", "synth", "export", "report", "data", "train",
        "eval", "bench", "jobs"]


class DeployFailed(RuntimeError):
    pass


def _raising_app(error: BaseException | None, also: tuple = (), worker_errors: bool = False) -> typer.Typer:
    """A one-command app whose command raises ``error`` inside ``user_errors`` (or prints "done")."""
    demo = typer.Typer()

    @demo.command()
    def run() -> None:
        with user_errors(*also, worker_errors=worker_errors):
            if error is not None:
                raise error
        typer.echo("done")

    return demo


@pytest.mark.parametrize("error, kwargs, code, line", [
    (ValueError("--clip 9 is not a complete clip of a.zarr"), {}, 2,
     "error: --clip 9 is not a complete clip of a.zarr"),
    (ValueError("bad"), {"worker_errors": True}, 2, "error: bad"),
    (DeployFailed("the Serve application did not start: boom"), {"also": (DeployFailed,)}, 2,
     "error: the Serve application did not start: boom"),
    (RuntimeError("worker 3 died"), {"worker_errors": True}, 1, "error: worker 3 died"),
    (typer.Exit(code=5), {"worker_errors": True}, 5, None),
    (None, {}, 0, "done"),
])
def test_user_errors_exit_codes_and_messages(error, kwargs, code, line):
    result = runner.invoke(_raising_app(error, **kwargs), [])
    assert result.exit_code == code, result.output
    lines = result.output.splitlines()
    assert lines == ([] if line is None else [line])


def test_user_errors_leaves_other_runtime_errors_alone():
    result = runner.invoke(_raising_app(RuntimeError("a bug")), [])
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "a bug"


@pytest.mark.slow
def test_serve_runs_until_sigterm_then_shuts_serve_down(tmp_path):
    import httpx

    from dcgen.bench.serve import free_port, write_untrained_checkpoints

    vae, dit = write_untrained_checkpoints("debug", tmp_path / "ckpt")
    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as err:  # a file, not a pipe: Ray's log lines could fill a pipe nobody reads
        proc = subprocess.Popen([sys.executable, "-c", "from dcgen.cli import app; app()", "serve", "--vae", vae,
                                 "--dit", dit, "--port", str(port)], stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "TYPER_USE_RICH": "0"}, start_new_session=True)
        try:
            ready = proc.stdout.readline()  # the announcement, once every replica is up
            assert ready.startswith(f"serving on http://127.0.0.1:{port} (no authentication)"), (ready,
                                                                                                log.read_text())
            with httpx.Client(trust_env=False, timeout=30) as client:
                health = client.get(f"http://127.0.0.1:{port}/v1/health")
            assert health.status_code == 200 and health.json()["status"] == "ok"
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    assert proc.returncode == 0, log.read_text()
    assert "stopping the server" in log.read_text()
