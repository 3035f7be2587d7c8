"""Fixtures for the daemon's integration tests: machines that run the real agent.

A `Machine` is a directory with an agent.toml and a state dir, whose owner has an account on
a reference server. `login()` runs `calctra-agent login` as a subprocess; `start()` runs the
daemon as `python -m tests.agent_main` (the real daemon, with the tests' ProcessRunner), and
`stop()` / `kill()` end it; a machine made with `docker=True` runs `calctra-agent run` itself,
with the Docker runner, against the test engine. The `market` fixture makes machines, accounts
and jobs on one server for the whole package, and removes them at the end of each test so
that the next one starts from an empty market: a leftover resource or job would be matched to
the next test's jobs or machines. Tests that stop the server use `module_server` with
`open_market`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from tests.conftest import PASSWORD, Account, LiveServer, MakeServer, job_body, new_account
from tests.server_stub.provider_support import get_job

REPO = Path(__file__).resolve().parents[2]
SERVER_FLAGS = (
    "--dev-faucet", "--rate-limit", "1000000",
    "--heartbeat-interval", "1", "--heartbeat-timeout", "3",
)  # fmt: skip
"""A heartbeat a second; a silent resource turns inactive after 3 s, and the matcher runs
every 1.5 s."""

PRICE_PER_HOUR = 3600.0
"""A token a second: payments for jobs of a few seconds are whole tokens."""

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout_s: float = 30.0, what: str = "the condition"
) -> T:
    """Poll `predicate` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def server_sql(live: LiveServer, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Read the server's SQLite file."""
    with closing(sqlite3.connect(live.data_dir / "calctra.db", timeout=30)) as conn:
        return conn.execute(statement, params).fetchall()


def to_toml(values: dict[str, Any], table: str = "") -> str:
    """Enough TOML for agent.toml: scalars, lists of scalars and nested tables."""
    lines = [f"[{table}]"] if table else []
    tables = {k: v for k, v in values.items() if isinstance(v, dict)}
    for key, value in values.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    text = "\n".join(lines) + "\n"
    for key, value in tables.items():
        text += "\n" + to_toml(value, f"{table}.{key}" if table else key)
    return text


def job_code(
    runs: Path | None = None,
    go: Path | None = None,
    progress: int | None = None,
    exit_code: int = 0,
    wait_s: float = 60.0,
) -> str:
    """A job that appends a line to `runs`, writes `progress`, waits (at most `wait_s`) for
    the file `go` to appear, then exits with `exit_code`."""
    lines = ["import os, pathlib, sys, time"]
    if runs is not None:
        lines.append(f"with open({str(runs)!r}, 'a') as f: f.write('ran\\n')")
    if progress is not None:
        lines.append(f"pathlib.Path(os.environ['CALCTRA_PROGRESS_FILE']).write_text('{progress}')")
    if go is not None:
        lines += [
            f"deadline = time.time() + {wait_s}",
            f"while not pathlib.Path({str(go)!r}).exists() and time.time() < deadline:",
            "    time.sleep(0.05)",
        ]
    lines += [f"print('job done, exit {exit_code}')", f"sys.exit({exit_code})"]
    return "\n".join(lines) + "\n"


def job_when(acct: Account, job_id: str, **expected: Any) -> dict[str, Any] | None:
    """The job as its owner sees it, once every field in `expected` has that value."""
    job = get_job(acct, job_id)
    return job if all(job.get(k) == v for k, v in expected.items()) else None


def wait_job(acct: Account, job_id: str, timeout_s: float = 30, **expected: Any) -> dict[str, Any]:
    return wait_for(
        lambda: job_when(acct, job_id, **expected), timeout_s, f"job {job_id} with {expected}"
    )


def transactions(market: Market, job_id: str, kind: str) -> list[int]:
    rows = server_sql(
        market.live,
        "SELECT amount FROM transactions WHERE type = ? AND related_id = ?",
        kind,
        job_id,
    )
    return [amount for (amount,) in rows]


def paid(market: Market, job_id: str) -> bool:
    return bool(transactions(market, job_id, "PAYMENT"))


def declines(market: Market, job_id: str) -> list[tuple[str, str]]:
    return [
        (resource_id, reason)
        for resource_id, reason in server_sql(
            market.live,
            "SELECT resource_id, reason FROM job_declines WHERE job_id = ?",
            job_id,
        )
    ]


def metered_s(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["startedAt"])
    completed = datetime.fromisoformat(job["completedAt"])
    return (completed - started).total_seconds()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def outbox(machine: Machine, job_id: str) -> int:
    with closing(sqlite3.connect(machine.state_dir / "agent.db", timeout=30)) as conn:
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE job_id = ?", (job_id,)
        ).fetchone()
    return int(count)


