"""The wire format of the dcgen Serve API v1: request and response models, array encodings and the ``.npz`` body.

A ``POST /v1/scenes`` body carries one scene's conditions (SPEC §3: command, trajectory, layout, BEV layout, previous
clip, and the sampling-time inpainting mask + source or outpainting shift), the seed, how many scenes to draw, the
sampler, the guidance scale and the ego-motion prior's degree. Arrays travel as nested JSON arrays or, compactly, as
``EncodedArray`` (base64 of the little-endian C-order bytes with dtype and shape). Everything is validated strictly
(no type coercion, no unknown fields, no NaN, shape dimensions at most ``MAX_ARRAY_DIM``), then against the model's
grid by ``SceneRequest.validate``; every error names its field. Sizes are computed with Python integers, bounded by
the grid first, so no crafted shape can overflow or wrap a byte count.
Responses: the clips as an ``.npz`` (``occupancy`` uint8 ``[N, T, X, Y, Z]``, ``scene_seeds`` uint64 ``[N]``; read
with ``np.load(..., allow_pickle=False)``) or ``ScenesMetadata`` JSON. The JSON Schemas in ``schemas/`` are generated
from these models (``write_schemas``) and tested against them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dcgen.generate.conditions import DEFAULT_SAMPLER, SAMPLERS, SceneRequest

API_VERSION = "v1"
NPZ_MEDIA_TYPE = "application/x-npz"
MAX_SEED = 2**32 - 1  # scene_seed keeps 32 bits of the request seed; larger ones would alias
ARRAY_DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "float32", "float64")
ARRAY_FIELDS = ("trajectory", "layout", "bev", "prev_clip", "source", "inpaint_mask")
# A wire-format bound on each dimension, far above any grid's extent (the server checks the exact shape against its
# grid); it lets clients and fuzzers see from the schema that astronomically large shapes are not arrays.
MAX_ARRAY_DIM = 65_536

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class EncodedArray(BaseModel):
    """An n-d array as base64 of its little-endian, C-order bytes."""

    model_config = ConfigDict(_STRICT, title="EncodedArray")
    dtype: Literal[ARRAY_DTYPES] = Field(description="element type")
    shape: list[Annotated[int, Field(ge=0, le=MAX_ARRAY_DIM)]] = Field(max_length=4, description="dimensions, "
                                                                         "C order")
    data: str = Field(description="base64 (standard alphabet, padded) of prod(shape) * itemsize bytes")

    def to_numpy(self, what: str, max_extent: int | None = None) -> np.ndarray:
        """The array; ``max_extent`` (the grid's largest extent) bounds each dimension before any size is computed."""
        high = MAX_ARRAY_DIM if max_extent is None else max_extent
        for i, n in enumerate(self.shape):
            if not 0 <= n <= high:
                where = "" if max_extent is None else ", the largest extent of the server's grid"
                raise ValueError(f"{what}.shape[{i}]: {n}; expected a size 0..{high}{where}")
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{what}.data: not valid base64 ({e})") from None
        dtype = np.dtype(self.dtype).newbyteorder("<")
        want = math.prod(self.shape) * dtype.itemsize  # Python integers: a crafted shape cannot wrap to a match
        if len(raw) != want:
            raise ValueError(f"{what}.data: {len(raw)} bytes, expected {want} for shape {self.shape} of {self.dtype}")
        return np.frombuffer(raw, dtype=dtype).reshape(self.shape)

    @classmethod
    def of(cls, a: np.ndarray) -> "EncodedArray":
        a = np.asarray(a)
        if a.dtype.name not in ARRAY_DTYPES:
            raise ValueError(f"array dtype {a.dtype} cannot be sent; expected one of {', '.join(ARRAY_DTYPES)}")
        le = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
        return cls(dtype=a.dtype.name, shape=list(a.shape), data=base64.b64encode(le.tobytes()).decode("ascii"))


def _arr(description: str):
    return Field(None, description=description + " (nested JSON arrays or an EncodedArray)")


class ScenesRequest(BaseModel):
    """``POST /v1/scenes``: conditions of the scenes, seed, count and sampler."""

    model_config = ConfigDict(_STRICT, title="ScenesRequest")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="request seed S: scene i is drawn from "
                             "scene_seed(S, i), as `dcgen synth` draws scene i of a job with seed S; omitted = random")
    count: int = Field(1, ge=1, description="scenes to draw with these conditions (the server's limit is in "
                       "/v1/info limits.max_count)")
    sampler: Literal[SAMPLERS] = Field(DEFAULT_SAMPLER, description="dpm++ (DPM-Solver++(2M): deterministic, few "
                                       "steps), ddim (deterministic) or ddpm (ancestral)")
    steps: int | None = Field(None, ge=1, le=1000, description="sampling steps (default: the model's, 50 for "
                              "ddim, 1000 for ddpm, 10 for dpm++; dpm++ takes 2..999)")
    guidance: float | None = Field(None, ge=0.0, le=100.0, description="classifier-free guidance scale on epsilon "
                                   "(default: per condition, 1 with a layout, else 4)")
    trajectory_degree: int | None = Field(None, ge=0, description="ego-motion prior: a reference-frame VAE's "
                                          "generated ego trajectory is projected onto polynomials in t of this "
                                          "degree before decoding, 0 keeps it as sampled (default: /v1/info "
                                          "sampler_defaults.trajectory_degree; an ego-frame VAE has no trajectory "
                                          "to shape)")
    command: int | None = Field(None, ge=0, le=3, description="0 static, 1 forward, 2 left, 3 right")
    trajectory: list[list[float]] | EncodedArray | None = _arr("[T, 3] ego (x, y, yaw) relative to frame 0")
    layout: list[list[list[int]]] | EncodedArray | None = _arr("[T, X/d, Y/d] vehicle layout, 0/1")
    bev: list[list[int]] | EncodedArray | None = _arr("[X, Y] BEV semantic layout, class ids")
    prev_clip: list[list[list[list[int]]]] | EncodedArray | None = _arr("[T, X, Y, Z] class ids of the clip "
                                                                         "this one continues")
    source: list[list[list[list[int]]]] | EncodedArray | None = _arr("[T, X, Y, Z] class ids of the clip to "
                                                                      "inpaint or outpaint")
    inpaint_mask: list[list[bool | int]] | EncodedArray | None = _arr("[X, Y] 0/1 or booleans, 1 = regenerate")
    outpaint_shift: int | None = Field(None, ge=1, description="voxels along +X the source moves forward; the new "
                                       "band is generated")

    def to_scene_request(self, what: str = "body", max_extent: int | None = None) -> SceneRequest:
        """The unvalidated ``SceneRequest`` (arrays decoded; ``SceneRequest.validate`` checks them on the grid).

        ``max_extent``, the grid's largest extent, bounds encoded arrays' dimensions before their sizes are computed.
        """
        arrays = {name: _to_numpy(getattr(self, name), f"{what}.{name}", max_extent, integers=name != "trajectory")
                  for name in ARRAY_FIELDS}
        return SceneRequest(command=self.command, outpaint_shift=self.outpaint_shift, guidance=self.guidance,
                            **arrays)


