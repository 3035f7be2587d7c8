"""Running the reference server under uvicorn."""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType

import uvicorn

from calctra_agent.server_stub._app import create_app
from calctra_agent.server_stub._settings import ServerSettings

logger = logging.getLogger(__name__)


def serve(settings: ServerSettings, host: str, port: int, access_log: bool = True) -> None:
    """Serve until SIGTERM or SIGINT; uvicorn finishes in-flight requests, then the lifespan
    stops the background workers and closes the database. `access_log=False` logs no line per
    request (for load tests)."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=access_log,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    logger.info(
        "reference server starting url=http://%s:%d/v1 data_dir=%s", host, port, settings.data_dir
    )
    server = uvicorn.Server(config)
    with _stop_signals_handled(server):
        server.run()
    logger.info("reference server stopped")


@contextlib.contextmanager
def _stop_signals_handled(server: uvicorn.Server) -> Iterator[None]:
    # After a graceful shutdown uvicorn raises the signal that stopped it once more, for the
    # handler it found at start; without one of ours, a requested stop would end the process by
    # SIGTERM (exit 143) or a KeyboardInterrupt traceback instead of exiting 0.
    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        server.should_exit = True

    stop_signals = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, request_stop) for signum in stop_signals}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
