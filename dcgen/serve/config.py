"""How a dcgen Serve application is deployed: checkpoints, address, replicas, batching and request limits.

``ServeConfig`` is what ``dcgen serve`` builds from its options and what a ``serve deploy`` config file passes as
application ``args``; ``IngressSettings`` is the part the HTTP ingress needs (limits, batching numbers for
``/v1/info``, and the SHA-256 of the bearer token, never the token itself, so the secret stays out of Serve's
stored deployment arguments).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
from dataclasses import asdict, dataclass

LOOPBACK = "127.0.0.1"
MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class ServeConfig:
    vae: str  # VAE checkpoint directory
    dit: str  # DiT checkpoint directory (trained on latents of this VAE)
    host: str = LOOPBACK  # the HTTP proxy's bind address; anything else exposes the server to the network
    port: int = 8000
    replicas: int = 1  # model replicas (the minimum when autoscaling)
    max_replicas: int | None = None  # autoscale model replicas between `replicas` and this; None = fixed count
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_batch_size: int = 8  # scenes per model batch; 1 turns batching off
    # the longest a batch waits for as many scenes as the replica's last batch had (serve/model.py); a lone
    # client's scene never waits
    batch_wait_s: float = 0.05
    # the pipeline's largest network batch; smaller batches run padded to their bucket (1, 2, 4, ...): a scene's
    # bytes match a pipeline with the same value, up to float rounding at bucket shapes (generate/pipeline.py)
    micro_batch: int = 8
    token_env: str | None = None  # environment variable holding the bearer token; None = no authentication
    max_count: int = 16  # scenes per request
    max_body_bytes: int = 64 * 1024 * 1024
    max_ongoing_requests: int = 256  # concurrent HTTP requests per ingress replica
    device: str = "auto"
    use_ema: bool = True
    app_name: str = "dcgen"

    def __post_init__(self) -> None:
        for name in ("vae", "dit"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: {getattr(self, name)!r}; expected a checkpoint directory path")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            if self.host != "localhost":
                raise ValueError(f"host {self.host!r} is not an IP address; expected e.g. 127.0.0.1 (loopback) "
                                 "or 0.0.0.0 (every interface)") from None
        _int_in("port", self.port, 1, 65535)
        _int_in("replicas", self.replicas, 1)
        if self.max_replicas is not None:
            _int_in("max_replicas", self.max_replicas, self.replicas)
        _number_in("gpus_per_replica", self.gpus_per_replica, 0.0)
        _number_in("cpus_per_replica", self.cpus_per_replica, 0.0)
        _int_in("max_batch_size", self.max_batch_size, 1, 1024)
        _number_in("batch_wait_s", self.batch_wait_s, 0.0, 10.0)
        _int_in("micro_batch", self.micro_batch, 1, 1024)
        _int_in("max_count", self.max_count, 1, 4096)
        _int_in("max_body_bytes", self.max_body_bytes, 1024)
        _int_in("max_ongoing_requests", self.max_ongoing_requests, 1)
        if self.token_env is not None and (not self.token_env or not self.token_env.replace("_", "A").isalnum()):
            raise ValueError(f"token_env {self.token_env!r}; expected an environment variable name like DCGEN_TOKEN")

    @property
    def model_max_ongoing_requests(self) -> int:
        # Serve's default of 5 ongoing requests per replica would cap batches below max_batch_size; twice the batch
        # lets the next batch fill while one runs.
        return 2 * self.max_batch_size

    @property
    def autoscaling(self) -> dict | None:
        if self.max_replicas is None:
            return None
        return {"min_replicas": self.replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.max_batch_size}

    def ingress_settings(self) -> "IngressSettings":
        """Reads the token from ``token_env`` (here, in the process that builds the application)."""
        digest = token_digest(read_token(self.token_env)) if self.token_env else None
        return IngressSettings(max_count=self.max_count, max_body_bytes=self.max_body_bytes,
                               token_sha256=digest, max_batch_size=self.max_batch_size,
                               batch_wait_s=self.batch_wait_s, micro_batch=self.micro_batch)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ServeConfig":
        from dcgen import config

        return config.from_dict(cls, d, what="serve config")


@dataclass(frozen=True)
class IngressSettings:
    max_count: int
    max_body_bytes: int
    token_sha256: bytes | None
    max_batch_size: int
    batch_wait_s: float
    micro_batch: int

    def limits(self) -> dict:
        return {"max_count": self.max_count, "max_body_bytes": self.max_body_bytes}

    def batching(self) -> dict:
        return {"max_batch_size": self.max_batch_size, "batch_wait_s": self.batch_wait_s,
                "micro_batch": self.micro_batch}


def read_token(env: str) -> str:
    token = os.environ.get(env, "")
    if not token:
        raise ValueError(f"token_env {env}: the environment variable {env} is not set or empty; export the bearer "
                         "token clients must send")
    if len(token) < MIN_TOKEN_CHARS or token != token.strip():
        raise ValueError(f"token_env {env}: the token is {len(token)} characters (or has surrounding spaces); "
                         f"expected at least {MIN_TOKEN_CHARS} characters, e.g. from `openssl rand -hex 24`")
    return token


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _int_in(name: str, value, low: int, high: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        rng = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}: {value!r}; expected an integer {rng}")


def _number_in(name: str, value, low: float, high: float | None = None) -> None:
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= low
          and (high is None or value <= high))
    if not ok:
        rng = f"{low:g}..{high:g}" if high is not None else f">= {low:g}"
        raise ValueError(f"{name}: {value!r}; expected a number {rng}")
