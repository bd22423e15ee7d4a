"""The HTTP ingress of the dcgen Serve application (API v1) and the application graph: ingress -> model deployment.

Ray's own Serve examples split an HTTP ingress from the model deployment; dcgen does the same. The ingress checks
the bearer token (before reading a byte of the body), the body size (413), the JSON and its fields (422, naming the
field), the scene count (413) and the conditions against the loaded model's grid and conditions; only then does it
queue the request's scenes, one ``SceneJob`` each, with the model deployment (``dcgen.serve.model``), whose
``@serve.batch`` mixes scenes of concurrent requests. Scene i of a request with seed S is seeded ``scene_seed(S, i)``,
exactly as scene i of a ``dcgen synth`` job with seed S. Every error is a JSON ``ErrorResponse``; no exception
escapes a request, so a bad request never takes a replica down.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import Counter
from typing import Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from dcgen.serve.api import (API_VERSION, NPZ_MEDIA_TYPE, HealthResponse, InfoResponse, ScenesMetadata,
                             ScenesRequest, ServeStats, encode_npz)
from dcgen.data.grid import Grid
from dcgen.runtime import scene_seed
from dcgen.serve.config import IngressSettings, ServeConfig
from dcgen.generate.conditions import SceneJob, SceneResult
from dcgen.serve.model import SceneReplica

log = logging.getLogger("dcgen.serve")
OPEN_PATHS = ("/v1/health",)  # liveness probes need no token; they reveal nothing
INFO_TTL_S = 30.0  # the model's description is re-read this often (a redeploy may swap checkpoints)


@serve.deployment(max_ongoing_requests=16)
class SceneModel(SceneReplica):
    """The model deployment: a ``SceneReplica`` whose ``generate`` calls from every ingress replica are batched."""

    def __init__(self, vae: str, dit: str, device: str = "auto", use_ema: bool = True, micro_batch: int = 8,
                 max_batch_size: int = 8, batch_wait_s: float = 0.05):
        super().__init__(vae, dit, device=device, use_ema=use_ema, micro_batch=micro_batch)
        self.generate.set_max_batch_size(max_batch_size)
        self.generate.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate(self, jobs: list[SceneJob]) -> list[SceneResult]:
        return await self.generate_batch(jobs)


class ApiError(StarletteHTTPException):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(status, message, headers)
        self.field = field


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message, "field": field}}, status, headers=headers)


class Guard:
    """ASGI middleware: bearer token (constant-time compare of SHA-256 digests) and request body limit."""

    def __init__(self, app, settings: IngressSettings):
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.settings.token_sha256 is not None and scope["path"] not in OPEN_PATHS:
            if not _token_ok(headers.get("authorization", ""), self.settings.token_sha256):
                response = error_response(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>'",
                                          headers={"WWW-Authenticate": 'Bearer realm="dcgen"'})
                return await response(scope, receive, send)
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            response = error_response(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
            return await response(scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
            return message

        return await self.app(scope, counted_receive, send)


def _token_ok(authorization: str, digest: bytes) -> bool:
    scheme, _, presented = authorization.partition(" ")
    presented_digest = hashlib.sha256(presented.strip().encode("utf-8", "surrogateescape")).digest()
    # hash first so both sides have the same length; compare_digest then takes the same time for any token
    return hmac.compare_digest(presented_digest, digest) and scheme.lower() == "bearer"


def response_format(query: str | None, accept: str) -> str:
    """``npz`` unless ``?format=json`` or an Accept header that asks for JSON and not for npz."""
    if query is not None:
        return query
    accept = accept.lower()
    return "json" if "application/json" in accept and NPZ_MEDIA_TYPE not in accept else "npz"


def _field_of(loc: tuple) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query")]
    # pydantic puts the union member's type (e.g. 'list[list[float]]', 'EncodedArray') into the location
    return ".".join(p for p in parts if "[" not in p and p != "EncodedArray") or "body"


class SceneIngress:
    def __init__(self, model, settings: IngressSettings):
        self.model = model
        self.settings = settings
        self._info: dict | None = None
        self._info_time = 0.0
        self._stats: Counter = Counter()
        self._requests = 0

    def __serve_build_asgi_app__(self) -> FastAPI:
        return http_app(self)

    async def model_info(self) -> dict:
        if self._info is None or time.monotonic() - self._info_time > INFO_TTL_S:
            self._info = await self.model.info.remote()
            self._info_time = time.monotonic()
        return self._info

    def stats(self) -> ServeStats:
        return ServeStats(requests=self._requests, scenes=sum(self._stats.values()),
                          scenes_by_batch_size={str(k): v for k, v in sorted(self._stats.items())},
                          max_batch_size_seen=max(self._stats, default=0))

    async def scenes(self, body: ScenesRequest, fmt: str):
        t0 = time.perf_counter()
        if body.count > self.settings.max_count:
            raise ApiError(413, f"count: {body.count} scenes exceeds this server's limit of {self.settings.max_count}",
                           "count")
        info = await self.model_info()
        grid = Grid.from_dict(info["grid"])
        try:
            scene = body.to_scene_request("body").validate(grid, tuple(info["accepted"]), what="body")
        except ValueError as e:
            message = str(e).removeprefix("body.")
            head = message.split(":", 1)[0]
            raise ApiError(422, message, None if head == "body" else head.split(".")[0]) from None
        seed = body.seed if body.seed is not None else secrets.randbelow(2**32)
        seeds = [scene_seed(seed, i) for i in range(body.count)]
        jobs = [SceneJob(scene, s, body.sampler, body.steps) for s in seeds]
        try:
            results = await asyncio.gather(*(self.model.generate.remote(j) for j in jobs))
        except Exception as e:  # noqa: BLE001 - the model replica died or Serve refused: this request fails only
            log.exception("model call failed")
            raise ApiError(503, f"the model deployment could not generate: {type(e).__name__}") from None
        failed = [r for r in results if r.error is not None]
        if failed and failed[0].invalid:  # the pipeline's own checks, beyond the grid (e.g. latent alignment)
            message = re.sub(r"^requests\[\d+\]\.?", "", failed[0].error)
            head = message.split(":", 1)[0]
            raise ApiError(422, message, head if head.isidentifier() else None)
        if failed:
            raise ApiError(500, f"generation failed on the model replica: {failed[0].error}")
        occ_NTXYZ = np.stack([r.occupancy_TXYZ for r in results])
        batch_sizes = [r.batch_size for r in results]
        checkpoints = results[0].checkpoints  # from the replica that made the scenes, current even mid-redeploy
        self._requests += 1
        self._stats.update(batch_sizes)
        shape = ",".join(str(v) for v in occ_NTXYZ.shape)
        headers = {"X-Dcgen-Shape": shape, "X-Dcgen-Dtype": "uint8", "X-Dcgen-Seed": str(seed),
                   "X-Dcgen-Scene-Seeds": ",".join(str(s) for s in seeds),
                   "X-Dcgen-Batch-Sizes": ",".join(str(b) for b in batch_sizes),
                   "X-Dcgen-Checkpoints": ",".join(f"{k}={v}" for k, v in sorted(checkpoints.items()))}
        if fmt == "npz":
            return Response(encode_npz(occ_NTXYZ, seeds), media_type=NPZ_MEDIA_TYPE,
                            headers={**headers, "Content-Disposition": 'attachment; filename="scenes.npz"'})
        k = int(info["grid"]["num_classes"])
        counts = [np.bincount(o.ravel(), minlength=k)[:k].tolist() for o in occ_NTXYZ]
        meta = ScenesMetadata(shape=list(occ_NTXYZ.shape), seed=seed, scene_seeds=seeds, sampler=body.sampler,
                              steps=body.steps, guidance=body.guidance, conditions=list(scene.used()),
                              edit=scene.edit, class_counts=counts, batch_sizes=batch_sizes,
                              checkpoints=dict(checkpoints), seconds=time.perf_counter() - t0)
        return JSONResponse(meta.model_dump(), headers=headers)


def http_app(ingress: SceneIngress) -> FastAPI:
    """The FastAPI routes of one ingress replica (built on the replica, so they can close over it)."""
    app = FastAPI(title="dcgen", version=API_VERSION, docs_url=None, redoc_url=None,
                  openapi_url=f"/{API_VERSION}/openapi.json",
                  description="Conditioned 4D semantic occupancy scenes on demand (DynamicCity).")
    app.add_middleware(Guard, settings=ingress.settings)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "field", None), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        content_type = request.headers.get("content-type")
        if request.method == "POST" and (content_type is None or "json" not in content_type.lower()):
            return error_response(415, f"body: Content-Type {content_type!r}; expected application/json", "body")
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        field = _field_of(tuple(first.get("loc", ())))
        msg = first.get("msg", "invalid")
        if first.get("type") == "json_invalid":
            field, msg = "body", f"malformed JSON ({first.get('ctx', {}).get('error', 'decode error')})"
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        return error_response(422, f"{field}: {msg}{more}", field)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error in %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")

    @app.get(f"/{API_VERSION}/health", response_model=HealthResponse)
    async def health():
        return HealthResponse(status="ok", api_version=API_VERSION)

    @app.get(f"/{API_VERSION}/info", response_model=InfoResponse)
    async def info():
        model = await ingress.model_info()
        return InfoResponse(**model, api_version=API_VERSION, limits=ingress.settings.limits(),
                            batching=ingress.settings.batching(), stats=ingress.stats())

    @app.post(f"/{API_VERSION}/scenes", response_model=ScenesMetadata,
              responses={200: {"content": {NPZ_MEDIA_TYPE: {}}, "description": "the clips (.npz) or, with "
                               "?format=json, their metadata"}})
    async def scenes(body: ScenesRequest, request: Request,
                     format: Literal["npz", "json"] | None = Query(None, description="npz (default) or json")):
        return await ingress.scenes(body, response_format(format, request.headers.get("accept", "")))

    return app


SceneIngressDeployment = serve.deployment(serve.ingress()(SceneIngress), name="SceneIngress")


def build_app(config: ServeConfig):
    """The bound Serve application (ingress -> model) of ``config``; reads the token from ``config.token_env``."""
    model = SceneModel.options(
        num_replicas=None if config.autoscaling else config.replicas,
        autoscaling_config=config.autoscaling,
        max_ongoing_requests=config.model_max_ongoing_requests,
        ray_actor_options={"num_cpus": config.cpus_per_replica, "num_gpus": config.gpus_per_replica},
    ).bind(config.vae, config.dit, config.device, config.use_ema, config.micro_batch, config.max_batch_size,
           config.batch_wait_s)
    return SceneIngressDeployment.options(max_ongoing_requests=config.max_ongoing_requests,
                                          ray_actor_options={"num_cpus": 0}).bind(model, config.ingress_settings())


def app_builder(args: dict):
    """Entry point for ``serve deploy`` / ``serve run`` config files: ``import_path: dcgen.serve.app:app_builder``,
    ``args`` = the fields of ``ServeConfig`` (host and port there are ignored; set them in ``http_options``)."""
    return build_app(ServeConfig.from_dict(dict(args)))


def start(config: ServeConfig, address: str | None = None) -> str:
    """Start Serve on ``config.host:config.port`` (embedded local Ray unless ``address``) and deploy; returns the
    base URL once every replica is up. The checkpoints are vetted here first, so a bad one is named before anything
    starts; a replica that still fails to start raises its own ValueError (or a RuntimeError naming its error)."""
    from dcgen.models.loading import check_checkpoints
    from dcgen.runtime import init_ray

    app = build_app(config)  # reads the token first: a missing one fails before anything starts
    check_checkpoints(config.vae, config.dit, use_ema=config.use_ema)
    init_ray(address)
    serve.start(http_options={"host": config.host, "port": config.port})
    try:
        serve.run(app, name=config.app_name, route_prefix="/")
    except RuntimeError as e:
        raise (replica_error(config.app_name) or e) from None
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.port}"


def replica_error(app_name: str) -> Exception | None:
    """The exception a replica of ``app_name`` failed to start with. Serve's own error says only "Failed to update
    the deployments [...]"; the replica's traceback is left, as text, in the failed deployment's status message."""
    from dcgen.runtime import error_summary, exception_from_traceback

    status = serve.status().applications.get(app_name)
    for name, deployment in (status.deployments.items() if status is not None else ()):
        root = exception_from_traceback(deployment.message or "")
        if isinstance(root, ValueError):  # bad input the replica found (a checkpoint): its own words
            return ValueError(f"the {name} deployment could not start: {root}")
        if root is not None:
            return RuntimeError(f"the {name} deployment could not start ({error_summary(root)})")
    return None


def delete(app_name: str) -> None:
    """Delete one Serve application; Serve and its proxy stay up for the next."""
    serve.delete(app_name)


def shutdown() -> None:
    """Delete every Serve application and stop Serve's HTTP proxy; the Ray session they ran on stays up."""
    serve.shutdown()
