"""A scripted HTTP server for client tests: real HTTP on a loopback port, answering each
(method, path) from a list of replies in turn, the last one repeated.

with ScriptedServer({("GET", "/v1/api/tokens/balance"): [Reply(503), Reply(503), ok]}) as s:
    CalctraClient(s.url).get_balance()
    assert len(s.requests) == 3
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.conftest import free_port


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None
    """JSON-encoded unless bytes."""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    cut_after: int | None = None
    """Send only this many bytes of the body, then close the connection."""


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    received_at: float
    body: bytes = b""


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    scripted: ScriptedServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the names http.server dispatches to
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self._answer()

    def do_PUT(self) -> None:  # noqa: N802
        self._answer()

    def do_DELETE(self) -> None:  # noqa: N802
        self._answer()

    def _answer(self) -> None:
        received = self.rfile.read(int(self.headers.get("content-length") or 0))
        url = urlsplit(self.path)
        reply = self.server.scripted.next_reply(
            self.command, url.path, parse_qs(url.query), received
        )
        time.sleep(reply.delay_s)
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        headers = {"content-type": "application/json", **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body if reply.cut_after is None else body[: reply.cut_after])

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ScriptedServer:
    """Serves `script` on 127.0.0.1; `start_after_s` delays the listening socket, so that
    until then connections are refused."""

    def __init__(
        self, script: dict[tuple[str, str], list[Reply]], start_after_s: float = 0.0
    ) -> None:
        self.script = {key: list(replies) for key, replies in script.items()}
        self.port = free_port()
        self.requests: list[Seen] = []
        self._start_after_s = start_after_s
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def next_reply(
        self, method: str, path: str, query: dict[str, list[str]], body: bytes = b""
    ) -> Reply:
        with self._lock:
            self.requests.append(Seen(method, path, query, time.monotonic(), body))
            replies = self.script.get((method, path)) or [Reply(404, {"error": _missing()})]
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def __enter__(self) -> ScriptedServer:
        self._thread = threading.Thread(target=self._serve)
        self._thread.start()
        return self

    def _serve(self) -> None:
        time.sleep(self._start_after_s)
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.scripted = self
        with self._lock:
            self._server = server
        server.serve_forever(poll_interval=0.05)
        server.server_close()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._thread is not None
        while self._thread.is_alive():
            with self._lock:
                server = self._server
            if server is not None:
                server.shutdown()
                break
            time.sleep(0.01)
        self._thread.join()


def _missing() -> dict[str, Any]:
    return {"code": "RESOURCE_NOT_FOUND", "message": "no such endpoint", "details": {}}
