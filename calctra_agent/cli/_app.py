"""The root `calctra-agent` command and what every subcommand shares."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from calctra_agent import __version__
from calctra_agent.errors import CalctraError, ConfigError

EXIT_FAILURE = 1
EXIT_USAGE = 2

app = typer.Typer(
    name="calctra-agent",
    help="Rent out this machine on the Calctra compute marketplace.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class LazyConsole:
    """A rich Console, made on first use: `calctra-agent run` only logs, and rich is a few MB
    of an idle daemon's memory."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def get(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


console = LazyConsole(soft_wrap=True)
errors = LazyConsole(stderr=True, soft_wrap=True)

P = ParamSpec("P")
R = TypeVar("R")


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


def fail(message: str, code: int = EXIT_FAILURE) -> typer.Exit:
    """Print one error line and return the Exit to raise."""
    errors.print(f"calctra-agent: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn the package's errors into one clear line and an exit code, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            errors.print(f"calctra-agent: invalid configuration in {exc.source}:", markup=False)
            for problem in exc.problems:
                errors.print(f"  {problem}", markup=False, highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
        except CalctraError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None

    return wrapper


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


def is_interactive() -> bool:
    return sys.stdin.isatty()
