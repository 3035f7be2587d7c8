"""A stand-in for the Docker engine on a unix socket, answering the two Engine API calls the
probe makes (GET /version, GET /v<api>/info) with any `docker info` a test needs: the real
engine here has no GPU runtime to report. The probe talks to it over real HTTP, as it would
to dockerd."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

API_VERSION = "1.47"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    info: dict[str, Any]
    paths: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.server.paths.append(self.path)
        if self.path.endswith("/version"):
            body = {"Version": self.server.info.get("ServerVersion"), "ApiVersion": API_VERSION}
        elif self.path.endswith("/info"):
            body = self.server.info
        else:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def engine_stub(socket_path: Path, info: dict[str, Any]) -> Iterator[list[str]]:
    """Serves `info` as `docker info` at `socket_path`; yields the paths requested."""
    server = _Server(str(socket_path), _Handler)
    server.info, server.paths = info, []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.paths
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