def _to_numpy(value, what: str, max_extent: int | None, integers: bool) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, EncodedArray):
        return value.to_numpy(what, max_extent)
    try:
        a = np.asarray(value)
    except ValueError:
        raise ValueError(f"{what}: ragged nested arrays; expected a rectangular array") from None
    # JSON integers are unbounded: past 64 bits numpy keeps Python objects, and mixing 2**63.. with negatives floats
    if integers and (a.dtype == object or (a.dtype.kind == "f" and a.size)):
        raise ValueError(f"{what}: integers outside the 64-bit range; expected class ids (or 0/1)")
    return a


# ---- responses --------------------------------------------------------------------------------------------------

class ScenesMetadata(BaseModel):
    """``POST /v1/scenes?format=json``: what was generated, without the voxels."""

    model_config = ConfigDict(extra="forbid", title="ScenesMetadata")
    shape: list[int] = Field(description="[N, T, X, Y, Z] of the occupancy array")
    dtype: Literal["uint8"] = "uint8"
    seed: int = Field(description="the request seed (drawn by the server when the request had none)")
    scene_seeds: list[int] = Field(description="scene i's generator seed, scene_seed(seed, i)")
    sampler: str
    steps: int | None
    guidance: float = Field(description="the guidance scale the scenes were sampled with")
    trajectory_degree: int | None = Field(description="the ego-motion prior the scenes were decoded with (0: the "
                                          "trajectory as sampled); null when the model's VAE is ego-frame and has "
                                          "no trajectory to shape")
    conditions: list[str] = Field(description="model conditions the request set")
    edit: Literal["inpaint", "outpaint"] | None
    class_counts: list[list[int]] = Field(description="per scene, voxels of each class id 0..K-1 over all frames")
    batch_sizes: list[int] = Field(description="per scene, the size of the model batch it was generated in")
    checkpoints: dict[str, str]
    seconds: float = Field(description="server time for the request")


class ClassInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int
    name: str
    rgb: list[int] = Field(min_length=3, max_length=3)


class GridInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    num_frames: int
    size: list[int] = Field(min_length=3, max_length=3)
    num_classes: int
    voxel_size: list[float] = Field(min_length=3, max_length=3)
    z_min: float
    frame_rate: float
    layout_downsample: int


class ServeStats(BaseModel):
    model_config = ConfigDict(extra="forbid")
    requests: int = Field(description="scene requests answered with scenes by this ingress replica")
    scenes: int
    scenes_by_batch_size: dict[str, int] = Field(description="scenes generated in model batches of each size")
    max_batch_size_seen: int


class InfoResponse(BaseModel):
    """``GET /v1/info``: the loaded model, the server's limits and batching, and what batching achieved so far."""

    model_config = ConfigDict(extra="allow", title="InfoResponse")
    api_version: Literal["v1"]
    grid: GridInfo
    frames: int
    classes: list[ClassInfo]
    accepted: list[str] = Field(description="conditions the loaded model accepts (+ inpaint/outpaint edits)")
    checkpoints: dict[str, str]
    sampler_defaults: dict
    limits: dict[str, int]
    batching: dict[str, float]
    stats: ServeStats


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="forbid", title="HealthResponse")
    status: Literal["ok"]
    api_version: Literal["v1"]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: int = Field(ge=400, le=599, description="the HTTP status again")
    message: str = Field(description="what is wrong and what was expected; begins with the JSON path of the bad "
                         "value (e.g. 'bev.shape[0]: ...') when there is one")
    field: str | None = Field(description="the top-level request field or query parameter that is wrong (e.g. "
                              "'bev', 'format'); 'body' when the body as a whole is (not JSON, not UTF-8, nested "
                              "too deeply, over the size limit, not an object, conflicting fields); null when the "
                              "request's content is not at fault (token, server errors)")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="forbid", title="ErrorResponse")
    error: ErrorDetail


RESPONSES = (ScenesMetadata, InfoResponse, HealthResponse, ErrorResponse)


# ---- the .npz body ------------------------------------------------------------------------------------------------

def encode_npz(occ_NTXYZ: np.ndarray, scene_seeds: list[int]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, occupancy=np.ascontiguousarray(occ_NTXYZ, dtype=np.uint8),
                        scene_seeds=np.asarray(scene_seeds, dtype=np.uint64))
    return buf.getvalue()


def decode_npz(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# ---- JSON Schemas ---------------------------------------------------------------------------------------------

SCHEMA_BASE = "dcgen/"  # the $id prefix of the other schemas in schemas/


def request_schema() -> dict:
    s = ScenesRequest.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_BASE + "serve-request.schema.json",
            **s}


def response_schema() -> dict:
    defs: dict = {}
    for model in RESPONSES:
        s = model.model_json_schema(ref_template="#/$defs/{model}")
        defs.update(s.pop("$defs", {}))
        defs[model.__name__] = s
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": SCHEMA_BASE + "serve-response.schema.json", "title": "dcgen Serve API v1 JSON responses",
            "description": "POST /v1/scenes?format=json -> ScenesMetadata; GET /v1/info -> InfoResponse; GET "
                           "/v1/health -> HealthResponse; any 4xx/5xx -> ErrorResponse. The default POST /v1/scenes "
                           "answer is an .npz (application/x-npz) holding occupancy uint8 [N, T, X, Y, Z] and "
                           "scene_seeds uint64 [N].",
            "oneOf": [{"$ref": f"#/$defs/{m.__name__}"} for m in RESPONSES], "$defs": defs}


def write_schemas(directory: str | Path = "schemas") -> list[Path]:
    """Regenerate ``serve-request.schema.json`` and ``serve-response.schema.json`` from the models."""
    directory = Path(directory)
    out = []
    for name, schema in (("serve-request", request_schema()), ("serve-response", response_schema())):
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2) + "\n")
        out.append(path)
    return out
