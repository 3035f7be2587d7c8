"""The `calctra-agent` command line: one module per group of commands."""

# Importing a command module registers its commands.
from calctra_agent.cli import _agent, _demo, _machine, _pricing, _server, _wallet  # noqa: F401
from calctra_agent.cli._app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
