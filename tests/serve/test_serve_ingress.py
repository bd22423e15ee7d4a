"""The ingress's real FastAPI app in-process, for what it answers before it asks the model anything: every
malformed request's ``ErrorResponse`` with its field (crafted shapes, invalid UTF-8, deep nesting, huge integers,
wrong types), the token and size refusals, and the OpenAPI document (statuses, error schema, bearer scheme)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from dcgen.serve import api
from dcgen.serve.app import SceneIngress, http_app
from dcgen.serve.config import ServeConfig

IN_PROCESS_TOKEN = "in-process-token-0123456789"
PROTECTED = ("/v1/info", "/v1/scenes")


def _local_app(token: str | None = IN_PROCESS_TOKEN):
    """The ingress's real FastAPI app with no model deployment behind it: every request sent to it here is answered
    by the ingress itself (had one reached the model, the answer would be a 503, which the tests would see)."""
    from fastapi.testclient import TestClient

    with pytest.MonkeyPatch.context() as mp:
        if token is not None:
            mp.setenv("DCGEN_API_TEST_TOKEN", token)
        settings = ServeConfig("v", "d", token_env="DCGEN_API_TEST_TOKEN" if token else None, max_count=4,
                               max_body_bytes=200_000).ingress_settings()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return TestClient(http_app(SceneIngress(None, settings)), headers=headers, raise_server_exceptions=False)


def _error_schema(doc: dict) -> dict:
    """A JSON Schema for an ``ErrorResponse`` that resolves its references inside the OpenAPI document."""
    return {"$ref": "#/components/schemas/ErrorResponse", "components": doc["components"]}


MALFORMED = [  # name, body, Content-Type (None: application/json, "": none), status, field, message start
    ("dimension >= 2**63", json.dumps({"bev": {"dtype": "uint8", "shape": [2**70], "data": ""}}), None, 422, "bev",
     "bev.shape[0]: Input should be less than or equal to 65536"),
    ("negative dimension", json.dumps({"bev": {"dtype": "uint8", "shape": [2, -2], "data": ""}}), None, 422, "bev",
     "bev.shape[1]: Input should be greater than or equal to 0"),
    ("unknown dtype", json.dumps({"bev": {"dtype": "complex64", "shape": [1], "data": ""}}), None, 422, "bev",
     "bev.dtype: Input should be 'bool', "),
    ("bad mask value", json.dumps({"inpaint_mask": [[0, 1.5]]}), None, 422, "inpaint_mask",
     "inpaint_mask[0][1]: Input should be a valid boolean or Input should be a valid integer"),
    ("two wrong fields", json.dumps({"count": 0, "sampler": "x"}), None, 422, "count",
     "count: Input should be greater than or equal to 1 (also wrong: sampler)"),
    ("a long unknown field", json.dumps({"k" * 1000: 1}), None, 422, "k" * 61 + "...",
     "k" * 61 + "...: Extra inputs are not permitted"),
    ("bad format", "{}", None, 422, "format", "format: Input should be 'npz' or 'json'"),
    ("invalid UTF-8 in a value", b'{"count": 1, "sampler": "dd\xffim"}', None, 400, "sampler",
     "sampler: byte 27 of the body is not valid utf-8 (invalid start byte); JSON text must be UTF-8"),
    ("invalid UTF-8 deep in a value", b'{"bev": {"dtype": "uint8", "shape": [1], "data": "\xc3("}}', None, 400,
     "bev", "bev.data: byte 50 of the body is not valid utf-8 (invalid continuation byte)"),
    ("invalid UTF-8 in a name", b'{"co\xffunt": 1}', None, 400, "body", "body: byte 4 of the body is not valid utf-8"),
    ("5,000-deep nesting", b'{"bev": ' + b"[" * 5000 + b"]" * 5000 + b"}", None, 400, "body",
     "body: JSON nested too deeply to parse"),
    ("5,000-deep top level", b"[" * 5000 + b"]" * 5000, None, 400, "body", "body: JSON nested too deeply to parse"),
    ("5,000-digit integer", b'{"count": ' + b"9" * 5000 + b"}", None, 400, "body",
     "body: not parseable as JSON (Exceeds the limit (4300 digits) for integer string conversion"),
    ("malformed JSON", b'{"count": 1,', None, 400, "body", "body: malformed JSON at character 12 (Expecting"),
    ("an escaped lone surrogate", b'{"sampler": "\\ud800"}', None, 422, "sampler", "sampler: Input should be"),
    ("an array body", b"[]", None, 422, "body", "body: Input should be a valid dictionary"),
    ("form body", b"count=1", "application/x-www-form-urlencoded", 415, "body",
     "body: Content-Type 'application/x-www-form-urlencoded'; expected application/json"),
    ("no content type", b"{}", "", 415, "body", "body: Content-Type None; expected application/json"),
]


@pytest.mark.parametrize("name, content, content_type, status, field, message",
                         [pytest.param(*case, id=case[0]) for case in MALFORMED])
def test_malformed_requests_get_the_error_body_with_their_field(name, content, content_type, status, field, message):
    with _local_app() as c:
        doc = c.get("/v1/openapi.json").json()
        headers = {"content-type": content_type if content_type is not None else "application/json"}
        if content_type == "":
            headers = {}
        params = {"format": "xml"} if name == "bad format" else None
        r = c.post("/v1/scenes", content=content, headers=headers, params=params)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        jsonschema.validate(body, _error_schema(doc))
        assert body["error"]["status"] == status and body["error"]["field"] == field
        assert body["error"]["message"].startswith(message), body
        assert str(status) in doc["paths"]["/v1/scenes"]["post"]["responses"]
        assert c.get("/v1/health").json() == {"status": "ok", "api_version": "v1"}


def test_token_and_size_are_refused_with_the_error_body():
    with _local_app() as c:
        doc = c.get("/v1/openapi.json").json()
        for path in PROTECTED:
            r = c.request("POST" if path.endswith("scenes") else "GET", path, headers={"Authorization": "Bearer no"})
            assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="dcgen"'
            jsonschema.validate(r.json(), _error_schema(doc))
            assert r.json()["error"]["field"] is None
        declared = {"content-type": "application/json", "content-length": "300000"}
        r = c.post("/v1/scenes", content=b"{}", headers=declared)
        assert r.status_code == 413 and r.json()["error"] == {
            "status": 413, "message": "body: 300000 bytes exceed the limit of 200000 bytes", "field": "body"}
        r = c.post("/v1/scenes", json={"count": 5})
        assert r.status_code == 413 and r.json()["error"]["field"] == "count"
        assert c.get("/v1/openapi.json", headers={"Authorization": ""}).status_code == 401


def test_openapi_document_lists_every_status_with_dcgens_error_schema():
    with _local_app() as c:
        doc = c.get("/v1/openapi.json").json()
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    want = {("/v1/scenes", "post"): {"200", "400", "401", "413", "415", "422", "500", "503"},
            ("/v1/info", "get"): {"200", "401", "413", "500", "503"}, ("/v1/health", "get"): {"200", "413"}}
    assert {(path, m) for path, ops in doc["paths"].items() for m in ops} == set(want)
    for (path, method), statuses in want.items():
        responses = doc["paths"][path][method]["responses"]
        assert set(responses) == statuses, path
        for status in statuses - {"200"}:
            assert responses[status]["content"]["application/json"]["schema"] == error_ref, (path, status)
            assert responses[status]["description"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert "ValidationError" not in doc["components"]["schemas"]
    ok = doc["paths"]["/v1/scenes"]["post"]["responses"]["200"]
    assert ok["content"]["application/x-npz"]["schema"] == {"type": "string", "format": "binary"}
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ScenesMetadata"}
    assert {"X-Dcgen-Shape", "X-Dcgen-Seed", "X-Dcgen-Scene-Seeds"} <= set(ok["headers"])
    assert doc["paths"]["/v1/scenes"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ScenesRequest"}
    # the document's schemas are the models the schemas/ files are generated from
    assert doc["components"]["schemas"]["ErrorDetail"]["properties"]["field"] == \
        api.response_schema()["$defs"]["ErrorDetail"]["properties"]["field"]
    assert doc["components"]["schemas"]["EncodedArray"]["properties"]["shape"]["items"]["maximum"] == \
        api.MAX_ARRAY_DIM


def test_openapi_document_has_the_bearer_scheme_on_protected_routes_only():
    with _local_app() as c:
        doc = c.get("/v1/openapi.json").json()
    assert doc["components"]["securitySchemes"] == {"bearerAuth": {
        "type": "http", "scheme": "bearer", "description": "the token in the variable `dcgen serve --token-env` names"}}
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op.get("security") == ([{"bearerAuth": []}] if path in PROTECTED else None), path
    assert doc["paths"]["/v1/info"]["get"]["responses"]["401"]["headers"]["WWW-Authenticate"]["required"]
    with _local_app(token=None) as open_server:  # no --token-env: no scheme, no 401 anywhere
        doc = open_server.get("/v1/openapi.json").json()
    assert "securitySchemes" not in doc["components"]
    assert all("security" not in op and "401" not in op["responses"] for ops in doc["paths"].values()
               for op in ops.values())
