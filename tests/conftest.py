"""Fixtures shared by every test: a real reference server on a loopback port."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A reference server in its own process, on a free loopback port, over a data dir that
    survives `stop()` so that a test can start it again on the same state."""

    data_dir: Path
    flags: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.port}-{time.monotonic_ns()}.log"
        command = [
            sys.executable, "-m", "calctra_agent", "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.data_dir), *self.flags,
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited at start:\n{self.log()}")
            try:
                httpx.get(f"{self.url}/openapi.json", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start within {timeout_s} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=f"{self.url}/api", headers=headers, timeout=30.0)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the whole session, with the faucet and loopback webhooks on and rate
    limiting high enough never to trip."""
    live = LiveServer(
        data_dir=tmp_path_factory.mktemp("server") / "data",
        flags=["--dev-faucet", "--allow-private-webhooks", "--rate-limit", "1000000"],
    )
    live.start()
    yield live
    live.stop()


class MakeServer(Protocol):
    def __call__(self, *flags: str, data_dir: Path | None = None) -> LiveServer: ...


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[MakeServer]:
    """Start servers of a test's own, with flags of its choosing; all are stopped at the end."""
    started: list[LiveServer] = []

    def make(*flags: str, data_dir: Path | None = None) -> LiveServer:
        live = LiveServer(
            data_dir=data_dir or tmp_path / f"data-{len(started)}", flags=list(flags)
        )
        live.start()
        started.append(live)
        return live

    yield make
    for live in started:
        if live.process is not None and live.process.poll() is None:
            live.stop()


@dataclass
class Account:
    user_id: str
    email: str
    token: str
    http: httpx.Client


def new_account(live: LiveServer, name: str = "Test User", deposit: float = 0) -> Account:
    """Register a fresh user, log in, and optionally fund the account through the faucet."""
    email = f"{name.split()[0].lower()}-{uuid.uuid4().hex[:10]}@example.com"
    with live.client() as anonymous:
        registered = anonymous.post(
            "/auth/register", json={"email": email, "password": PASSWORD, "name": name}
        )
        assert registered.status_code == 201, registered.text
        login = anonymous.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
    token = login.json()["token"]
    http = live.client(token)
    if deposit:
        funded = http.post("/tokens/deposit", json={"amount": deposit})
        assert funded.status_code == 201, funded.text
    return Account(user_id=registered.json()["userId"], email=email, token=token, http=http)


class MakeAccount(Protocol):
    def __call__(
        self, name: str = ..., deposit: float = ..., live: LiveServer | None = ...
    ) -> Account: ...


@pytest.fixture
def accounts(server: LiveServer) -> Iterator[MakeAccount]:
    """Make fresh funded or unfunded accounts: `accounts("Name", deposit=100)`; pass
    `live=` for a server other than the session's. Their HTTP clients close at the end."""
    made: list[Account] = []

    def make(
        name: str = "Test User", deposit: float = 0, live: LiveServer | None = None
    ) -> Account:
        acct = new_account(live or server, name, deposit)
        made.append(acct)
        return acct

    yield make
    for acct in made:
        acct.http.close()


@pytest.fixture
def customer(accounts: MakeAccount) -> Account:
    """A customer with 1000 tokens."""
    return accounts("Customer Carol", deposit=1000)


@pytest.fixture
def provider(accounts: MakeAccount) -> Account:
    """A provider, with no tokens."""
    return accounts("Provider Pat")


def resource_body(**overrides: object) -> dict[str, object]:
    """A valid resource registration; keyword arguments replace top-level fields."""
    body: dict[str, object] = {
        "name": "Test node",
        "description": "a machine for tests",
        "specs": {"cpuCores": 8, "memoryGb": 32, "storageGb": 500},
        "pricePerHour": 2.0,
        "availability": {
            "schedule": {"days": [1, 2, 3, 4, 5, 6, 7], "startHour": 0, "endHour": 0},
            "timezone": "UTC",
        },
    }
    body.update(overrides)
    return body


def job_body(**overrides: object) -> dict[str, object]:
    """A valid job; keyword arguments replace top-level fields."""
    body: dict[str, object] = {
        "name": "Test job",
        "description": "prints a line",
        "type": "custom_code",
        "code": "print('hello')",
        "datasets": [],
        "requirements": {"minCpuCores": 2, "minMemoryGb": 4, "estimatedDurationHours": 1},
        "budget": 10,
    }
    body.update(overrides)
    return body


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check the documented error envelope; returns its details."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    details: dict[str, Any] = body["error"]["details"]
    assert isinstance(details, dict)
    return details


def balance(acct: Account) -> float:
    response = acct.http.get("/tokens/balance")
    assert response.status_code == 200, response.text
    return float(response.json()["balance"])
