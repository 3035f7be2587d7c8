"""Streaming a stored file to a client in chunks, never reading it whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from starlette.responses import StreamingResponse

CHUNK_BYTES = 64 * 1024

BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}
"""The OpenAPI description of a raw body, for `content` entries."""


def file_download(
    path: Path, content_type: str, headers: dict[str, str], start: int = 0, length: int = -1
) -> StreamingResponse:
    """A response that streams `length` bytes of the file from `start` (to its end when
    `length` is -1), with its Content-Length.

    The file is opened here, before the response starts: a file that an upload replaces or a
    deletion removes meanwhile still reaches the client whole, as it was when it was opened.
    Raises FileNotFoundError when the file is not there.
    """
    file = path.open("rb")
    try:
        size = os.fstat(file.fileno()).st_size
        start = min(start, size)
        length = size - start if length < 0 else min(length, size - start)
        file.seek(start)
    except BaseException:
        file.close()
        raise
    headers = {**headers, "content-type": content_type, "content-length": str(length)}
    return StreamingResponse(_chunks(file, length), headers=headers)


def _chunks(file: BinaryIO, length: int) -> Iterator[bytes]:
    # A generator that a client leaves unfinished is closed when it is collected, and the
    # file with it.
    with file:
        remaining = length
        while remaining > 0:
            chunk = file.read(min(CHUNK_BYTES, remaining))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk
