"""The Serve application end to end: one real Serve on 127.0.0.1 (a free port) for this module, serving freshly
initialised debug networks written as checkpoints, on top of the session's local Ray (``debug_server``)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest

from debug_server import MAX_BODY, MAX_COUNT, STEPS, TOKEN
from dcgen.runtime import scene_seed
from dcgen.serve.api import NPZ_MEDIA_TYPE, decode_npz
from dcgen.serve.client import AsyncDcgenClient, DcgenClient, DcgenError, scene_body

ROOT = Path(__file__).resolve().parents[2]


# The server pads a batch to its bucket (1, 2, 4, 8 scenes), and which bucket a scene lands in depends on what else
# is queued; across batch shapes CPU kernels may round differently (tests/generate/test_buckets.py). So a served
# scene is held to the invariant that holds on any x86 CPU: its classes equal the in-process pipeline's wherever
# that pipeline's top two class logits are clearly apart (on the CPU measured, every byte was equal).
CLEAR_GAP = 1e-3
MAX_UNCLEAR = 0.05


def _assert_same_scenes(served, pipeline, requests, seeds):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the replica runs single-threaded
    try:
        latents = pipeline.sample_latents(requests, seeds, steps=STEPS)
        logits = pipeline.logits(latents, [r.trajectory for r in requests], pipeline.decode_groups(requests))
    finally:
        torch.set_num_threads(threads)
    top2 = logits.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1] > CLEAR_GAP).numpy()
    assert (~clear).mean() <= MAX_UNCLEAR, f"{(~clear).mean():.2%} of voxels have no clear class"
    local = logits.argmax(1).numpy().astype(np.uint8)
    served = np.asarray(served)
    assert served.shape == local.shape and served.dtype == np.uint8
    changed = (served != local) & clear
    assert not changed.any(), f"{int(changed.sum())} voxels with a clear class differ from the pipeline's"


@pytest.fixture(scope="module")
def pipeline(server):
    from dcgen.generate.pipeline import GenerationPipeline

    return GenerationPipeline.from_checkpoints(server["vae"], server["dit"], device="cpu",
                                               micro_batch=server["config"].micro_batch)


def _http(server, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server["url"], headers=headers, timeout=60, trust_env=False)


def _response_schema() -> dict:
    return json.loads((ROOT / "schemas" / "serve-response.schema.json").read_text())


def test_health_is_open_and_info_describes_the_model(server, client):
    with _http(server, token=None) as anonymous:
        r = anonymous.get("/v1/health")
    assert r.status_code == 200 and r.json() == {"status": "ok", "api_version": "v1"}
    info = client.info()
    jsonschema.validate(info, _response_schema())
    assert info["grid"]["size"] == [32, 32, 4] and info["frames"] == 4
    assert [c["name"] for c in info["classes"]][:2] == ["free", "building"] and len(info["classes"]) == 11
    assert set(info["accepted"]) >= {"command", "trajectory", "layout", "bev", "prev_clip", "inpaint", "outpaint"}
    assert set(info["checkpoints"]) == {"vae", "dit"}
    assert info["limits"] == {"max_count": MAX_COUNT, "max_body_bytes": MAX_BODY}
    assert info["batching"]["max_batch_size"] == 8
    # what a request without its own settings gets; the ego-motion prior shapes a reference-frame VAE's scenes only,
    # and this server's VAE is ego-frame, so none is reported
    assert info["sampler_defaults"]["sampler"] == "dpm++" and info["sampler_defaults"]["trajectory_degree"] is None


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token-0123456789", f"Basic {TOKEN}", "Bearer"])
def test_missing_or_wrong_token_is_401(server, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    with httpx.Client(base_url=server["url"], headers=headers, timeout=30, trust_env=False) as h:
        for r in (h.get("/v1/info"), h.post("/v1/scenes", json={"steps": STEPS})):
            assert r.status_code == 401
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "bearer token" in r.json()["error"]["message"]


def test_scenes_decode_to_the_grid_and_classes(client):
    got = client.generate(3, 5, command=2, steps=STEPS)
    assert got.occupancy.shape == (3, 4, 32, 32, 4) and got.occupancy.dtype == np.uint8
    assert got.occupancy.max() < 11
    assert got.seed == 5 and got.scene_seeds == [scene_seed(5, i) for i in range(3)]
    assert set(got.checkpoints) == {"vae", "dit"} and len(got.batch_sizes) == 3


def test_npz_headers_and_json_metadata(server):
    body = scene_body(2, 9, command=1, steps=STEPS)
    with _http(server) as h:
        raw = h.post("/v1/scenes", json=body)
        by_query = h.post("/v1/scenes", params={"format": "json"}, json=body)
        by_accept = h.post("/v1/scenes", json=body, headers={"Accept": "application/json"})
        # the debug server's VAE is ego-frame: no trajectory slot, so a request's degree shapes nothing
        with_degree = h.post("/v1/scenes", params={"format": "json"}, json={**body, "trajectory_degree": 1})
    assert raw.headers["content-type"] == NPZ_MEDIA_TYPE and raw.headers["x-dcgen-shape"] == "2,4,32,32,4"
    occ = decode_npz(raw.content)["occupancy"]
    for r in (by_query, by_accept, with_degree):
        meta = r.json()
        jsonschema.validate(meta, _response_schema())
        assert meta["shape"] == [2, 4, 32, 32, 4] and meta["seed"] == 9 and meta["conditions"] == ["command"]
        assert meta["class_counts"] == [np.bincount(o.ravel(), minlength=11).tolist() for o in occ]
        assert meta["sampler"] == "dpm++" and meta["steps"] == STEPS and meta["trajectory_degree"] is None


def test_same_scenes_as_the_in_process_pipeline(client, pipeline):
    from dcgen.generate.conditions import SceneRequest

    rng = np.random.default_rng(3)
    cond = {"command": 3, "trajectory": rng.normal(size=(4, 3)).astype(np.float32),
            "layout": rng.integers(0, 2, (4, 8, 8)).astype(np.uint8), "bev": rng.integers(0, 11, (32, 32))}
    served = client.scenes(2, 11, steps=STEPS, guidance=2.5, **cond)
    requests, seeds = [SceneRequest(**cond, guidance=2.5)] * 2, [scene_seed(11, i) for i in range(2)]
    _assert_same_scenes(served, pipeline, requests, seeds)
    # the same conditions as nested JSON arrays give the same scenes
    body = {"count": 2, "seed": 11, "steps": STEPS, "guidance": 2.5, "command": 3,
            **{k: np.asarray(v).tolist() for k, v in cond.items() if k != "command"}}
    with httpx.Client(timeout=60, trust_env=False, headers={"Authorization": f"Bearer {TOKEN}"}) as h:
        r = h.post(client._http.base_url.join("/v1/scenes"), json=body)
    _assert_same_scenes(decode_npz(r.content)["occupancy"], pipeline, requests, seeds)


def test_concurrent_requests_share_model_batches(server, client, pipeline):
    async def burst():
        async with AsyncDcgenClient(server["url"], token=TOKEN) as ac:
            return await asyncio.gather(*(ac.generate(1, 100 + i, command=i % 4, steps=STEPS) for i in range(8)))

    results = asyncio.run(burst())
    sizes = [b for r in results for b in r.batch_sizes]
    assert max(sizes) > 1, sizes
    stats = client.info()["stats"]
    assert stats["max_batch_size_seen"] > 1 and stats["scenes"] >= 8
    # batch mates never change a scene: in a burst or alone, it is the pipeline's scene for its seed
    from dcgen.generate.conditions import SceneRequest

    alone = client.scenes(1, 103, command=3, steps=STEPS)
    for scene in (alone[0], results[3].occupancy[0]):
        _assert_same_scenes(scene[None], pipeline, [SceneRequest(command=3)], [scene_seed(103, 0)])


def _bad_requests():
    big = {"prev_clip": [[[[0] * 4] * 32] * 32] * 4, "source": [[[[0] * 4] * 32] * 32] * 4,
           "trajectory": [[0.0] * 3] * 8000, "steps": STEPS}
    src = np.zeros((4, 32, 32, 4), np.uint8)
    return [
        ("malformed JSON", b'{"count": 1,', {}, 400, "body"),
        ("invalid UTF-8 in a string", b'{"steps": 3, "sampler": "dd\xffim"}', {}, 400, "sampler"),
        ("5,000-deep nesting", b'{"bev": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400, "body"),
        ("5,000-digit integer", b'{"seed": ' + b"7" * 5000 + b"}", {}, 400, "body"),
        ("empty body", b"", {}, 422, "body"),
        ("not an object", b"[1, 2]", {}, 422, "body"),
        ("not JSON", b"count=1", {"content-type": "application/x-www-form-urlencoded"}, 415, "body"),
        ("JSON under a non-JSON type", b"{}", {"content-type": "text/json"}, 415, "body"),
        ("unknown field", {"comand": 1}, {}, 422, "comand"),
        ("string count", {"count": "1"}, {}, 422, "count"),
        ("zero count", {"count": 0}, {}, 422, "count"),
        ("count over the limit", {"count": MAX_COUNT + 1}, {}, 413, "count"),
        ("body over the limit", json.dumps(big).encode(), {}, 413, "body"),
        ("command out of range", {"command": 7}, {}, 422, "command"),
        ("NaN guidance", b'{"guidance": NaN}', {}, 422, "guidance"),
        ("seed too large", {"seed": 2**40}, {}, 422, "seed"),
        ("unknown sampler", {"sampler": "euler"}, {}, 422, "sampler"),
        ("zero steps", {"steps": 0}, {}, 422, "steps"),
        ("negative trajectory degree", {"trajectory_degree": -1}, {}, 422, "trajectory_degree"),
        ("trajectory shape", {"trajectory": [[0.0, 0.0, 0.0]] * 3}, {}, 422, "trajectory"),
        ("ragged bev", {"bev": [[0, 1], [2]]}, {}, 422, "bev"),
        ("layout not 0/1", {"layout": [[[2] * 8] * 8] * 4}, {}, 422, "layout"),
        ("bev class out of range", {"bev": [[99] * 32] * 32}, {}, 422, "bev"),
        ("bad base64", {"bev": {"dtype": "uint8", "shape": [32, 32], "data": "@@@"}}, {}, 422, "bev"),
        ("short base64", {"bev": {"dtype": "uint8", "shape": [32, 32], "data": "AAAA"}}, {}, 422, "bev"),
        # was a 500 (OverflowError in np.prod(..., dtype=int64))
        ("dimension >= 2**63", {"bev": {"dtype": "uint8", "shape": [2**70], "data": ""}}, {}, 422, "bev"),
        # 65536**4 = 2**64 wrapped to 0 in int64 and matched the empty data
        ("shape product wraps int64", {"bev": {"dtype": "uint8", "shape": [65536] * 4, "data": ""}}, {}, 422, "bev"),
        ("negative dimension", {"bev": {"dtype": "uint8", "shape": [32, -32], "data": ""}}, {}, 422, "bev"),
        ("integers past 64 bits", {"bev": [[2**70] * 32] * 32}, {}, 422, "bev"),
        ("mask without source", {"inpaint_mask": [[1] * 32] * 16 + [[0] * 32] * 16}, {}, 422, "source"),
        ("inpaint and outpaint", scene_body(source=src, inpaint_mask=np.eye(32, dtype=bool), outpaint_shift=4),
         {}, 422, "body"),
        ("format", {"steps": STEPS}, {"params": {"format": "xml"}}, 422, "format"),
        # passes the ingress, rejected by the pipeline on the model replica (not a whole number of latent cells)
        ("outpaint shift", scene_body(source=src, outpaint_shift=3, steps=STEPS), {}, 422, "outpaint_shift"),
    ]


@pytest.mark.parametrize("name, body, extra, status, field", _bad_requests(), ids=[b[0] for b in _bad_requests()])
def test_bad_requests_get_their_4xx_and_the_server_keeps_answering(server, client, name, body, extra, status, field):
    extra = dict(extra)
    params = extra.pop("params", None)
    headers = {"content-type": "application/json", **extra}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with _http(server) as h:
        r = h.post("/v1/scenes", content=content, headers=headers, params=params)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["status"] == status and err["message"]
        assert err["field"] == field and (field is None or field in err["message"]), err
        jsonschema.validate(r.json(), _response_schema())
        assert h.get("/v1/health").status_code == 200


def test_a_streamed_body_over_the_limit_is_413(server):
    def chunks():  # no Content-Length: the limit is enforced while the body arrives
        yield b'{"comand": "'
        for _ in range(MAX_BODY // 10_000 + 1):
            yield b"x" * 10_000
        yield b'"}'

    with _http(server) as h:
        r = h.post("/v1/scenes", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]["message"]
        assert h.get("/v1/health").status_code == 200


def test_a_get_with_a_body_over_the_limit_is_the_documented_413(server):
    with _http(server) as h:
        spec = h.get("/v1/openapi.json").json()
        for route in ("/v1/health", "/v1/info"):
            r = h.request("GET", route, content=b"x" * (MAX_BODY + 1))
            assert r.status_code == 413 and r.json()["error"]["field"] == "body", route
            jsonschema.validate(r.json(), _response_schema())
            assert "413" in spec["paths"][route]["get"]["responses"], route
        assert h.get("/v1/health").status_code == 200


def test_a_failing_scene_fails_only_its_own_request(server, client):
    src = np.zeros((4, 32, 32, 4), np.uint8)

    async def mixed():
        async with AsyncDcgenClient(server["url"], token=TOKEN) as ac:
            good = [ac.generate(1, i, command=1, steps=STEPS) for i in range(3)]
            bad = ac.generate(1, 0, source=src, outpaint_shift=3, steps=STEPS)
            return await asyncio.gather(*good, bad, return_exceptions=True)

    *good, bad = asyncio.run(mixed())
    assert all(g.occupancy.shape == (1, 4, 32, 32, 4) for g in good)
    assert isinstance(bad, DcgenError) and bad.status == 422 and "outpaint_shift" in bad.message
    assert client.scenes(1, 1, steps=STEPS).shape == (1, 4, 32, 32, 4)


def test_a_client_that_gives_up_does_not_hurt_the_server(server, client):
    with DcgenClient(server["url"], token=TOKEN, timeout=0.05) as impatient:
        with pytest.raises(httpx.TimeoutException):
            impatient.scenes(MAX_COUNT, 1, steps=50)
    assert client.health()["status"] == "ok"
    assert client.scenes(1, 2, steps=STEPS).shape == (1, 4, 32, 32, 4)


def test_client_errors_carry_status_and_field(client):
    with pytest.raises(DcgenError) as e:
        client.scenes(1, 1, trajectory=np.zeros((2, 3)))
    assert e.value.status == 422 and e.value.field == "trajectory" and "expected [4, 3]" in e.value.message


@pytest.mark.parametrize("shape, message", [
    ([2**70], "bev.shape[0]: Input should be less than or equal to 65536"),
    ([65536] * 4, "bev.shape[0]: 65536; expected a size 0..32, the largest extent of the server's grid"),
])
def test_crafted_shapes_are_refused_before_any_size_is_computed(server, shape, message):
    with _http(server) as h:
        r = h.post("/v1/scenes", json={"bev": {"dtype": "uint8", "shape": shape, "data": ""}})
    assert r.status_code == 422 and r.json()["error"]["message"] == message


def test_openapi_lists_the_versioned_routes(server):
    with _http(server) as h:
        spec = h.get("/v1/openapi.json").json()
    assert {"/v1/scenes", "/v1/info", "/v1/health"} <= set(spec["paths"])
    scenes = spec["paths"]["/v1/scenes"]["post"]
    assert {"400", "401", "413", "415", "422"} <= set(scenes["responses"])
    assert scenes["security"] == [{"bearerAuth": []}]
    assert "security" not in spec["paths"]["/v1/health"]["get"]


def test_the_model_handle_inside_the_cluster_gives_the_same_scene(server, client):
    from ray import serve

    from dcgen.generate.conditions import SceneRequest
    from dcgen.generate.conditions import SceneJob

    model = serve.get_deployment_handle("SceneModel", app_name=server["config"].app_name)
    result = model.generate.remote(SceneJob(SceneRequest(command=2), scene_seed(21, 0), "ddim", STEPS)).result()
    assert result.error is None
    assert result.occupancy_TXYZ.tobytes() == client.scenes(1, 21, command=2, steps=STEPS)[0].tobytes()
    bad = model.generate.remote(SceneJob(SceneRequest(command=9), 1, "ddim", STEPS)).result()
    assert bad.invalid and "command" in bad.error
