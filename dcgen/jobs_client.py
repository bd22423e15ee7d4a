"""Remote runs as Ray Jobs: forward a dcgen command line to a cluster's job server, stream its log, return its status.

The client side of issue 8's remote runs (the cluster side is ``job_entry``). The command line a user typed is
rebuilt from the parsed CLI context (every parameter given on the command line, minus ``--cluster``/``--address``)
and submitted with the Ray Job Submission SDK as ``python jobs/<command>.py ARGS``; the source tree travels as the
job's ``runtime_env`` working directory, so ``import dcgen`` on the cluster gets the code of this checkout.
Ray 2.60 enables token authentication (PLATFORM-NOTES): the token is sent as a bearer header, read from
``--token-env NAME``, else ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (Ray's own order).
Only this file touches the Ray Jobs and autoscaler APIs (``job_entry`` runs the command on the cluster).

Cluster-launcher files: check one against Ray's own schema, and find (or bring up) the head of its cluster.

A remote run (``--cluster cluster.yaml``, issue 8) needs the URL of the cluster's job server. The file is first
checked offline with the autoscaler's ``prepare_config`` + ``validate_config`` (the checks ``ray up`` makes; no
cloud credentials needed), so a malformed file fails here with Ray's message instead of after minutes of
provisioning. Then the head is looked up through the autoscaler SDK, and created with ``create_or_update_cluster``
only when none is running. Provider SDKs (boto3 for AWS) are needed from that step on: ``pip install
'dcgen[cloud]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shlex
import socket
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlsplit

from dcgen.project import META_KEY as PROJECT_META

#: Paths of the source tree that never travel with a job: environments, VCS data, run outputs, stores.
EXCLUDES = (".git", ".venv", "venv", "runs", "out", "*.zarr", "__pycache__", "*.egg-info", ".pytest_cache",
            "dcgen-quickstart")
LOG_TAIL_LINES = 40
CONNECT_TIMEOUT_S = 10.0
_FORWARDED_SOURCES = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def is_job_server(address: str | None) -> bool:
    """True for a job-server URL (``http(s)://HOST:PORT``), which submits a job; other addresses join Ray."""
    return address is not None and address.startswith(("http://", "https://"))


# ---- the command line --------------------------------------------------------------------------------------

def command_line(ctx, drop: Iterable[str] = ("cluster", "address")) -> list[str]:
    """The invocation of ``ctx`` (a Typer/Click context) as argv: command words, each followed by the parameters
    given on the command line at that level or filled from the project file; defaults are left to the remote side,
    ``drop`` names are left out."""
    chain = []
    while ctx is not None:
        chain.append(ctx)
        ctx = ctx.parent
    argv: list[str] = []
    drop = set(drop)
    project = chain[-1].meta.get(PROJECT_META)  # dcgen.cli.project.ProjectDefaults, when the root has --project
    for level in reversed(chain[:-1]):  # the root is the program itself
        argv.append(level.info_name)
        options, positionals = [], []
        for param in level.command.params:
            if param.name in drop or not param.expose_value or param.name not in level.params:
                continue
            source = level.get_parameter_source(param.name)
            value = level.params[param.name]
            if source is not None and source.name == "DEFAULT_MAP" and project is not None:
                # filled from the project file: sent as the file writes it, so its relative paths resolve under
                # DCGEN_JOB_DIR on the cluster (README "Cluster"); None for a --config value (the flag travels).
                # A group's own values matter only when it runs itself, not a subcommand (`train` vs `train vae`)
                value = project.sent_value(level, param.name) if level is chain[0] else None
                if value is None:
                    continue
            elif source is None or source.name not in _FORWARDED_SOURCES:
                continue
            if param.param_type_name == "argument":
                positionals += [_text(v) for v in (value if param.nargs != 1 else [value])]
            else:
                options += _option_tokens(param, value)
        argv += options + positionals
    return argv


def _option_tokens(param, value) -> list[str]:
    name = next((o for o in param.opts if o.startswith("--")), param.opts[0])
    if value is None:
        return []
    if param.count:
        return [name] * int(value)
    if param.is_flag:
        if param.secondary_opts:
            off = next((o for o in param.secondary_opts if o.startswith("--")), param.secondary_opts[0])
            return [name if value else off]
        return [name] if value else []
    values = value if param.multiple else [value]
    tokens = []
    for v in values:
        tokens += [name, *([_text(x) for x in v] if param.nargs != 1 else [_text(v)])]
    return tokens


def _text(value) -> str:
    return str(value.value) if isinstance(value, Enum) else str(value)


def entry_point(argv: list[str], root: Path) -> str:
    """``jobs/<command>.py``: the Ray Job entry point of the command family ``argv[0]``."""
    if not argv:
        raise ValueError("no command to run remotely (expected e.g. 'train vae ...')")
    script = Path("jobs") / f"{argv[0]}.py"
    if not (root / script).is_file():
        raise ValueError(f"'dcgen {argv[0]}' has no Ray Job entry point {script} in {root}; it cannot run with "
                         "--cluster/--address")
    return script.as_posix()


def source_root() -> Path:
    """The checkout that ships with every job: it holds dcgen/ and jobs/."""
    import dcgen

    root = Path(dcgen.__file__).resolve().parent.parent
    if not (root / "jobs").is_dir() or not (root / "pyproject.toml").is_file():
        raise ValueError(f"dcgen is imported from {root}, which is not a source checkout (no jobs/ or "
                         "pyproject.toml): remote runs ship the source tree, so install dcgen with "
                         "`pip install -e .` from a clone")
    return root


def runtime_env(root: Path) -> dict:
    """The job's environment: the source tree as working directory (on PYTHONPATH there), plain log output, and
    every worker process in DCGEN_JOB_DIR like the driver (relative paths then mean the same file to both)."""
    return {"working_dir": str(root), "excludes": list(EXCLUDES),
            "env_vars": {"PYTHONUNBUFFERED": "1", "TYPER_USE_RICH": "0"},
            "worker_process_setup_hook": "dcgen.job_entry.enter_job_dir"}


# ---- the job server ----------------------------------------------------------------------------------------

def auth_headers(token_env: str | None = None) -> dict[str, str]:
    """The bearer header for a token-auth cluster, or ``{}`` when no token is configured on this machine."""
    if token_env is not None:
        token = os.environ.get(token_env, "").strip()
        if not token:
            raise ValueError(f"--token-env {token_env}: that environment variable is unset or empty (expected the "
                             "cluster's auth token; `ray get-auth-token` on the head prints it)")
    else:
        token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
        path = os.environ.get("RAY_AUTH_TOKEN_PATH")
        if not token and path:
            if not os.path.isfile(path):
                raise ValueError(f"RAY_AUTH_TOKEN_PATH={path}: no such file (expected a file holding the cluster's "
                                 "auth token)")
            token = Path(path).read_text().strip()
        default = Path.home() / ".ray" / "auth_token"
        if not token and default.is_file():
            token = default.read_text().strip()
    return {"Authorization": f"Bearer {token}"} if token else {}


def connect(address: str, token_env: str | None = None):
    """A ``JobSubmissionClient`` for the job server at ``address`` (``http(s)://HOST:PORT``), checked reachable."""
    if not is_job_server(address):
        raise ValueError(f"--address {address!r}: expected a Ray job server URL such as http://HEAD:8265")
    url = address.rstrip("/")
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"--address {address!r}: the port is not a number") from None
    if not parts.hostname:
        raise ValueError(f"--address {address!r}: no host name (expected http://HEAD:8265)")
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ValueError(f"cannot reach the Ray job server at {url}: {e.strerror or e}. Is the cluster up and "
                         f"port {port} open to this machine? (`ray dashboard cluster.yaml` tunnels it to "
                         "http://127.0.0.1:8265)") from None
    headers = auth_headers(token_env)
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # The SDK lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS override an explicit address; here the flag wins.
    with _env_without("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        try:
            return JobSubmissionClient(url, headers=headers)
        except AuthenticationError as e:
            raise ValueError(_auth_message(url, bool(headers), e)) from None
        except (ConnectionError, RuntimeError) as e:
            raise ValueError(f"the Ray job server at {url} did not answer as one: {e}") from None


def _auth_message(url: str, token_sent: bool | None, error: Exception) -> str:
    what = {True: "refused the token it was sent", False: "requires a token and none was sent",
            None: "refused the request's token"}[token_sent]
    return (f"the Ray job server at {url} {what}: put the cluster's token in RAY_AUTH_TOKEN (or name its "
            f"variable with --token-env); `ray get-auth-token` on the head prints it ({str(error).splitlines()[0]})")


@contextlib.contextmanager
def _env_without(*names: str):
    saved = {n: os.environ.pop(n) for n in names if n in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def _call(client, what: str, fn, *args):
    """A job-server call whose failures become one-line ValueErrors (unknown job id, refused token)."""
    from ray.exceptions import AuthenticationError

    try:
        return fn(*args)
    except AuthenticationError as e:
        raise ValueError(_auth_message(client.get_address(), None, e)) from None
    except RuntimeError as e:
        raise ValueError(f"{what}: {str(e).splitlines()[0]}") from None


# ---- jobs --------------------------------------------------------------------------------------------------

def submit(client, argv: list[str], *, root: Path | None = None, entrypoint_gpus: float = 0.0) -> str:
    """Submit ``dcgen ARGV`` as a job; returns its submission id. ``entrypoint_gpus`` reserves GPUs for the
    command's own process (for commands that compute in the driver rather than in Ray tasks)."""
    import dcgen

    root = root or source_root()
    script = entry_point(argv, root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    words = [w for w in argv[:2] if re.fullmatch(r"[a-z][a-z0-9-]*", w)]
    submission_id = f"dcgen-{'-'.join(words)}-{stamp}-{secrets.token_hex(3)}"
    return _call(client, "submitting the job", lambda: client.submit_job(
        entrypoint=f"python {script} {shlex.join(argv[1:])}".rstrip(),
        submission_id=submission_id,
        runtime_env=runtime_env(root),
        metadata={"dcgen_command": shlex.join(argv), "dcgen_version": dcgen.__version__,
                  "submitted_from": socket.gethostname()},
        entrypoint_num_gpus=entrypoint_gpus or None,
    ))


def follow(client, job_id: str, write: Callable[[str], object] = sys.stdout.write, poll_s: float = 1.0):
    """Stream the job's log to ``write`` until it ends; returns its final ``JobDetails``."""

    import aiohttp

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    _call(client, f"job {job_id}", client.get_job_info, job_id)  # an unknown id fails here, by name
    try:
        asyncio.run(tail())
    except (RuntimeError, aiohttp.ClientError):
        pass  # the log stream closed before the job ended (server restart, proxy timeout): poll the status
    while True:
        info = _call(client, f"job {job_id}", client.get_job_info, job_id)
        if info.status.is_terminal():
            return info
        time.sleep(poll_s)


def exit_code(info) -> int:
    """0 for a job that succeeded; the command's own exit code (else 1) for one that failed or was stopped."""
    if info.status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    return code if isinstance(code, int) and code > 0 else 1


def status_message(info) -> str:
    """The first line of Ray's status message (the rest repeats the log)."""
    return (info.message or "no message").strip().splitlines()[0].split(", last available logs")[0].rstrip(",:")


def _status(info) -> str:
    return str(getattr(info.status, "value", info.status))


def log_tail(client, job_id: str, lines: int = LOG_TAIL_LINES) -> str:
    text = _call(client, f"job {job_id}", client.get_job_logs, job_id)
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def run_remote(ctx, *, cluster: str | os.PathLike | None = None, address: str | None = None,
               token_env: str | None = None, entrypoint_gpus: float = 0.0, log: Callable[[str], object] = print,
               write: Callable[[str], object] = sys.stdout.write) -> int:
    """Run the command of ``ctx`` on a cluster as a Ray Job and return its exit status (0 on success). On failure
    the status line and the log's last lines go to ``log``. Ctrl-C detaches; the job keeps running."""
    if cluster is not None and address is not None:
        raise ValueError(f"give --cluster ({cluster}) or --address ({address}), not both")
    argv = command_line(ctx)
    if cluster is not None:

        address = head_job_server(cluster, log=log)
    client = connect(address, token_env)
    job_id = submit(client, argv, entrypoint_gpus=entrypoint_gpus)
    log(f"submitted Ray job {job_id} to {address}: dcgen {shlex.join(argv)}")
    try:
        info = follow(client, job_id, write)
    except KeyboardInterrupt:
        log(f"detached from job {job_id}; it keeps running. Follow it with `dcgen jobs logs {job_id} --follow "
            f"--address {address}`, stop it with `dcgen jobs stop {job_id} --address {address}`")
        return 130
    code = exit_code(info)
    if code:
        log(f"error: Ray job {job_id} {_status(info)} "
            f"(exit code {code}): {status_message(info)}\n--- last {LOG_TAIL_LINES} lines of its log ---\n"
            f"{log_tail(client, job_id)}")
    else:
        log(f"Ray job {job_id} succeeded")
    return code


def list_jobs(client) -> list[dict]:
    """Submitted jobs, oldest first: id, status, start/end (epoch ms), the dcgen command, message."""
    rows = []
    for job in _call(client, "listing jobs", client.list_jobs):
        if not job.submission_id:
            continue  # drivers started directly on the cluster, not through the job server
        rows.append({"id": job.submission_id, "status": _status(job),
                     "start_time": job.start_time, "end_time": job.end_time,
                     "command": (job.metadata or {}).get("dcgen_command", job.entrypoint),
                     "message": job.message or ""})
    return sorted(rows, key=lambda r: r["start_time"] or 0)


def job_logs(client, job_id: str) -> str:
    return _call(client, f"job {job_id}", client.get_job_logs, job_id)


def stop_job(client, job_id: str) -> bool:
    """Ask the job to stop; False when it had already ended."""
    return bool(_call(client, f"job {job_id}", client.stop_job, job_id))


# ---- cluster-launcher files ----------------------------------------------------------------------------------

DEFAULT_DASHBOARD_PORT = 8265


def load_cluster_config(path: str | os.PathLike) -> dict:
    """The cluster-launcher file at ``path`` with Ray's defaults filled in, after Ray's schema checks."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"cluster file {path}: no such file (expected a Ray cluster-launcher YAML, e.g. "
                         "cluster.yaml at the repository root)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"cluster file {path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"cluster file {path}: expected a YAML mapping (cluster_name, provider, "
                         f"available_node_types, ...), got {type(raw).__name__}")
    if not isinstance(raw.get("provider"), dict) or "type" not in raw["provider"]:
        raise ValueError(f"cluster file {path}: 'provider' with a 'type' (aws, gcp, azure, ...) is required")
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        config = prepare_config(raw)
        validate_config(config)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ValueError(f"cluster file {path}: fails Ray's cluster schema at {where}: {e.message}") from None
    except (ValueError, KeyError, NotImplementedError, AssertionError) as e:
        raise ValueError(f"cluster file {path}: rejected by Ray's cluster checks: {e}") from None
    return config


def dashboard_port(config: dict) -> int:
    """The job server's port: ``--dashboard-port`` in the head's start commands, else Ray's default 8265."""
    for command in config.get("head_start_ray_commands", []):
        m = re.search(r"--dashboard-port[= ](\d+)", str(command))
        if m:
            return int(m.group(1))
    return DEFAULT_DASHBOARD_PORT


def head_job_server(path: str | os.PathLike, *, create: bool = True, log=print) -> str:
    """``http://HEAD:PORT`` of the cluster described by ``path``; brings the cluster up first if no head runs
    and ``create`` is set (what ``ray up`` does; file mounts are resolved against the file's directory)."""
    path = Path(path).resolve()
    config = load_cluster_config(path)
    config = _with_absolute_mounts(config, path.parent)
    try:
        from ray.autoscaler.sdk import create_or_update_cluster, get_head_node_ip

        try:
            ip = get_head_node_ip(config)
        except RuntimeError as e:
            if "not found" not in str(e).lower() or not create:
                raise
            log(f"no head node of cluster {config['cluster_name']!r} is running: bringing it up from {path} "
                "(this takes several minutes; `ray up` does the same)")
            create_or_update_cluster(config, no_restart=True)
            ip = get_head_node_ip(config)
    except ImportError as e:
        raise ValueError(f"cluster file {path}: the {config['provider']['type']!r} provider's SDK is missing on "
                         f"this machine: pip install -e '.[cloud]' ({e})") from None
    except Exception as e:  # provider SDKs raise their own types (botocore, googleapiclient): name the step
        raise ValueError(f"cluster file {path}: could not find or start the head node of cluster "
                         f"{config['cluster_name']!r}: {type(e).__name__}: {e}") from None
    return f"http://{ip}:{dashboard_port(config)}"


def _with_absolute_mounts(config: dict, base: Path) -> dict:
    """``file_mounts`` local paths made absolute against ``base`` so the result does not depend on the cwd."""
    mounts = {remote: local if os.path.isabs(os.path.expanduser(local)) else str(base / local)
              for remote, local in config.get("file_mounts", {}).items()}
    return {**config, "file_mounts": mounts}
