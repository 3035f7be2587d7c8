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
    # A heartbeat or report flush that outlasts its interval (retrying through an outage) has
    # its next run skipped with a warning each time; the retries already say what goes on.
    logging.getLogger("apscheduler.scheduler").setLevel(max(logging.ERROR, root.level))
