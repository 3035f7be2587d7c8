"""Following a job's log: shipped to the platform in batches, read for progress lines, and
its tail kept for the outcome's message. Memory stays bounded whatever the job prints.

Two threads per job: one reads the engine's stream, one ships. Between them is a buffer of at
most BUFFER_BYTES: when it is full the reader waits, which costs the job nothing, since the
engine keeps the log on its disk meanwhile. Once shipping ends (the platform's cap is reached,
or the platform refused or could not be reached), the whole stream is no longer needed: the
reader lets it go and reads only the log's last lines, every TAIL_POLL_S, for progress lines
and the tail. Reading a stream costs the engine and the agent CPU for every line a job
prints, which a job printing hundreds of MB would otherwise pay for in its own run time.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol

from calctra_agent.errors import CalctraError, RunnerError
from calctra_agent.runner._interface import JobPlatform
from calctra_agent.runner.docker._workdir import (
    JobDir,
    clamp_percent,
    read_log_state,
    write_log_state,
)

logger = logging.getLogger(__name__)

BATCH_BYTES = 256 * 1024
BATCH_S = 1.0
BUFFER_BYTES = 4 * BATCH_BYTES
TAIL_BYTES = 3000
TAIL_LINES = 1000
"""Lines read at each look at the log's end, once shipping ended."""
TAIL_POLL_S = 1.0
_LINE_BYTES = 200
"""Progress lines are short: a longer line is no progress line, and is not kept."""
_MARKER = b"CALCTRA_PROGRESS="
_PROGRESS_LINE = re.compile(rb"^CALCTRA_PROGRESS=\s*([0-9]+(?:\.[0-9]*)?)\s*$")
_REOPEN_PAUSE_S = 0.5
_WAIT_S = 0.5


class LogStream(Protocol):
    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None:
        """End the stream; safe from any thread, the reader's iteration ends."""
        ...

    def release(self) -> None:
        """Free what the stream holds, once the reader is done with it."""
        ...


class _Batches:
    """The bytes read and not yet shipped, handed out in batches of BATCH_BYTES, or of what
    came within BATCH_S. `put` waits while BUFFER_BYTES are pending."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._since = 0.0
        self._ended = False
        self._closed = False
        self._changed = threading.Condition()

    def put(self, chunk: bytes) -> None:
        with self._changed:
            while len(self._pending) >= BUFFER_BYTES and not self._closed:
                self._changed.wait(_WAIT_S)
            if self._closed:
                return
            self._since = self._since if self._pending else time.monotonic()
            self._pending += chunk
            self._changed.notify_all()

    def end(self) -> None:
        """No more bytes will come: the rest goes out as it is."""
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Nothing more is shipped: `put` drops its bytes, and `take` answers None."""
        with self._changed:
            self._closed = True
            self._pending.clear()
            self._changed.notify_all()

    def take(self) -> bytes | None:
        """The next batch, once it is due; None once everything was taken, or on close."""
        with self._changed:
            while not self._closed and not self._due():
                timeout = self._since + BATCH_S - time.monotonic() if self._pending else None
                self._changed.wait(timeout)
            if self._closed or not self._pending:
                return None
            batch = bytes(self._pending[:BATCH_BYTES])
            del self._pending[:BATCH_BYTES]
            self._since = time.monotonic()
            self._changed.notify_all()
            return batch

    def _due(self) -> bool:
        if self._ended or len(self._pending) >= BATCH_BYTES:
            return True
        return bool(self._pending) and time.monotonic() - self._since >= BATCH_S


