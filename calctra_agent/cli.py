"""The `calctra-agent` command line."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from calctra_agent import __version__

app = typer.Typer(
    name="calctra-agent",
    help="Rent out this machine on the Calctra compute marketplace.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USAGE = 2


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"calctra-agent {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Rent out this machine on the Calctra compute marketplace."""


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
    max_upload_mb: Annotated[int, typer.Option(min=1, help="Largest dataset upload.")] = 1024,
    log_level: Annotated[
        LogLevel, typer.Option(case_sensitive=False, help="How much to log.")
    ] = LogLevel.INFO,
    access_log: Annotated[bool, typer.Option(help="Log one line per request.")] = True,
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
    )
    serve(settings, host, port, access_log=access_log)


def main() -> None:
    app()
