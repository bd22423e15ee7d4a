"""Property-based fuzzing of the Serve API from its own OpenAPI document, with schemathesis, against a real app on
127.0.0.1 with the bearer token (``debug_server``): schemathesis' coverage phase (each field's boundary and
out-of-range values, missing and unknown fields, wrong types) and its fuzzing phase (random requests the document
allows and forbids), on every operation. No answer may be a 5xx, and every answer must conform to the document
(status listed, content type, body schema, required headers). Afterwards the server still answers ``/v1/health``
and a valid request still gives the ``.npz`` it gave before the fuzzing, byte for byte.

schemathesis parametrizes tests at collection time, before the server runs, so the document is built then from the
ingress's own app (the one the server builds); the ``reference`` fixture checks that the server serves exactly it.
"""

from __future__ import annotations

from collections import Counter

import httpx
import numpy as np
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from debug_server import MAX_BODY, MAX_COUNT, STEPS, TOKEN, TOKEN_ENV
from dcgen.serve.api import decode_npz
from dcgen.serve.app import SceneIngress, http_app
from dcgen.serve.client import scene_body
from dcgen.serve.config import ServeConfig

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
EXAMPLES = 100  # random cases per operation (positive and negative), after the coverage phase's boundary cases
MAX_FUZZ_STEPS = 8  # sampling steps of a generated request that reaches the model (the document allows 1000)
REFERENCE = scene_body(2, 7, command=1, bev=np.tile(np.arange(32, dtype=np.uint8) % 11, (32, 1)), steps=STEPS)


def _document() -> dict:
    """``/v1/openapi.json`` of the ingress app that ``debug_server`` deploys (a token set, so the bearer scheme)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, TOKEN)
        settings = ServeConfig("v", "d", token_env=TOKEN_ENV, max_count=MAX_COUNT,
                               max_body_bytes=MAX_BODY).ingress_settings()
    return http_app(SceneIngress(None, settings)).openapi()  # the document is built without touching the model


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT, config=SchemathesisConfig.from_dict({
    "headers": AUTH, "request-timeout": 120,
    "generation": {"mode": "all", "max-examples": EXAMPLES, "database": "none"},
}))
answered: Counter = Counter()  # "METHOD /path status" of every fuzzed answer


@schema.hook
def map_body(context, body):
    # Every sampling step of a valid request costs model time: its work is exercised by a few; the document's
    # bound on steps (1..1000) is exercised by the out-of-range values, which never reach the model.
    if isinstance(body, dict) and isinstance(body.get("steps"), int) and 1 <= body["steps"] <= 1000:
        body = {**body, "steps": min(body["steps"], MAX_FUZZ_STEPS)}
    return body


def _http(server) -> httpx.Client:
    return httpx.Client(base_url=server["url"], headers=AUTH, timeout=120, trust_env=False)


@pytest.fixture(scope="module")
def reference(server) -> bytes:
    """The ``.npz`` of a valid request, made before any fuzzing (and the served document is the one fuzzed)."""
    with _http(server) as h:
        assert h.get("/v1/openapi.json").json() == DOCUMENT
        r = h.post("/v1/scenes", json=REFERENCE)
    assert r.status_code == 200, r.text
    return r.content


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        s.trust_env = False  # loopback only: never a proxy from the environment
        yield s


@schema.parametrize()
def test_no_5xx_and_every_answer_conforms_to_the_openapi_document(case, server, reference, session):
    response = case.call_and_validate(base_url=server["url"], session=session, headers=AUTH, checks=CHECKS,
                                      timeout=120)
    answered[f"{case.operation.method.upper()} {case.operation.path} {response.status_code}"] += 1


def test_the_fuzzing_reached_the_model_and_the_refusals():
    if not answered:
        pytest.skip("the fuzzing test did not run in this session")
    print(dict(sorted(answered.items())))
    assert {"GET /v1/health 200", "GET /v1/info 200"} <= set(answered)
    statuses = {key.rsplit(" ", 1)[1] for key in answered if key.startswith("POST /v1/scenes ")}
    # scenes were made and requests refused; which other refusals (400, 413, 415) random cases reach varies by run
    assert {"200", "422"} <= statuses, answered


def test_after_fuzzing_the_server_answers_and_gives_the_same_scenes(server, reference):
    with httpx.Client(base_url=server["url"], timeout=30, trust_env=False) as anonymous:
        assert anonymous.get("/v1/health").json() == {"status": "ok", "api_version": "v1"}
    with _http(server) as h:
        r = h.post("/v1/scenes", json=REFERENCE)
    assert r.status_code == 200 and r.headers["x-dcgen-shape"] == "2,4,32,32,4"
    got, before = decode_npz(r.content), decode_npz(reference)
    assert got["occupancy"].shape == (2, 4, 32, 32, 4) and got["occupancy"].dtype == np.uint8
    assert got["scene_seeds"].dtype == np.uint64 and got["scene_seeds"].tolist() == before["scene_seeds"].tolist()
    assert got["occupancy"].tobytes() == before["occupancy"].tobytes()
