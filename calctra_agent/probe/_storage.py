"""The storage that jobs write to."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from calctra_agent.errors import ProbeError


@dataclass(frozen=True)
class StorageInfo:
    """The filesystem that holds `path`: the agent's work dir, or its nearest existing parent
    while the work dir is not created yet."""

    path: Path
    total_bytes: int
    free_bytes: int


def probe_storage(work_dir: Path) -> StorageInfo:
    """Raises ProbeError when no part of `work_dir` can be examined."""
    path = _existing_ancestor(work_dir.absolute())
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        raise ProbeError(
            f"cannot measure the storage of work dir {work_dir}: {exc.strerror or exc}; "
            "check that the agent may read it"
        ) from exc
    return StorageInfo(path=path, total_bytes=usage.total, free_bytes=usage.free)


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path
