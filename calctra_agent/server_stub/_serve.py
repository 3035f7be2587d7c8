"""Running the reference server under uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from calctra_agent.server_stub._app import create_app
from calctra_agent.server_stub._settings import ServerSettings

logger = logging.getLogger(__name__)


def serve(settings: ServerSettings, host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT; uvicorn finishes in-flight requests, then the lifespan
    stops the background workers and closes the database."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=True,
        proxy_headers=False,
        timeout_graceful_shutdown=10,
    )
    logger.info(
        "reference server starting url=http://%s:%d/v1 data_dir=%s", host, port, settings.data_dir
    )
    uvicorn.Server(config).run()
    logger.info("reference server stopped")
