"""``dcgen serve``: conditioned scenes over HTTP. The command turns its options into a ``ServeConfig``; starting
Serve, waiting for Ctrl-C or SIGTERM and shutting down are ``dcgen.serve.lifecycle``'s."""

from __future__ import annotations

from typing import Optional

import typer

from dcgen.cli.common import app, user_errors


@app.command("serve", help="Serve conditioned scenes over HTTP (Ray Serve; API v1: POST /v1/scenes, GET /v1/info, "
             "GET /v1/health), batching scenes of concurrent requests.\n\n"
             "Example: DCGEN_TOKEN=$(openssl rand -hex 24) dcgen serve --vae runs/vae/best --dit runs/dit/best "
             "--token-env DCGEN_TOKEN")
def serve_cmd(
    vae: str = typer.Option(..., "--vae", help="VAE checkpoint directory."),
    dit: str = typer.Option(..., "--dit", help="DiT checkpoint directory (trained on latents of --vae)."),
    host: str = typer.Option("127.0.0.1", help="Bind address; 0.0.0.0 exposes the server to the network."),
    port: int = typer.Option(8000, help="HTTP port."),
    replicas: int = typer.Option(1, help="Model replicas (the minimum with --max-replicas)."),
    max_replicas: Optional[int] = typer.Option(None, help="Autoscale model replicas up to this many."),
    gpus_per_replica: float = typer.Option(0.0, help="GPUs per model replica (0 = CPU)."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per model replica."),
    max_batch_size: int = typer.Option(8, help="Scenes per model batch (1 = no batching)."),
    batch_wait_s: float = typer.Option(0.05, help="Most seconds a batch waits for as many scenes as the last "
                                       "batch had (a lone client never waits)."),
    micro_batch: int = typer.Option(8, help="The pipeline's network batch; scenes match 'dcgen synth' run with the "
                                    "same value."),
    token_env: Optional[str] = typer.Option(None, help="Environment variable holding a bearer token clients must "
                                            "send (>= 16 characters); default: no authentication."),
    max_count: int = typer.Option(16, help="Most scenes one request may ask for (more: HTTP 413)."),
    max_body_mb: float = typer.Option(64.0, help="Largest request body in MiB (larger: HTTP 413)."),
    address: Optional[str] = typer.Option(None, help="Existing Ray cluster address (default: embedded local Ray)."),
) -> None:
    from dcgen.serve.config import ServeConfig
    from dcgen.serve.lifecycle import ServeDidNotStart, serve_until_stopped

    with user_errors(ServeDidNotStart):
        config = ServeConfig(vae=vae, dit=dit, host=host, port=port, replicas=replicas, max_replicas=max_replicas,
                             gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica,
                             max_batch_size=max_batch_size, batch_wait_s=batch_wait_s, micro_batch=micro_batch,
                             token_env=token_env, max_count=max_count, max_body_bytes=int(max_body_mb * 2**20))
        serve_until_stopped(config, address, announce=typer.echo, log=lambda m: typer.echo(m, err=True))
