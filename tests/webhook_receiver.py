"""A webhook receiver for tests: an HTTP server on a free loopback port that records every POST.

with WebhookReceiver(fail_first=2) as receiver:
    ...register receiver.url as a webhook...
    delivery = receiver.wait_for(1)[0]
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass(frozen=True)
class Delivery:
    """One POST as the receiver saw it: lower-cased headers and the raw body."""

    headers: dict[str, str]
    body: bytes
    received_at: float
    """`time.monotonic()` when the request arrived, before any configured delay."""


class _Server(ThreadingHTTPServer):
    # Join handler threads on close, so none outlives the test that started it.
    daemon_threads = False
    block_on_close = True
    receiver: WebhookReceiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        headers = {name.lower(): value for name, value in self.headers.items()}
        status = self.server.receiver.record(Delivery(headers, body, time.monotonic()))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class WebhookReceiver:
    """Records `(headers, raw body)` of each POST. Answers 500 to the first `fail_first`
    requests and 200 after; each answer waits `delay_s` first (a slow receiver)."""

    def __init__(self, fail_first: int = 0, delay_s: float = 0.0) -> None:
        self.fail_first = fail_first
        self.delay_s = delay_s
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def record(self, delivery: Delivery) -> int:
        with self._arrived:
            self.deliveries.append(delivery)
            count = len(self.deliveries)
            self._arrived.notify_all()
        # Waiting on the event rather than sleeping lets close() cut a slow answer short.
        self._closing.wait(self.delay_s)
        return 500 if count <= self.fail_first else 200

    def wait_for(self, count: int, timeout_s: float = 15.0) -> list[Delivery]:
        """Wait until at least `count` requests arrived; returns all of them so far."""
        with self._arrived:
            arrived = self._arrived.wait_for(lambda: len(self.deliveries) >= count, timeout_s)
            seen = list(self.deliveries)
        assert arrived, f"expected {count} webhook requests within {timeout_s} s, got {len(seen)}"
        return seen

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
