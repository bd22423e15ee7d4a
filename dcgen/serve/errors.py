"""How the Serve ingress answers what it refuses: every error as dcgen's ``ErrorResponse`` JSON, with the field.

A request can fail before dcgen's code sees it: FastAPI's JSON parser gives up on invalid UTF-8, nesting past
Python's recursion limit or a 4,300-digit integer with a bare 400 (the parser's error as its cause), and pydantic's
errors for a union of array forms name every form. Here they become one status, one field and one message that
begins with the JSON path of the bad value: 400 for a body that does not parse, 415 for one that is not JSON, 422
for a wrong value (the top-level field, or 'body' for the body as a whole). ``ERROR_DOCS`` describes each status for
the OpenAPI document, which lists them with the ``ErrorResponse`` schema.
"""

from __future__ import annotations

import email.message
import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from dcgen.serve.api import ARRAY_FIELDS, ErrorResponse

log = logging.getLogger("dcgen.serve")
MAX_NAME_CHARS = 64  # client-chosen names (unknown keys) are quoted in errors up to this length


class ApiError(StarletteHTTPException):
    def __init__(self, status: int, message: str, field: str | None = None, headers: dict | None = None):
        super().__init__(status, message, headers)
        self.field = field


class ErrorJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: an error may quote what the client sent, and Starlette's UTF-8
    rendering would turn a lone surrogate there into a 500."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, field: str | None = None, headers: dict | None = None) -> JSONResponse:
    return ErrorJSONResponse({"error": {"status": status, "message": message, "field": field}}, status,
                             headers=headers)


def is_json(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of this Content-Type as JSON (application/json or application/*+json)."""
    if not content_type:
        return False
    m = email.message.Message()
    m["content-type"] = content_type
    subtype = m.get_content_subtype()
    return m.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _path_of(loc: tuple) -> list:
    """The JSON path of a pydantic error location: without FastAPI's 'body'/'query' head and the union members'
    type tags pydantic puts in (e.g. 'EncodedArray' or 'list[list[int]]' after an array field, 'bool' after an
    index of ``inpaint_mask``)."""
    parts = list(loc[1:]) if loc and loc[0] in ("body", "query") else list(loc)
    path = []
    for i, p in enumerate(parts):
        tag = isinstance(p, str) and i > 0 and (isinstance(parts[i - 1], int) or (i == 1 and parts[0] in ARRAY_FIELDS))
        if not tag:
            path.append(_clip(p) if isinstance(p, str) else p)
    return path


def _clip(name: str, limit: int = MAX_NAME_CHARS) -> str:
    return name if len(name) <= limit else name[:limit - 3] + "..."


def _render(path: list) -> str:
    """``['bev', 'shape', 0]`` -> ``'bev.shape[0]'``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _field_of(loc: tuple) -> str:
    """The top-level request field (or query parameter) of an error location; 'body' for the body as a whole."""
    path = _path_of(loc)
    return str(path[0]) if path else "body"


def validation_error(errors: list[dict]) -> tuple[str, str]:
    """``(field, message)`` for pydantic's errors: the first wrong field, and of the forms an array may take the one
    the client sent (its errors lie deepest; the other forms fail at the top). Other wrong fields are named."""
    if not errors:
        return "body", "body: invalid request"
    locs = [tuple(e.get("loc", ())) for e in errors]
    field = _field_of(locs[0])
    mine = [(loc, e) for loc, e in zip(locs, errors) if _field_of(loc) == field]
    depth = max(len(loc) for loc, _ in mine)
    path = _path_of(next(loc for loc, _ in mine if len(loc) == depth))
    msgs = dict.fromkeys(e.get("msg", "invalid") for loc, e in mine if len(loc) == depth and _path_of(loc) == path)
    others = sorted({_field_of(loc) for loc in locs} - {field})
    more = f" (also wrong: {', '.join(others[:5])}{' and more' if len(others) > 5 else ''})" if others else ""
    return field, f"{_render(path) or 'body'}: {' or '.join(msgs)}{more}"


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # how the surrogateescape handler spells a byte that is not UTF-8


def _undecodable_path(raw: bytes) -> list:
    """The JSON path of the first string value holding bytes that are not UTF-8; [] when a key holds them or the
    body does not parse even so."""
    try:
        doc = json.loads(raw.decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError):
        return []
    stack = [((), doc)]  # iterative: the document may nest as deep as the parser allowed
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and _ESCAPED_BYTE.search(value):
            return list(path)
        if isinstance(value, dict):
            if any(_ESCAPED_BYTE.search(k) for k in value):
                return list(path)  # a name that is not text cannot be quoted; its object is what we can name
            stack.extend(((*path, k), v) for k, v in reversed(value.items()) if isinstance(v, (str, list, dict)))
        elif isinstance(value, list):
            stack.extend(((*path, i), v) for i, v in reversed(list(enumerate(value)))
                         if isinstance(v, (str, list, dict)))
    return []


def unparsable_body(cause: BaseException | None) -> tuple[str, str]:
    """``(field, message)`` for a body that FastAPI could not parse as JSON: it answers with a bare 400 whose
    ``__cause__`` is the parser's error (invalid UTF-8, nesting past the recursion limit, an integer of more than
    4,300 digits)."""
    if isinstance(cause, UnicodeDecodeError):
        path = _undecodable_path(cause.object) if cause.encoding.replace("-", "").lower() == "utf8" else []
        where = _render(path) or "body"
        return (str(path[0]) if path else "body"), (f"{where}: byte {cause.start} of the body is not valid "
                                                    f"{cause.encoding} ({cause.reason}); JSON text must be UTF-8")
    if isinstance(cause, RecursionError):
        return "body", ("body: JSON nested too deeply to parse; a request nests 5 levels at most (an object holding "
                        "[T, X, Y, Z] arrays)")
    if cause is not None:
        # e.g. "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits; use sys..."
        return "body", f"body: not parseable as JSON ({_clip(str(cause).split(';')[0], 200)})"
    return "body", "body: not parseable as JSON"


def api_error(message: str) -> ApiError:
    """A 422 for a ``ValueError`` from decoding or validating the conditions ('body.bev: ...' names field bev)."""
    message = message.removeprefix("body.")
    head = re.match(r"[A-Za-z_]\w*", message)
    return ApiError(422, message, head.group(0) if head else "body")


def install_error_handlers(app: FastAPI) -> None:
    """Every error as an ``ErrorResponse``: dcgen's own, FastAPI's body parsing and validation, and the unexpected."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        if isinstance(exc, ApiError):
            return error_response(exc.status_code, str(exc.detail), exc.field, exc.headers)
        if exc.status_code == 400:  # FastAPI's own, for a body its JSON parser gave up on
            field, message = unparsable_body(exc.__cause__)
            return error_response(400, message, field)
        return error_response(exc.status_code, str(exc.detail), None, exc.headers)  # 404, 405

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        content_type = request.headers.get("content-type")
        if request.method == "POST" and not is_json(content_type):
            return error_response(415, f"body: Content-Type {content_type!r}; expected application/json", "body")
        if errors and errors[0].get("type") == "json_invalid":
            where, why = errors[0].get("loc", ("body", "?"))[-1], errors[0].get("ctx", {}).get("error", "invalid")
            return error_response(400, f"body: malformed JSON at character {where} ({why})", "body")
        field, message = validation_error(errors)
        return error_response(422, message, field)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error in %s", request.url.path)
        return error_response(500, f"internal error: {type(exc).__name__}")


ERROR_DOCS = {
    400: "the body does not parse as JSON: malformed, not UTF-8, or nested too deeply (field 'body', or the field "
         "whose string holds the bytes that are not UTF-8)",
    401: "the bearer token is missing or wrong",
    413: "more scenes than limits.max_count (field 'count'), or a body over limits.max_body_bytes (field 'body')",
    415: "the body's Content-Type is not application/json (field 'body')",
    422: "a value is wrong: the message begins with its JSON path and says what was expected; field is the "
         "top-level request field or query parameter ('body' for the body as a whole, e.g. conflicting fields)",
    500: "an internal error: a fault of the server or a model replica, never of the request",
    503: "the model deployment cannot be reached (ErrorResponse JSON), or Serve's HTTP proxy turns the request away "
         "while the application is overloaded or not yet running (text/plain, from Ray Serve)",
}


def error_docs(statuses: tuple[int, ...], authenticated: bool) -> dict:
    """OpenAPI ``responses`` entries: each error status with dcgen's ``ErrorResponse`` schema."""
    docs = {}
    for status in statuses:
        if status == 401 and not authenticated:
            continue  # without --token-env nothing is ever refused for want of a token
        doc = {"model": ErrorResponse, "description": ERROR_DOCS[status]}
        if status == 401:
            doc["headers"] = {"WWW-Authenticate": {"description": 'Bearer realm="dcgen"', "required": True,
                                                   "schema": {"type": "string"}}}
        if status == 503:
            doc["content"] = {"text/plain": {"schema": {"type": "string"}}}
        docs[status] = doc
    return docs
