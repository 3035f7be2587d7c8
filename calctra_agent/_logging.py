"""Log setup, done once by the CLI."""

from __future__ import annotations

import logging
import sys

# Libraries whose INFO lines (every HTTP request, every scheduler run) would drown the agent's.
_QUIET = ("httpx", "httpcore", "apscheduler")


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
