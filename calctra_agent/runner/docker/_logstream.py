"""A container's log, read from the engine in bulk.

The engine sends a followed log as HTTP chunks of one multiplexed frame each: a line of
output, behind an 8-byte header, in a chunk of its own. The SDK decodes those a frame at a
time, in Python, at some 25 us per line: a job printing short lines fast would cost the agent
a core. This reader takes the same response off the socket in large reads and strips the
chunk and frame headers from each read at once, which costs about 2 us per line.

It speaks HTTP/1.1 to the engine's unix socket or plain TCP address, the addresses the agent
reaches an engine at.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

from calctra_agent.errors import RunnerError

_READ_BYTES = 256 * 1024
_HEADER_LIMIT = 64 * 1024
_FRAME_HEADER = 8
_CONNECT_TIMEOUT_S = 30.0


class EngineLogStream:
    """The followed log of one container: its output's bytes, stdout and stderr as the
    engine interleaved them. `close` may come from any thread and ends the iteration."""

    def __init__(self, docker_host: str, container_id: str) -> None:
        self._sock = _connect(docker_host)
        try:
            path = f"/containers/{container_id}/logs?follow=1&stdout=1&stderr=1"
            host = "docker" if docker_host.startswith("unix://") else urlsplit(docker_host).netloc
            request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            self._sock.sendall(request.encode())
            self._pending, self._chunked = self._read_head()
        except BaseException:
            self._sock.close()
            raise
        self._chunks = _Dechunker() if self._chunked else None
        self._frames = _Demultiplexer()

    def __iter__(self) -> Iterator[bytes]:
        data = self._pending
        while True:
            if data:
                if self._chunks is not None:
                    data = self._chunks.feed(data)
                payload = self._frames.feed(data)
                if payload:
                    yield payload
                if self._chunks is not None and self._chunks.ended:
                    return
            try:
                data = self._sock.recv(_READ_BYTES)
            except OSError:
                return
            if not data:
                return

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def release(self) -> None:
        self._sock.close()

    def _read_head(self) -> tuple[bytes, bool]:
        """Read the status line and headers; returns what came after them, and whether the
        body is chunked."""
        head = b""
        while b"\r\n\r\n" not in head:
            data = self._sock.recv(_READ_BYTES)
            if not data:
                raise RunnerError("the engine closed the log stream before answering")
            head += data
            if len(head) > _HEADER_LIMIT and b"\r\n\r\n" not in head:
                raise RunnerError("the engine's answer to a log request has oversized headers")
        head, rest = head.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            raise RunnerError(f"the engine refused the log request: {status_line}")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines)
        }
        return rest, "chunked" in headers.get("transfer-encoding", "").lower()


def _connect(docker_host: str) -> socket.socket:
    try:
        if docker_host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(_CONNECT_TIMEOUT_S)
            sock.connect(docker_host.removeprefix("unix://"))
        else:
            address = urlsplit(docker_host.replace("tcp://", "http://", 1))
            sock = socket.create_connection(
                (address.hostname or "localhost", address.port or 2375), _CONNECT_TIMEOUT_S
            )
    except OSError as exc:
        raise RunnerError(f"cannot open the log stream at {docker_host}: {exc}") from exc
    sock.settimeout(None)  # a quiet job keeps its stream open as long as it likes
    return sock


class _Dechunker:
    """HTTP/1.1 chunked transfer coding, undone over whatever pieces the socket gives."""

    def __init__(self) -> None:
        self._buffer = b""
        self._left = 0
        """Bytes of the current chunk's data still to come."""
        self._crlf = False
        """The CRLF that ends a chunk's data is still to come."""
        self.ended = False

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        pos, end = 0, len(buffer)
        while pos < end and not self.ended:
            if self._left:
                take = min(self._left, end - pos)
                out.append(buffer[pos : pos + take])
                pos += take
                self._left -= take
                self._crlf = not self._left
            elif self._crlf:
                if end - pos < 2:
                    break
                pos += 2
                self._crlf = False
            else:
                line_end = buffer.find(b"\r\n", pos)
                if line_end < 0:
                    break
                self._left = _chunk_size(buffer[pos:line_end])
                self.ended = not self._left
                pos = line_end + 2
        self._buffer = buffer[pos:]
        return b"".join(out)


def _chunk_size(line: bytes) -> int:
    try:
        return int(line.split(b";", 1)[0].strip(), 16)
    except ValueError:
        raise RunnerError("the engine's log stream is not valid chunked data") from None


class _Demultiplexer:
    """The engine's multiplexed stream: frames of an 8-byte header (stream, 0, 0, 0, size as
    a 32-bit big-endian number) and that many bytes."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        pos, end = 0, len(buffer)
        view = memoryview(buffer)
        while end - pos >= _FRAME_HEADER:
            size = int.from_bytes(buffer[pos + 4 : pos + 8], "big")
            start = pos + _FRAME_HEADER
            if end - start < size:
                break
            out.append(view[start : start + size])
            pos = start + size
        self._buffer = buffer[pos:]
        return b"".join(out)
