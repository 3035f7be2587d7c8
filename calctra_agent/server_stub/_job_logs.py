"""Job logs: an append-only file per job in the data dir, with a cap on its size.

An agent names the offset its bytes start at, so that bytes sent again (a retry after a lost
answer) change nothing: the part the server holds already is skipped, and only what lies past
the end is written. A gap (an offset past the end) is refused, since the bytes in between
would be missing for good. Bytes past the cap are dropped, and a marker file beside the log
records that they were. The file's size is the one record of how much is held; appends to a
job's log hold an exclusive lock on it, so that concurrent ones, in this process or another,
see each other's bytes.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogState:
    size: int
    """Bytes of log held."""
    truncated: bool
    """Bytes were dropped at the cap."""


class LogGap(Exception):
    """An append starts past the end of the log held."""

    def __init__(self, size: int) -> None:
        super().__init__(f"the log holds {size} bytes")
        self.size = size


def log_path(logs_dir: Path, job_id: str) -> Path:
    return logs_dir / f"{job_id}.log"


def _marker(logs_dir: Path, job_id: str) -> Path:
    return logs_dir / f"{job_id}.log.truncated"


def append_log(logs_dir: Path, job_id: str, offset: int, data: bytes, max_bytes: int) -> LogState:
    """Store `data` as the job's log from byte `offset` on; raises LogGap for an offset past
    the end, unless the log is full, in which case the bytes are dropped."""
    with open(log_path(logs_dir, job_id), "ab") as file:
        # Released when the file closes.
        fcntl.flock(file, fcntl.LOCK_EX)
        size = os.fstat(file.fileno()).st_size
        end = offset + len(data)
        if size >= max_bytes:
            if end > size:
                _mark_truncated(logs_dir, job_id, size)
            return log_state(logs_dir, job_id, size)
        if offset > size:
            raise LogGap(size)
        fresh = data[size - offset :] if end > size else b""
        kept = fresh[: max_bytes - size]
        file.write(kept)
    if len(kept) < len(fresh):
        _mark_truncated(logs_dir, job_id, size + len(kept))
    return log_state(logs_dir, job_id, size + len(kept))


def log_state(logs_dir: Path, job_id: str, size: int | None = None) -> LogState:
    """How much of the job's log is held, and whether bytes were dropped."""
    if size is None:
        try:
            size = log_path(logs_dir, job_id).stat().st_size
        except FileNotFoundError:
            size = 0
    return LogState(size=size, truncated=_marker(logs_dir, job_id).exists())


def _mark_truncated(logs_dir: Path, job_id: str, size: int) -> None:
    marker = _marker(logs_dir, job_id)
    if not marker.exists():
        marker.touch()
        logger.info("job log capped job_id=%s bytes=%d", job_id, size)
