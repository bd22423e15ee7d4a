"""The life of a ``dcgen serve`` process: start the Serve application, announce it, run until Ctrl-C or SIGTERM,
then shut Serve down.

The command line only turns options into a ``ServeConfig`` and calls ``serve_until_stopped``. Every Ray call
(starting, deploying, shutting down) lives in ``dcgen.serve.app``; this module imports it only once the config has
passed its own checks, so a missing token is refused before Ray is even imported.
"""

from __future__ import annotations

import signal
import time
from typing import Callable, Optional

from dcgen.serve.config import ServeConfig


class ServeDidNotStart(RuntimeError):
    """Serve could not deploy the application for a reason other than bad input (a ValueError names that)."""


def serve_until_stopped(config: ServeConfig, address: Optional[str] = None, *,
                        announce: Callable[[str], None] = print, log: Callable[[str], None] = print) -> None:
    """Start ``config``'s application (embedded local Ray unless ``address``), ``announce`` its URL, and block until
    Ctrl-C or SIGTERM, then shut Serve down. Bad input (token, checkpoints) raises ValueError before anything runs;
    a deployment that fails otherwise raises ServeDidNotStart with the first line of its error."""
    config.ingress_settings()  # the token must be there before anything starts
    from dcgen.serve.app import shutdown, start

    try:
        url = start(config, address=address)  # vets the checkpoints first: a bad one fails before Serve starts
    except RuntimeError as e:  # e.g. a model replica failed for a reason other than input
        raise ServeDidNotStart(f"the Serve application did not start: {str(e).strip().splitlines()[0]}") from e
    auth = f"bearer token from ${config.token_env}" if config.token_env else "no authentication"
    announce(f"serving on {url} ({auth}); try: curl {url}/v1/info   (Ctrl-C stops)")
    wait_for_stop()
    log("stopping the server")
    shutdown()


def wait_for_stop() -> None:
    """Sleep until Ctrl-C or SIGTERM (``kill``, docker stop and systemd then shut down as cleanly as Ctrl-C)."""

    def _stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
