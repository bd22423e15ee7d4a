"""A small Python client for the dcgen Serve API v1 (``dcgen serve``), for simulators: sync and async.

``DcgenClient(url, token).scenes(command=1, count=4, seed=7)`` returns ``occ [N, T, X, Y, Z] uint8``: scene i of a
request with seed S is the scene ``dcgen synth`` makes for index i of a job with seed S and the same conditions.
Arrays are sent as base64 ``EncodedArray``s (integer class arrays as uint8 when they fit), responses are read with
``np.load(allow_pickle=False)``; httpx runs with ``trust_env=False`` so proxy variables never reroute a loopback call.
Errors raise ``DcgenError`` with the HTTP status, the server's message and the offending field.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import numpy as np

from dcgen.serve.api import ARRAY_FIELDS, NPZ_MEDIA_TYPE, EncodedArray, decode_npz

DEFAULT_URL = "http://127.0.0.1:8000"


class DcgenError(RuntimeError):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.field = status, message, field


@dataclass(frozen=True)
class Scenes:
    occupancy: np.ndarray  # [N, T, X, Y, Z] uint8
    seed: int  # the request seed (drawn by the server when none was given)
    scene_seeds: list[int]
    batch_sizes: list[int]  # per scene, the model batch it was generated in
    checkpoints: dict[str, str]


def scene_body(count: int = 1, seed: int | None = None, *, command: int | None = None, trajectory=None, layout=None,
               bev=None, prev_clip=None, source=None, inpaint_mask=None, outpaint_shift: int | None = None,
               sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
               trajectory_degree: int | None = None) -> dict:
    """The JSON body of ``POST /v1/scenes`` (fields left at None are omitted: the server's defaults apply)."""
    body = {"count": count, "seed": seed, "command": command, "outpaint_shift": outpaint_shift, "sampler": sampler,
            "steps": steps, "guidance": guidance, "trajectory_degree": trajectory_degree}
    arrays = {"trajectory": trajectory, "layout": layout, "bev": bev, "prev_clip": prev_clip, "source": source,
              "inpaint_mask": inpaint_mask}
    for name in ARRAY_FIELDS:
        if arrays[name] is not None:
            body[name] = EncodedArray.of(_compact(name, np.asarray(arrays[name]))).model_dump()
    return {k: v for k, v in body.items() if v is not None}


def _compact(name: str, a: np.ndarray) -> np.ndarray:
    if name == "trajectory" and a.dtype.kind in "iuf":
        return a.astype(np.float32)
    if name == "inpaint_mask" and a.dtype != bool and a.size and np.isin(a, (0, 1)).all():
        return a.astype(bool)
    if a.dtype.kind in "iu" and a.size and 0 <= a.min() and a.max() < 256:
        return a.astype(np.uint8)
    return a  # out-of-range or odd values go as they are, so the server names the problem


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        err = response.json()["error"]
        raise DcgenError(response.status_code, err["message"], err.get("field"))
    except (ValueError, KeyError, TypeError):
        raise DcgenError(response.status_code, response.text[:500]) from None


def _scenes(response: httpx.Response) -> Scenes:
    _raise_for(response)
    arrays = decode_npz(response.content)
    h = response.headers
    checkpoints = dict(kv.split("=", 1) for kv in h.get("x-dcgen-checkpoints", "").split(",") if "=" in kv)
    return Scenes(occupancy=arrays["occupancy"], seed=int(h["x-dcgen-seed"]),
                  scene_seeds=[int(s) for s in arrays["scene_seeds"]],
                  batch_sizes=[int(b) for b in h.get("x-dcgen-batch-sizes", "").split(",") if b],
                  checkpoints=checkpoints)


def _headers(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


class DcgenClient:
    """Blocking client; use as a context manager or call ``close()``."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 600.0):
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=_headers(token), timeout=timeout,
                                  trust_env=False)

    def health(self) -> dict:
        r = self._http.get("/v1/health")
        _raise_for(r)
        return r.json()

    def info(self) -> dict:
        r = self._http.get("/v1/info")
        _raise_for(r)
        return r.json()

    def generate(self, count: int = 1, seed: int | None = None, **conditions) -> Scenes:
        """Scenes with their seeds and batch sizes; keyword arguments as ``scene_body``."""
        r = self._http.post("/v1/scenes", json=scene_body(count, seed, **conditions),
                            headers={"Accept": NPZ_MEDIA_TYPE})
        return _scenes(r)

    def scenes(self, count: int = 1, seed: int | None = None, **conditions) -> np.ndarray:
        """``occ [N, T, X, Y, Z] uint8``."""
        return self.generate(count, seed, **conditions).occupancy

    def metadata(self, count: int = 1, seed: int | None = None, **conditions) -> dict:
        """The ``ScenesMetadata`` JSON (shape, seeds, class counts) instead of the voxels."""
        r = self._http.post("/v1/scenes", params={"format": "json"}, json=scene_body(count, seed, **conditions))
        _raise_for(r)
        return r.json()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "DcgenClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncDcgenClient:
    """``asyncio`` client with the same methods as ``DcgenClient``; ``async with`` or ``await aclose()``."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 600.0,
                 max_connections: int = 100):
        self._http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=_headers(token), timeout=timeout,
                                       trust_env=False, limits=httpx.Limits(max_connections=max_connections))

    async def health(self) -> dict:
        r = await self._http.get("/v1/health")
        _raise_for(r)
        return r.json()

    async def info(self) -> dict:
        r = await self._http.get("/v1/info")
        _raise_for(r)
        return r.json()

    async def generate(self, count: int = 1, seed: int | None = None, **conditions) -> Scenes:
        r = await self._http.post("/v1/scenes", json=scene_body(count, seed, **conditions),
                                  headers={"Accept": NPZ_MEDIA_TYPE})
        return _scenes(r)

    async def scenes(self, count: int = 1, seed: int | None = None, **conditions) -> np.ndarray:
        return (await self.generate(count, seed, **conditions)).occupancy

    async def metadata(self, count: int = 1, seed: int | None = None, **conditions) -> dict:
        r = await self._http.post("/v1/scenes", params={"format": "json"}, json=scene_body(count, seed, **conditions))
        _raise_for(r)
        return r.json()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncDcgenClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
