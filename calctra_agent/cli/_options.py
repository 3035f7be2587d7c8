"""Options and helpers that several commands share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from calctra_agent.cli._app import console

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="CALCTRA_CONFIG",
        help="The agent's TOML configuration (default /etc/calctra-agent/agent.toml).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def load(config: Path | None) -> Any:
    from calctra_agent.config import load_settings

    return load_settings(config)


def print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))
