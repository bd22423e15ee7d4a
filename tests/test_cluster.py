"""Cluster operation (issue 8): cluster.yaml against Ray's schema, the forwarded command line, token handling, and
real Ray Jobs on a separate Ray head started on 127.0.0.1 with token authentication (not the session's in-process
``ray_local``): a remote synth-city + VAE fit whose outputs appear, a failing job's exit code and log tail, an
unreachable address, a wrong token."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import pytest
import typer
from typer.testing import CliRunner

from dcgen import jobs_client
from dcgen.cli import app
from dcgen.jobs_client import dashboard_port, load_cluster_config

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- cluster.yaml ------------------------------------------------------------------------------------------

def test_cluster_yaml_passes_rays_schema():
    config = load_cluster_config(REPO / "cluster.yaml")
    nodes = config["available_node_types"]
    head = config["head_node_type"]
    gpu_types = [n for n, t in nodes.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types and head not in gpu_types
    assert all(nodes[n]["max_workers"] >= 1 and nodes[n]["min_workers"] >= 0 for n in gpu_types)
    assert config["provider"]["type"] == "aws"
    assert "2.60.0" in config["docker"]["head_image"] and "2.60.0" in config["docker"]["worker_image"]
    assert config["file_mounts"]["~/dcgen"] == "."
    assert any("RAY_AUTH_MODE=token" in c for c in config["head_start_ray_commands"])
    assert dashboard_port(config) == 8265


@pytest.mark.parametrize("text, message", [
    ('cluster_name: x\nmax_workers: "two"\nprovider: {type: aws, region: us-west-2}\n',
     "fails Ray's cluster schema at max_workers"),
    ("cluster_name: x\nbogus_key: 1\nprovider: {type: aws, region: us-west-2}\n", "'bogus_key' was unexpected"),
    ("- just\n- a list\n", "expected a YAML mapping"),
    ("cluster_name: x\n", "'provider' with a 'type'"),
    ("cluster_name: [unclosed\n", "not valid YAML"),
])
def test_bad_cluster_file_is_refused(tmp_path, text, message):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_cluster_config(path)


def test_cli_refuses_a_cluster_file_failing_the_schema(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text('cluster_name: x\nmax_workers: "two"\nprovider: {type: aws, region: us-west-2}\n')
    result = runner.invoke(app, ["train", "vae", "--data", "x.zarr", "--preset", "debug", "--cluster", str(path)])
    assert result.exit_code == 2
    assert "fails Ray's cluster schema at max_workers: 'two' is not of type 'integer'" in result.output
    result = runner.invoke(app, ["jobs", "list", "--cluster", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "missing.yaml: no such file" in result.output


# ---- the forwarded command line ----------------------------------------------------------------------------

def _echo_app() -> typer.Typer:
    demo = typer.Typer()
    sub = typer.Typer()
    demo.add_typer(sub, name="grp")

    @demo.callback()
    def root(verbose: bool = typer.Option(False, "--verbose")) -> None:
        """root"""

    @sub.callback()
    def grp(seed: int = typer.Option(0)) -> None:
        """group"""

    @sub.command("run")
    def run(ctx: typer.Context,
            src: Path = typer.Argument(...),
            data: str = typer.Option(...),
            lr: float = typer.Option(1e-3),
            out: Path = typer.Option(Path("runs/x")),
            epochs: Optional[int] = typer.Option(None),
            resume: bool = typer.Option(False),
            as_json: bool = typer.Option(False, "--json"),
            cond: list[str] = typer.Option([]),
            address: Optional[str] = typer.Option(None)) -> None:
        typer.echo(json.dumps({"argv": jobs_client.command_line(ctx), "params": {
            k: str(v) for k, v in ctx.params.items()}, "seed": ctx.parent.params["seed"]}))

    return demo


def test_command_line_keeps_given_options_and_round_trips():
    demo = _echo_app()
    args = ["grp", "--seed", "3", "run", "--data", "s3://b/city.zarr", "--lr", "0.0003", "--no-resume", "--json",
            "--cond", "command=left", "--cond", "layout", "--address", "http://h:8265", "src dir"]
    first = runner.invoke(demo, args)
    assert first.exit_code == 0, first.output
    got = json.loads(first.output)
    assert got["argv"] == ["grp", "--seed", "3", "run", "--data", "s3://b/city.zarr", "--lr", "0.0003",
                           "--no-resume", "--json", "--cond", "command=left", "--cond", "layout", "src dir"]
    again = runner.invoke(demo, got["argv"])  # the forwarded line parses to the same values, minus --address
    assert again.exit_code == 0, again.output
    replay = json.loads(again.output)
    assert replay["seed"] == 3 and replay["argv"] == got["argv"]
    assert {**replay["params"], "address": "http://h:8265"} == got["params"]


def test_entry_point_per_command_family(tmp_path):
    assert jobs_client.entry_point(["train", "vae", "--data", "x"], REPO) == "jobs/train.py"
    assert jobs_client.entry_point(["data", "synth-city"], REPO) == "jobs/data.py"
    with pytest.raises(ValueError, match=r"'dcgen render' has no Ray Job entry point jobs/render.py"):
        jobs_client.entry_point(["render", "x.zarr"], REPO)


def test_runtime_env_ships_the_checkout_without_heavy_paths():
    env = jobs_client.runtime_env(jobs_client.source_root())
    assert Path(env["working_dir"]) == REPO
    assert {".venv", ".git", "*.zarr", "runs"} <= set(env["excludes"])


def test_auth_token_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "DCGEN_TEST_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert jobs_client.auth_headers() == {}
    with pytest.raises(ValueError, match="--token-env DCGEN_TEST_TOKEN: that environment variable is unset"):
        jobs_client.auth_headers("DCGEN_TEST_TOKEN")
    monkeypatch.setenv("DCGEN_TEST_TOKEN", "abc")
    assert jobs_client.auth_headers("DCGEN_TEST_TOKEN") == {"Authorization": "Bearer abc"}
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="RAY_AUTH_TOKEN_PATH=.*nope: no such file"):
        jobs_client.auth_headers()
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-file\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    assert jobs_client.auth_headers() == {"Authorization": "Bearer from-file"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs_client.auth_headers() == {"Authorization": "Bearer from-env"}


def test_unreachable_address_is_a_clear_error():
    port = _free_port()
    result = runner.invoke(app, ["train", "vae", "--data", "x.zarr", "--preset", "debug",
                                 "--address", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 2
    assert f"cannot reach the Ray job server at http://127.0.0.1:{port}" in result.output
    result = runner.invoke(app, ["jobs", "list", "--address", "127.0.0.1:6379"])
    assert result.exit_code == 2 and "expected a Ray job server URL such as http://HEAD:8265" in result.output
    result = runner.invoke(app, ["jobs", "list", "--address", "http://127.0.0.1:notaport"])
    assert result.exit_code == 2 and "the port is not a number" in result.output
    result = runner.invoke(app, ["jobs", "list"])
    assert result.exit_code == 2 and "--address http://HEAD:8265 or --cluster cluster.yaml" in result.output


def test_exit_code_follows_the_job():
    from ray.dashboard.modules.job.common import JobInfo, JobStatus

    assert jobs_client.exit_code(JobInfo(status=JobStatus.SUCCEEDED, entrypoint="x")) == 0
    assert jobs_client.exit_code(JobInfo(status=JobStatus.FAILED, entrypoint="x", driver_exit_code=2)) == 2
    assert jobs_client.exit_code(JobInfo(status=JobStatus.FAILED, entrypoint="x")) == 1
    assert jobs_client.exit_code(JobInfo(status=JobStatus.STOPPED, entrypoint="x")) == 1


# ---- a real Ray head on 127.0.0.1 --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_head():
    """A separate `ray start --head --block` on loopback with token auth and its own temp dir (so no other
    process's ray.init() finds it); stopped by its pid at the end, never with `ray stop`."""
    temp = tempfile.mkdtemp(prefix="dcgen-ray-", dir="/tmp")
    job_dir = Path(temp) / "jobdir"
    token = secrets.token_hex(16)
    ports = {k: _free_port() for k in ("gcs", "dashboard", "client", "agent", "metrics")}
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "DCGEN_JOB_DIR": str(job_dir),
           "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "2",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    ray_bin = Path(sys.executable).parent / "ray"
    log = open(Path(temp) / "head.log", "w")
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={ports['gcs']}",
         f"--dashboard-port={ports['dashboard']}", "--dashboard-host=127.0.0.1",
         f"--ray-client-server-port={ports['client']}", f"--dashboard-agent-listen-port={ports['agent']}",
         f"--metrics-export-port={ports['metrics']}", "--num-cpus=4", f"--temp-dir={temp}",
         "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        deadline = time.time() + 120
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start exited with {head.returncode}: {(Path(temp) / 'head.log').read_text()[-2000:]}")
            try:
                os.environ["DCGEN_TEST_TOKEN"] = token
                jobs_client.connect(url, "DCGEN_TEST_TOKEN")
                break
            except ValueError:
                if time.time() > deadline:
                    pytest.fail(f"the test head's job server at {url} did not come up in 120 s")
                time.sleep(1.0)
        yield {"url": url, "token": token, "job_dir": job_dir}
    finally:
        os.environ.pop("DCGEN_TEST_TOKEN", None)
        head.terminate()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture
def with_token(ray_head, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", ray_head["token"])
    monkeypatch.setenv("DCGEN_TEST_TOKEN", ray_head["token"])
    return ray_head


@pytest.mark.slow
def test_remote_synth_city_then_vae_fit_leave_their_outputs(with_token, tmp_path):
    from dcgen.data.store import SceneStore

    url, job_dir = with_token["url"], with_token["job_dir"]
    store = tmp_path / "city.zarr"
    result = runner.invoke(app, ["data", "synth-city", "--clips", "16", "--out", str(store), "--preset", "debug",
                                 "--workers", "2", "--address", url])
    assert result.exit_code == 0, result.output
    assert "wrote 16 synthetic debug clips" in result.output  # streamed from the job's log
    assert SceneStore.open(str(store)).describe()["clips"] == 16

    # a relative --out resolves under the cluster's DCGEN_JOB_DIR, not the job's temporary working directory
    result = runner.invoke(app, ["train", "vae", "--data", str(store), "--preset", "debug", "--out", "runs/vae",
                                 "--epochs", "1", "--address", url])
    assert result.exit_code == 0, result.output
    assert "VAE trained" in result.output and "succeeded" in result.output
    meta = json.loads((job_dir / "runs" / "vae" / "best" / "meta.json").read_text())
    assert meta["kind"] == "vae"

    listing = runner.invoke(app, ["jobs", "list", "--address", url, "--token-env", "DCGEN_TEST_TOKEN", "--json"])
    assert listing.exit_code == 0, listing.output
    rows = json.loads(listing.output)
    vae_job = next(r for r in rows if r["command"].startswith("train vae"))
    assert vae_job["status"] == "SUCCEEDED" and vae_job["id"].startswith("dcgen-train-vae-")
    assert any(r["command"].startswith("data synth-city") and r["status"] == "SUCCEEDED" for r in rows)
    logs = runner.invoke(app, ["jobs", "logs", vae_job["id"], "--address", url])
    assert logs.exit_code == 0 and "VAE trained" in logs.output
    stop = runner.invoke(app, ["jobs", "stop", vae_job["id"], "--address", url])
    assert stop.exit_code == 0 and "had already ended" in stop.output


@pytest.mark.slow
def test_a_project_runs_on_the_cluster_as_written(with_token, tmp_path, monkeypatch):
    """In a project directory, `dcgen data synth-city` and `dcgen train vae` with --address and no path options:
    the project file's relative paths resolve under DCGEN_JOB_DIR, and the job reads no project file of its own."""
    from dcgen.data.store import SceneStore

    url, job_dir = with_token["url"], with_token["job_dir"]
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "dcgen.yaml").write_text("version: 1\nnot_a_key: 1\n")  # would fail any command that read it
    # names of its own: the module's other remote tests write city.zarr and runs/ into the same job directory
    result = runner.invoke(app, ["init", str(tmp_path / "proj"), "--data", "proj-city.zarr", "--preset", "debug",
                                 "--runs", "proj-runs"])
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path / "proj")
    result = runner.invoke(app, ["data", "synth-city", "--clips", "16", "--workers", "2", "--address", url])
    assert result.exit_code == 0, result.output
    assert "dcgen data synth-city --clips 16 --out proj-city.zarr --preset debug" in result.output  # as forwarded
    assert SceneStore.open(str(job_dir / "proj-city.zarr")).describe()["clips"] == 16
    result = runner.invoke(app, ["train", "vae", "--epochs", "1", "--address", url])
    assert result.exit_code == 0, result.output
    assert json.loads((job_dir / "proj-runs" / "vae" / "best" / "meta.json").read_text())["kind"] == "vae"
    assert not (tmp_path / "proj" / "proj-city.zarr").exists() and not (tmp_path / "proj" / "proj-runs").exists()