class LogFollower:
    """Follows one job's log from its first byte; the bytes the platform already holds (as
    the job directory records) are read again but not shipped again."""

    def __init__(
        self,
        job_id: str,
        directory: JobDir,
        platform: JobPlatform,
        open_stream: Callable[[], LogStream],
        is_running: Callable[[], bool],
        read_tail: Callable[[int], bytes],
    ) -> None:
        self.job_id = job_id
        self._read_tail = read_tail
        self._directory = directory
        self._platform = platform
        self._open_stream = open_stream
        self._is_running = is_running
        self._shipped, truncated = read_log_state(directory)
        self._skip = self._shipped
        self._position = 0
        self._tail_chunks: deque[bytes] = deque([b""])
        self._tail_size = 0
        self._line = bytearray()
        self._progress: int | None = None
        self._batches = _Batches()
        if truncated:
            self._batches.close()
        self._stopped = threading.Event()
        self._stream: LogStream | None = None
        self._stream_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"logs-{job_id}", daemon=True)
        self._shipper = threading.Thread(target=self._ship, name=f"ship-{job_id}", daemon=True)

    @property
    def progress(self) -> int | None:
        """The last CALCTRA_PROGRESS=NN line's number, if any."""
        return self._progress

    def tail(self) -> str:
        return b"".join(self._tail_chunks)[-TAIL_BYTES:].decode("utf-8", errors="replace")

    def start(self) -> None:
        self._reader.start()
        self._shipper.start()

    def finished(self) -> bool:
        """Whether the stream ended with the container."""
        return self._reader.ident is not None and not self._reader.is_alive()

    def wait(self, timeout_s: float) -> None:
        """Wait for the end of the log, and for the platform to hold what it will take."""
        deadline = time.monotonic() + timeout_s
        self._reader.join(timeout_s)
        self._shipper.join(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        """Stop reading and shipping now; what is not shipped yet is shipped by whoever
        follows the job next."""
        self._stopped.set()
        self._batches.close()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()

    # reading

    def _read(self) -> None:
        try:
            while not self._stopped.is_set() and not self._batches.closed:
                self._read_stream()
                if self._stopped.is_set() or self._batches.closed or not self._still_running():
                    break
                # The stream broke while the job runs on: read it again from the start.
                logger.info("log stream reopened job_id=%s", self.job_id)
                time.sleep(_REOPEN_PAUSE_S)
            if self._batches.closed and not self._stopped.is_set():
                self._watch_tail()
        finally:
            self._batches.end()

    def _watch_tail(self) -> None:
        """Shipping ended: read the log's last lines until the job ends, then once more."""
        while not self._stopped.is_set() and self._still_running():
            self._look_at_tail()
            self._stopped.wait(TAIL_POLL_S)
        if not self._stopped.is_set():
            self._look_at_tail()

    def _look_at_tail(self) -> None:
        try:
            data = self._read_tail(TAIL_LINES)
        except RunnerError as exc:
            logger.warning("log tail unavailable job_id=%s error=%s", self.job_id, exc)
            return
        self._tail_chunks = deque([data[-TAIL_BYTES:]])
        self._tail_size = len(self._tail_chunks[0])
        if _MARKER in data:
            for line in data.split(b"\n"):
                self._parse_line(line)

    def _still_running(self) -> bool:
        try:
            return self._is_running()
        except RunnerError:
            return False

    def _read_stream(self) -> None:
        stream = self._open()
        if stream is None:
            return
        seen = 0
        try:
            for chunk in stream:
                if self._stopped.is_set() or self._batches.closed:
                    return
                # After a reopen the stream starts again at byte 0: skip what was read.
                fresh = chunk[max(0, self._position - seen) :]
                seen += len(chunk)
                if fresh:
                    self._consume(fresh)
        finally:
            with self._stream_lock:
                self._stream = None
            stream.close()
            stream.release()

    def _open(self) -> LogStream | None:
        try:
            stream = self._open_stream()
        except RunnerError as exc:
            logger.warning("log stream unavailable job_id=%s error=%s", self.job_id, exc)
            return None
        with self._stream_lock:
            if self._stopped.is_set():
                stream.close()
                stream.release()
                return None
            self._stream = stream
        return stream

    def _consume(self, chunk: bytes) -> None:
        start = self._position
        self._position += len(chunk)
        self._keep_tail(chunk)
        self._scan_lines(chunk)
        if self._position > self._skip:
            self._batches.put(chunk[max(0, self._skip - start) :])

    def _keep_tail(self, chunk: bytes) -> None:
        # The engine's stream comes a line at a time: copying the whole tail for each would
        # cost more than everything else the reader does.
        self._tail_chunks.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size - len(self._tail_chunks[0]) >= TAIL_BYTES:
            self._tail_size -= len(self._tail_chunks.popleft())

    def _scan_lines(self, chunk: bytes) -> None:
        if not self._line and _MARKER not in chunk:
            # No progress line can be in this chunk: only the unfinished line is kept.
            rest = chunk[chunk.rfind(b"\n") + 1 :]
            self._line = bytearray(rest if len(rest) <= _LINE_BYTES else b"-")
            return
        *complete, rest = chunk.split(b"\n")
        for piece in complete:
            self._line += piece
            self._parse_line(bytes(self._line))
            self._line.clear()
        self._line += rest
        if len(self._line) > _LINE_BYTES:
            self._line = bytearray(b"-")  # not a progress line, whatever follows

    def _parse_line(self, line: bytes) -> None:
        if len(line) > _LINE_BYTES:
            return
        match = _PROGRESS_LINE.match(line.rstrip(b"\r"))
        if match:
            self._progress = clamp_percent(float(match.group(1)))

    # shipping

    def _ship(self) -> None:
        while (batch := self._batches.take()) is not None:
            self._send(batch)

    def _send(self, data: bytes) -> None:
        try:
            answer = self._platform.append_job_logs(self.job_id, self._shipped, data)
        except CalctraError as exc:
            self._batches.close()
            logger.warning("log shipping stopped job_id=%s error=%s", self.job_id, exc)
            return
        self._shipped += len(data)
        if answer.truncated:
            self._batches.close()
            logger.info("log cap reached, no more log shipped job_id=%s", self.job_id)
        try:
            write_log_state(self._directory, self._shipped, answer.truncated)
        except RunnerError as exc:
            logger.warning("log offset not saved job_id=%s error=%s", self.job_id, exc)
