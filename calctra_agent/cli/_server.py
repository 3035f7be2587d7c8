"""`calctra-agent server`: the reference server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from calctra_agent.cli._app import LogLevel, app


@app.command()
def server(
    data_dir: Annotated[Path, typer.Option(help="Where the server keeps its database and files.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    dev_faucet: Annotated[
        bool, typer.Option(help="Allow POST /api/tokens/deposit (development only).")
    ] = False,
    allow_private_webhooks: Annotated[
        bool, typer.Option(help="Allow webhooks to loopback and private addresses.")
    ] = False,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL; default: SQLite in the data dir.")
    ] = None,
    rate_limit: Annotated[
        int, typer.Option(min=0, help="Requests per user per window; 0 turns it off.")
    ] = 600,
    rate_limit_window: Annotated[int, typer.Option(min=1, help="Window in seconds.")] = 60,
    max_upload_mb: Annotated[
        int, typer.Option(min=1, help="Largest dataset or job result upload.")
    ] = 1024,
    max_log_mb: Annotated[int, typer.Option(min=1, help="Most log kept per job.")] = 16,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="How much to log.")
    ] = LogLevel.INFO,
    access_log: Annotated[bool, typer.Option(help="Log one line per request.")] = True,
    heartbeat_interval: Annotated[
        float, typer.Option(min=0.1, help="Seconds between an agent's heartbeats.")
    ] = 30.0,
    heartbeat_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds without a heartbeat before inactive.")
    ] = 90.0,
) -> None:
    """Run the Calctra reference server."""
    from calctra_agent._logging import configure_logging
    from calctra_agent.server_stub import ServerSettings, serve

    configure_logging(log_level.value)
    settings = ServerSettings(
        data_dir=data_dir.resolve(),
        database_url=database_url,
        dev_faucet=dev_faucet,
        allow_private_webhooks=allow_private_webhooks,
        rate_limit=rate_limit,
        rate_limit_window_s=rate_limit_window,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        max_log_bytes=max_log_mb * 1024 * 1024,
        heartbeat_interval_s=heartbeat_interval,
        heartbeat_timeout_s=heartbeat_timeout,
    )
    serve(settings, host, port, access_log=access_log)
