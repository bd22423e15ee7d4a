"""The cluster side of a remote run: what every ``jobs/<command>.py`` Ray Job entry point does (issue 8).

The job was submitted by ``jobs_client`` with the user's command line; here it runs in-process through the same
Typer app, so a remote command behaves exactly like a local one. First the process joins the cluster it runs on
(``RAY_ADDRESS`` is set by the job supervisor), so the command's own ``init_ray()`` reuses that connection instead
of starting an embedded Ray. Relative paths resolve under ``DCGEN_JOB_DIR`` (``cluster.yaml`` points it at the
shared /mnt/dcgen), else the home directory of the head's user: never the job's temporary working directory, in
the driver and in every worker process (``enter_job_dir``).
"""

from __future__ import annotations

import os
from pathlib import Path


def job_dir() -> Path:
    return Path(os.environ.get("DCGEN_JOB_DIR") or Path.home()).expanduser()


def enter_job_dir() -> None:
    """Ray's ``worker_process_setup_hook`` of remote jobs (``jobs_client.runtime_env``): every worker process of the
    job (Ray Train workers, Ray Data tasks) works in the job directory as the driver does, so a relative path names
    the same file in both; the job's code stays importable (Ray puts its working_dir on PYTHONPATH)."""
    where = job_dir()
    where.mkdir(parents=True, exist_ok=True)
    os.chdir(where)


def run_command(command: str, argv: list[str]) -> int:
    """Run ``dcgen COMMAND ARGV`` inside a Ray Job; returns its exit status."""
    from dcgen.cli import app
    from dcgen.project import NO_PROJECT
    from dcgen.runtime import init_ray

    where = job_dir()
    where.mkdir(parents=True, exist_ok=True)
    os.chdir(where)
    print(f"dcgen job: running 'dcgen {command}' in {where} (relative paths resolve here)", flush=True)
    init_ray("auto")
    try:
        # the command line carries every value the submitter's project file gave; one lying around here is not read
        app(args=["--project", NO_PROJECT, command, *argv], prog_name="dcgen")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
