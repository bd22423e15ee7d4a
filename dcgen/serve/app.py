"""The HTTP ingress of the dcgen Serve application (API v1) and the application graph: ingress -> model deployment.

Ray's own Serve examples split an HTTP ingress from the model deployment; dcgen does the same. The ingress checks
the bearer token (before reading a byte of the body), the body size (413), that the body is JSON (415) and parses
(400: malformed, not UTF-8, nested too deeply), its fields (422, naming the field), the scene count (413) and the
conditions against the loaded model's grid and conditions; only then does it queue the request's scenes, one
``SceneJob`` each, with the model deployment (``dcgen.serve.model``), whose batches mix scenes of concurrent
requests. Scene i of a request with seed S is seeded ``scene_seed(S, i)``, exactly as scene i of a ``dcgen synth`` job
with seed S. Every error is a JSON ``ErrorResponse``; no exception escapes a request, so a bad request never takes a
replica down. The OpenAPI document (``/v1/openapi.json``) lists every status each route sends, each error with the
``ErrorResponse`` schema, and the bearer scheme on the routes that need the token.
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
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from ray import serve

from dcgen.serve.api import (API_VERSION, NPZ_MEDIA_TYPE, HealthResponse, InfoResponse, ScenesMetadata,
                             ScenesRequest, ServeStats, encode_npz)
from dcgen.data.grid import Grid
from dcgen.runtime import scene_seed
from dcgen.serve.config import IngressSettings, ServeConfig
from dcgen.serve.errors import ApiError, api_error, error_docs, error_response, install_error_handlers
from dcgen.generate.conditions import SceneJob
from dcgen.serve.model import SceneReplica

log = logging.getLogger("dcgen.serve")
OPEN_PATHS = ("/v1/health",)  # liveness probes need no token; they reveal nothing
INFO_TTL_S = 30.0  # the model's description is re-read this often (a redeploy may swap checkpoints)
BEARER = "bearerAuth"  # the OpenAPI security scheme's name


@serve.deployment(max_ongoing_requests=16)
class SceneModel(SceneReplica):
    """The model deployment: a ``SceneReplica``, whose own queue batches the ``generate`` calls of every ingress
    replica (not ``@serve.batch``, which holds every batch open for its timeout, even a lone scene's)."""


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
            response = error_response(413, f"body: {int(declared)} bytes exceed the limit of {limit} bytes", "body")
            return await response(scope, receive, send)
        seen = 0

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, f"body: exceeds the limit of {limit} bytes", "body")
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
            try:
                self._info = await self.model.info.remote()
            except Exception as e:  # noqa: BLE001 - no model replica answers (starting, redeploying, dead)
                log.exception("model info failed")
                raise ApiError(503, f"the model deployment could not be reached: {type(e).__name__}") from None
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
        max_extent = max(grid.num_frames, *grid.size, 3)  # no array of a request is longer in any dimension
        try:
            scene = body.to_scene_request("body", max_extent).validate(grid, tuple(info["accepted"]), what="body")
        except ValueError as e:
            raise api_error(str(e)) from None
        seed = body.seed if body.seed is not None else secrets.randbelow(2**32)
        seeds = [scene_seed(seed, i) for i in range(body.count)]
        jobs = [SceneJob(scene, s, body.sampler, body.steps, body.trajectory_degree) for s in seeds]
        try:
            results = await asyncio.gather(*(self.model.generate.remote(j) for j in jobs))
        except Exception as e:  # noqa: BLE001 - the model replica died or Serve refused: this request fails only
            log.exception("model call failed")
            raise ApiError(503, f"the model deployment could not generate: {type(e).__name__}") from None
        failed = [r for r in results if r.error is not None]
        if failed and failed[0].invalid:  # the pipeline's own checks, beyond the grid (e.g. latent alignment)
            raise api_error(re.sub(r"^requests\[\d+\]", "body", failed[0].error))
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
                              steps=body.steps, guidance=scene.guidance,
                              trajectory_degree=results[0].trajectory_degree, conditions=list(scene.used()),
                              edit=scene.edit, class_counts=counts, batch_sizes=batch_sizes,
                              checkpoints=dict(checkpoints), seconds=time.perf_counter() - t0)
        return JSONResponse(meta.model_dump(), headers=headers)


SCENES_HEADERS = {
    "X-Dcgen-Shape": "N,T,X,Y,Z of the occupancy array",
    "X-Dcgen-Dtype": "uint8",
    "X-Dcgen-Seed": "the request seed (drawn by the server when the request had none)",
    "X-Dcgen-Scene-Seeds": "comma-separated: scene i's generator seed, scene_seed(seed, i)",
    "X-Dcgen-Batch-Sizes": "comma-separated: per scene, the size of the model batch it was generated in",
    "X-Dcgen-Checkpoints": "comma-separated name=id of the VAE and DiT checkpoints that made the scenes",
}


def http_app(ingress: SceneIngress) -> FastAPI:
    """The FastAPI routes of one ingress replica (built on the replica, so they can close over it)."""
    app = FastAPI(title="dcgen", version=API_VERSION, docs_url=None, redoc_url=None,
                  openapi_url=f"/{API_VERSION}/openapi.json",
                  description="Conditioned 4D semantic occupancy scenes on demand (DynamicCity).")
    app.add_middleware(Guard, settings=ingress.settings)
    install_error_handlers(app)
    authenticated = ingress.settings.token_sha256 is not None

    # the body limit guards every route, so a GET sent with an oversized body is a 413 there too
    @app.get(f"/{API_VERSION}/health", response_model=HealthResponse, summary="liveness (no token needed)",
             responses=error_docs((413,), authenticated))
    async def health():
        return HealthResponse(status="ok", api_version=API_VERSION)

    @app.get(f"/{API_VERSION}/info", response_model=InfoResponse, summary="the model, limits and batching",
             responses=error_docs((401, 413, 500, 503), authenticated))
    async def info():
        model = await ingress.model_info()
        return InfoResponse(**model, api_version=API_VERSION, limits=ingress.settings.limits(),
                            batching=ingress.settings.batching(), stats=ingress.stats())

    scenes_ok = {"description": "the clips: an .npz (the default) holding occupancy uint8 [N, T, X, Y, Z] and "
                                "scene_seeds uint64 [N], read with np.load(allow_pickle=False); with ?format=json or "
                                "Accept: application/json, their metadata instead",
                 "content": {NPZ_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
                 "headers": {name: {"description": text, "required": True, "schema": {"type": "string"}}
                             for name, text in SCENES_HEADERS.items()}}

    @app.post(f"/{API_VERSION}/scenes", response_model=ScenesMetadata, summary="generate scenes",
              responses={200: scenes_ok, **error_docs((400, 401, 413, 415, 422, 500, 503), authenticated)})
    async def scenes(body: ScenesRequest, request: Request,
                     format: Literal["npz", "json"] | None = Query(None, description="npz (default) or json")):
        return await ingress.scenes(body, response_format(format, request.headers.get("accept", "")))

    def openapi() -> dict:
        """FastAPI's document plus the bearer scheme on every route but the open ones (when a token is set)."""
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            if authenticated:
                doc.setdefault("components", {})["securitySchemes"] = {BEARER: {
                    "type": "http", "scheme": "bearer",
                    "description": "the token in the variable `dcgen serve --token-env` names"}}
                for path, operations in doc["paths"].items():
                    if path not in OPEN_PATHS:
                        for operation in operations.values():
                            operation["security"] = [{BEARER: []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
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
