"""``dcgen jobs``: list, follow and stop the Ray Jobs that ``--cluster`` / ``--address`` submitted to a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from dcgen.cli.common import fail, user_errors

jobs_app = typer.Typer(help="Ray Jobs on a cluster: list, logs, stop. (Submit one by adding --cluster or --address "
                       "to a long command, e.g. dcgen train vae ... --cluster cluster.yaml.)", no_args_is_help=True)
JOBS_ADDRESS_OPTION = typer.Option(None, "--address", help="The cluster's job server, e.g. http://HEAD:8265.")
JOBS_CLUSTER_OPTION = typer.Option(None, "--cluster", help="Cluster-launcher YAML whose (running) head to ask.")
TOKEN_ENV_OPTION = typer.Option(None, "--token-env", help="Environment variable holding the cluster's auth token "
                                "(default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token).")


def _job_server(cluster: Optional[Path], address: Optional[str], token_env: Optional[str]):
    from dcgen import jobs_client

    if (cluster is None) == (address is None):
        fail("give the cluster's job server with --address http://HEAD:8265 or --cluster cluster.yaml (one of them)")
    with user_errors():
        if cluster is not None:
            from dcgen.jobs_client import head_job_server

            address = head_job_server(cluster, create=False)
        return jobs_client.connect(address, token_env)


@jobs_app.command("list", help="Jobs submitted to the cluster, oldest first.\n\n"
                  "Example: dcgen jobs list --address http://127.0.0.1:8265")
def jobs_list_cmd(
    address: Optional[str] = JOBS_ADDRESS_OPTION,
    cluster: Optional[Path] = JOBS_CLUSTER_OPTION,
    token_env: Optional[str] = TOKEN_ENV_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the jobs as JSON."),
) -> None:
    import datetime as dt
    import json

    from dcgen import jobs_client

    client = _job_server(cluster, address, token_env)
    with user_errors():
        rows = jobs_client.list_jobs(client)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no jobs")
        return
    width = max(len(r["id"]) for r in rows)
    typer.echo(f"{'ID':<{width}}  {'STATUS':<9}  {'STARTED':<19}  COMMAND")
    for r in rows:
        started = dt.datetime.fromtimestamp(r["start_time"] / 1000).strftime("%Y-%m-%d %H:%M:%S") \
            if r["start_time"] else "-"
        typer.echo(f"{r['id']:<{width}}  {r['status']:<9}  {started:<19}  {r['command']}")


@jobs_app.command("logs", help="Print a job's log (--follow: stream it until the job ends, then exit with its "
                  "status).\n\nExample: dcgen jobs logs dcgen-train-vae-20260101-120000-a1b2c3 --address "
                  "http://127.0.0.1:8265")
def jobs_logs_cmd(
    job_id: str = typer.Argument(..., help="Submission id (see 'dcgen jobs list')."),
    follow: bool = typer.Option(False, "--follow", help="Stream until the job ends; exit with its status."),
    address: Optional[str] = JOBS_ADDRESS_OPTION,
    cluster: Optional[Path] = JOBS_CLUSTER_OPTION,
    token_env: Optional[str] = TOKEN_ENV_OPTION,
) -> None:
    from dcgen import jobs_client

    client = _job_server(cluster, address, token_env)
    with user_errors():
        if not follow:
            typer.echo(jobs_client.job_logs(client, job_id), nl=False)
            return
        info = jobs_client.follow(client, job_id, write=lambda s: typer.echo(s, nl=False))
    code = jobs_client.exit_code(info)
    if code:
        typer.echo(f"error: job {job_id} {info.status} (exit code {code}): {jobs_client.status_message(info)}",
                   err=True)
    raise typer.Exit(code=code)


@jobs_app.command("stop", help="Stop a running job.\n\nExample: dcgen jobs stop JOB_ID --address http://127.0.0.1:8265")
def jobs_stop_cmd(
    job_id: str = typer.Argument(..., help="Submission id (see 'dcgen jobs list')."),
    address: Optional[str] = JOBS_ADDRESS_OPTION,
    cluster: Optional[Path] = JOBS_CLUSTER_OPTION,
    token_env: Optional[str] = TOKEN_ENV_OPTION,
) -> None:
    from dcgen import jobs_client

    client = _job_server(cluster, address, token_env)
    with user_errors():
        stopped = jobs_client.stop_job(client, job_id)
    typer.echo(f"stop requested for job {job_id}" if stopped else f"job {job_id} had already ended")
