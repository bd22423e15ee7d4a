"""The Serve tests' server: one real Serve on 127.0.0.1 (a free port) serving freshly initialised debug networks
written as checkpoints, with a bearer token and small limits; ``tests/serve/conftest.py`` starts one per module.

Imported as ``debug_server`` (pytest puts this folder on ``sys.path``), like ``tests/debug_models.py``.
"""

from __future__ import annotations

TOKEN = "test-token-0123456789abcdef"
TOKEN_ENV = "DCGEN_SERVE_TEST_TOKEN"
STEPS = 3  # sampling steps per scene: enough to exercise the sampler, cheap on CPU
MAX_COUNT = 4
MAX_BODY = 200_000


def start_debug_server(checkpoint_dir) -> dict:
    """Start Serve with debug checkpoints written under ``checkpoint_dir``; the caller calls ``serve.shutdown()``.
    Returns ``{"url", "vae", "dit", "config"}``."""
    import pytest

    from dcgen.bench.serve import free_port, write_untrained_checkpoints
    from dcgen.serve.app import start
    from dcgen.serve.config import ServeConfig

    vae, dit = write_untrained_checkpoints("debug", checkpoint_dir)
    mp = pytest.MonkeyPatch()
    mp.setenv(TOKEN_ENV, TOKEN)
    try:
        config = ServeConfig(vae=vae, dit=dit, port=free_port(), max_batch_size=8, batch_wait_s=0.2, micro_batch=8,
                             token_env=TOKEN_ENV, max_count=MAX_COUNT, max_body_bytes=MAX_BODY,
                             app_name="dcgen-test")
        url = start(config)
    finally:
        mp.undo()  # the token lives in the ingress settings (as a digest) from here on
    return {"url": url, "vae": vae, "dit": dit, "config": config}
