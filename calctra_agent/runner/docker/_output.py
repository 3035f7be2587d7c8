"""A job's output: how big it grew, and its packing into the result archive."""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from pathlib import Path
from typing import IO

from calctra_agent.errors import RunnerError
from calctra_agent.runner._interface import ResultArchive

MIB = 1024**2


def output_size(directory: Path, stop_above: int | None = None) -> int:
    """Bytes of the regular files under `directory` by their length (a sparse file counts
    whole: it packs whole). Links are not followed. Stops counting once past `stop_above`."""
    total = 0
    pending = [directory]
    while pending:
        try:
            entries = list(os.scandir(pending.pop()))
        except OSError:
            continue  # removed or made unreadable while counting: the packing will tell
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                pending.append(Path(entry.path))
            elif stat.S_ISREG(info.st_mode):
                total += info.st_size
        if stop_above is not None and total > stop_above:
            return total
    return total


def pack(directory: Path, dest: Path) -> ResultArchive:
    """Pack what is in `directory` into the tar.gz `dest`, paths relative to it, and hash it
    while writing. Only regular files, directories and links (symbolic ones not followed) go
    in, owned by 0:0 so that the archive says nothing of the host's users."""
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = dest.with_name(f".{dest.name}.tmp")
    try:
        with open(temporary, "wb") as raw:
            hashing = _HashingWriter(raw)
            with (
                gzip.GzipFile(fileobj=hashing, mode="wb") as compressed,
                tarfile.open(fileobj=compressed, mode="w") as archive,
            ):
                for entry in sorted(os.listdir(directory)):
                    archive.add(directory / entry, arcname=entry, filter=_keep)
        os.replace(temporary, dest)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise RunnerError(f"cannot pack the job's output {directory}: {exc}") from exc
    return ResultArchive(path=dest, sha256=hashing.sha256.hexdigest(), size=hashing.size)


def _keep(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return None
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


class _HashingWriter:
    """A binary file that hashes and counts what goes through it."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()
