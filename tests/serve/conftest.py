"""Fixtures of the Serve tests: a real Serve app per module (``debug_server``) on the session's local Ray."""

from __future__ import annotations

import pytest

from debug_server import TOKEN, start_debug_server


@pytest.fixture(scope="module")
def server(ray_local, tmp_path_factory):
    from ray import serve

    yield start_debug_server(tmp_path_factory.mktemp("ckpt"))
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    from dcgen.serve.client import DcgenClient

    with DcgenClient(server["url"], token=TOKEN) as c:
        yield c
