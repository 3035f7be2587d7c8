"""Reading a container's log in bulk: the chunk and frame decoding, whatever the socket's
reads cut, and the stream against the real engine."""

from __future__ import annotations

import random

import pytest

from calctra_agent.errors import RunnerError
from calctra_agent.runner.docker._logstream import EngineLogStream, _Dechunker, _Demultiplexer
from tests.docker_support import PYTHON_IMAGE, docker_client


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def chunked(pieces: list[bytes]) -> bytes:
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
    return body + b"0\r\n\r\n"


def cuts(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    parts, pos = [], 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 7, 8, 9, 64, 1000])
        parts.append(data[pos : pos + step])
        pos += step
    return parts


@pytest.mark.parametrize("seed", range(20))
def test_chunks_and_frames_decode_the_same_whatever_the_reads_cut(seed: int) -> None:
    lines = [f"line {n}\n".encode() * (n % 5 + 1) for n in range(300)]
    frames = [frame(1 + n % 2, line) for n, line in enumerate(lines)]
    wire = chunked(frames)
    chunks, demux = _Dechunker(), _Demultiplexer()

    out = b"".join(demux.feed(chunks.feed(part)) for part in cuts(wire, seed))

    assert out == b"".join(lines)
    assert chunks.ended


def test_bad_chunk_size_is_a_runner_error() -> None:
    with pytest.raises(RunnerError, match="not valid chunked data"):
        _Dechunker().feed(b"zz\r\nhello\r\n")


def test_stream_of_a_real_container_holds_its_whole_output() -> None:
    client = docker_client()
    code = (
        "import sys\nfor n in range(20000):\n    print(n)\n"
        "sys.stdout.flush()\nprint('end', file=sys.stderr)\n"
    )
    container = client.containers.run(
        PYTHON_IMAGE, ["python3", "-c", code], detach=True, network_mode="none"
    )
    try:
        container.wait(timeout=60)
        stream = EngineLogStream("unix:///var/run/docker.sock", container.id)
        try:
            data = b"".join(stream)
        finally:
            stream.release()
    finally:
        container.remove(force=True)
        client.close()

    # The engine copies stdout and stderr apart: their relative order is its own.
    assert data.count(b"end\n") == 1
    assert data.replace(b"end\n", b"") == "".join(f"{n}\n" for n in range(20000)).encode()


def test_stream_of_an_unknown_container_is_refused_clearly() -> None:
    with pytest.raises(RunnerError, match="the engine refused the log request: HTTP/1.1 404"):
        EngineLogStream("unix:///var/run/docker.sock", "no-such-container")