def quick_job(**overrides: object) -> dict[str, object]:
    """A small job that any machine here fits: 1 core, 1 GB, 36 s estimated (36 tokens at
    PRICE_PER_HOUR), budget 50."""
    body = job_body(
        requirements={"minCpuCores": 1, "minMemoryGb": 1, "estimatedDurationHours": 0.01},
        budget=50,
        code=job_code(),
    )
    body.update(overrides)
    return body


@dataclass
class Machine:
    """One provider machine: its owner, its agent.toml, its state dir and its agent process."""

    live: LiveServer
    owner: Account
    root: Path
    config: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    docker: bool = False
    """Run `calctra-agent run` (the Docker runner) rather than tests.agent_main."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment of the CLI and the daemon, over the test's own."""

    @property
    def config_path(self) -> Path:
        return self.root / "agent.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def work_dir(self) -> Path:
        return self.state_dir / "jobs"

    @property
    def wallet_path(self) -> Path:
        return self.state_dir / "wallet.json"

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    def write_config(self, **changes: Any) -> None:
        """Change settings (None removes one) and write agent.toml."""
        for key, value in changes.items():
            if value is None:
                self.config.pop(key, None)
            else:
                self.config[key] = value
        self.config_path.write_text(to_toml(self.config))

    # the CLI

    def cli(
        self, *args: str, stdin: str | None = None, config: bool = True, timeout_s: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run `calctra-agent ARGS --config agent.toml`."""
        command = [sys.executable, "-m", "calctra_agent", *args]
        if config:
            command += ["--config", str(self.config_path)]
        return subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**_environment(), **self.env},
            timeout=timeout_s,
        )

    def login(self) -> subprocess.CompletedProcess[str]:
        done = self.cli("login", "--email", self.owner.email, "--password-stdin", stdin=PASSWORD)
        assert done.returncode == 0, done.stderr + done.stdout
        return done

    def json(self, *args: str) -> Any:
        done = self.cli(*args, "--json")
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    # the daemon

    def start(self, wait_ready: bool = True) -> None:
        """Start the daemon; with `wait_ready`, return once it logged that it is ready."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            if self.docker:
                command = ["-m", "calctra_agent", "run", "--config", str(self.config_path)]
            else:
                command = ["-m", "tests.agent_main", str(self.config_path)]
            self.process = subprocess.Popen(
                [sys.executable, *command],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**_environment(), **self.env},
            )
        if wait_ready:
            self.wait_log("agent ready", occurrences=self.starts)

    def send(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait_exit(self, timeout_s: float = 20.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> int:
        """Signal the daemon and wait for it to exit; returns its exit status."""
        self.send(sig)
        return self.wait_exit(timeout_s)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, occurrences: int = 1, timeout_s: float = 30.0) -> str:
        """Wait until the log holds `text` `occurrences` times; fails early if the daemon
        exits meanwhile."""
        deadline = time.monotonic() + timeout_s
        while self.log().count(text) < occurrences:
            if self.process is not None and self.process.poll() is not None:
                if self.log().count(text) >= occurrences:
                    break
                raise AssertionError(
                    f"the agent exited ({self.process.returncode}) before logging {text!r}:\n"
                    + self.log()
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"the agent did not log {text!r}:\n{self.log()}")
            time.sleep(0.1)
        return self.log()

    # local state

    def meta(self, key: str) -> str | None:
        with closing(sqlite3.connect(self.state_dir / "agent.db", timeout=30)) as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @property
    def resource_id(self) -> str:
        resource_id = self.meta("resource_id")
        assert resource_id, "the machine has not logged in"
        return resource_id

    def agent_client(self) -> httpx.Client:
        """An HTTP client with this machine's agent token, as the daemon holds it."""
        return self.live.client(self.meta("agent_token"))

    def job_dirs(self) -> list[str]:
        if not self.work_dir.exists():
            return []
        return sorted(p.name for p in self.work_dir.iterdir() if (p / "pid").exists())

    def containers(self) -> list[Any]:
        """The job containers of this machine's agent, running or not."""
        from tests.docker_support import docker_client

        instance = self.meta("instance_id")
        client = docker_client()
        try:
            return list(
                client.containers.list(
                    all=True, filters={"label": f"calctra.instance-id={instance}"}
                )
            )
        finally:
            client.close()

    def remove_containers(self) -> None:
        for container in self.containers():
            container.remove(force=True)

    def kill_jobs(self) -> None:
        """Kill what is left of the jobs' processes."""
        for job_id in self.job_dirs():
            try:
                os.killpg(int((self.work_dir / job_id / "pid").read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def _environment() -> dict[str, str]:
    # The machine's settings come from its agent.toml alone.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALCTRA_")}
    env["PYTHONPATH"] = str(REPO)
    return env


@dataclass
class Market:
    """Accounts, machines, resources and jobs on one server, removed again by `close()`."""

    live: LiveServer
    tmp_path: Path
    log_start: int = 0
    """The server's log lines before this market opened."""
    accounts: list[Account] = field(default_factory=list)
    machines: list[Machine] = field(default_factory=list)
    resources: list[tuple[Account, str]] = field(default_factory=list)
    jobs: list[tuple[Account, str]] = field(default_factory=list)

    def account(self, name: str = "Test User", deposit: float = 0) -> Account:
        acct = new_account(self.live, name, deposit)
        self.accounts.append(acct)
        return acct

    def machine(self, login: bool = True, docker: bool = False, **config: Any) -> Machine:
        """A provider machine with a fresh owner; logged in unless `login=False`; running
        the Docker runner with `docker=True`."""
        owner = self.account("Provider Pat")
        root = self.tmp_path / f"machine-{len(self.machines)}-{uuid.uuid4().hex[:6]}"
        root.mkdir()
        settings: dict[str, Any] = {
            "api_url": self.live.url,
            "state_dir": str(root / "state"),
            "resource_name": root.name,
            "price_per_hour": PRICE_PER_HOUR,
            "heartbeat_interval_s": 1,
            "offer_wait_s": 2,
            "outbox_interval_s": 0.5,
            "max_concurrent_jobs": 2,
        }
        settings.update(config)
        machine = Machine(self.live, owner, root, settings, docker=docker)
        machine.write_config()
        self.machines.append(machine)
        if login:
            machine.login()
        return machine

    def resource(self, owner: Account, body: dict[str, Any]) -> str:
        created = owner.http.post("/resources", json=body)
        assert created.status_code == 201, created.text
        resource_id = str(created.json()["resourceId"])
        self.resources.append((owner, resource_id))
        return resource_id

    def job(self, customer: Account, **overrides: object) -> str:
        created = customer.http.post("/jobs", json=quick_job(**overrides))
        assert created.status_code == 201, created.text
        job_id = str(created.json()["jobId"])
        self.jobs.append((customer, job_id))
        return job_id

    def close(self) -> None:
        for machine in self.machines:
            if machine.running:
                machine.kill()
            machine.kill_jobs()
            if machine.docker and _has_state(machine):
                machine.remove_containers()
        if self.live.process is not None and self.live.process.poll() is None:
            self._remove_from_server()
        for acct in self.accounts:
            acct.http.close()

    def _remove_from_server(self) -> None:
        for customer, job_id in self.jobs:
            customer.http.post(f"/jobs/{job_id}/cancel")
        owned = [(m.owner, m.meta("resource_id")) for m in self.machines if _has_state(m)]
        for owner, resource_id in owned + self.resources:
            if resource_id:
                owner.http.delete(f"/resources/{resource_id}")


def _has_state(machine: Machine) -> bool:
    return (machine.state_dir / "agent.db").exists()


@pytest.fixture(scope="package")
def daemon_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the daemon's tests; each test leaves its market empty."""
    live = LiveServer(data_dir=tmp_path_factory.mktemp("daemon") / "data", flags=[*SERVER_FLAGS])
    live.start()
    yield live
    live.stop()


OpenMarket = Callable[[LiveServer], Market]


@pytest.fixture
def open_market(tmp_path: Path) -> Iterator[OpenMarket]:
    """Markets on servers of the test's own (from `make_server`); closed at the end."""
    opened: list[Market] = []

    def open_one(live: LiveServer) -> Market:
        market = Market(live, tmp_path, log_start=len(live.log().splitlines()))
        opened.append(market)
        return market

    yield open_one
    for market in opened:
        market.close()


@pytest.fixture
def market(open_market: OpenMarket, daemon_server: LiveServer) -> Market:
    """Machines, accounts and jobs on the daemon tests' server."""
    return open_market(daemon_server)


@pytest.fixture
def machine(market: Market) -> Machine:
    """A machine whose owner logged in; its agent is not started."""
    return market.machine()


@pytest.fixture
def customer(market: Market) -> Account:
    """A customer with 1000 tokens on the daemon tests' server."""
    return market.account("Customer Carol", deposit=1000)


def own_server(make_server: MakeServer, *flags: str) -> LiveServer:
    """A server of the test's own, with the daemon tests' flags and `flags` after them."""
    return make_server(*SERVER_FLAGS, *flags)


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server for one module's tests, which may stop it; each test leaves it running."""
    live = LiveServer(data_dir=tmp_path_factory.mktemp("module") / "data", flags=[*SERVER_FLAGS])
    live.start()
    yield live
    if live.process is not None and live.process.poll() is None:
        live.stop()