@pytest.mark.slow
def test_remote_synth_writes_exactly_n_scenes(with_token, tmp_path):
    from dcgen.bench.serve import write_untrained_checkpoints

    from dcgen.data.store import SceneStore

    vae, dit = write_untrained_checkpoints("debug", tmp_path / "ckpt")
    out = tmp_path / "scenes.zarr"
    result = runner.invoke(app, ["synth", "--vae", vae, "--dit", dit, "--n", "8", "--cond", "command", "--steps", "2",
                                 "--workers", "1", "--out", str(out), "--address", with_token["url"]])
    assert result.exit_code == 0, result.output
    assert "8/8 scenes" in result.output  # the job's summary line, streamed from its log
    assert SceneStore.open(str(out)).num_clips == 8


@pytest.mark.slow
def test_failing_remote_job_exits_non_zero_with_its_log_tail(with_token, tmp_path):
    missing = tmp_path / "missing.zarr"
    result = runner.invoke(app, ["train", "vae", "--data", str(missing), "--preset", "debug",
                                 "--out", str(tmp_path / "run"), "--address", with_token["url"]])
    assert result.exit_code == 2, result.output  # the remote command's own exit code
    assert "FAILED (exit code 2)" in result.output
    tail = result.output.split("lines of its log ---", 1)[1]
    assert "missing.zarr" in tail and "error:" in tail
    follow = runner.invoke(app, ["jobs", "logs", "--follow", "dcgen-no-such-job", "--address", with_token["url"]])
    assert follow.exit_code == 2 and "dcgen-no-such-job" in follow.output


@pytest.mark.slow
def test_wrong_or_missing_token_is_refused(ray_head, monkeypatch):
    monkeypatch.setenv("DCGEN_WRONG_TOKEN", "not-the-token")
    result = runner.invoke(app, ["jobs", "list", "--address", ray_head["url"], "--token-env", "DCGEN_WRONG_TOKEN"])
    assert result.exit_code == 2
    assert "refused the token it was sent" in result.output and "RAY_AUTH_TOKEN" in result.output
