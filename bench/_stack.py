"""A reference server and a real agent daemon on loopback, in a temp dir, for the benchmarks.

The agent is either `calctra-agent run` itself, with the Docker runner (`docker=True`), or
`python -m tests.agent_main`: the same daemon with the tests' ProcessRunner in place of the
Docker runner, for benchmarks of the daemon alone. Its owner logs in with the real
`calctra-agent login`. Everything is stopped and removed on leaving `stack()`.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench password 1234"
TRIVIAL_JOB = {
    "name": "bench job",
    "type": "custom_code",
    "code": "print('ok')",
    "requirements": {"minCpuCores": 1, "minMemoryGb": 0.5, "estimatedDurationHours": 0.01},
    "budget": 1,
}
FINAL_STATUSES = ("COMPLETED", "FAILED", "CANCELLED")
_STOP_TIMEOUT_S = 15.0
_POLL_S = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Child:
    """A process started by the benchmark, its output in a log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.log().splitlines()[-30:])
            raise RuntimeError(f"the {self.name} exited (code {self.process.returncode}):\n{tail}")


@dataclass
class Stack:
    """A running server and agent, with a funded customer and the agent's credentials."""

    tmp: Path
    api_url: str
    server: Child
    agent: Child
    customer: httpx.Client
    agent_api: httpx.Client
    """The provider API with the agent's own token, to read back what it accepted."""
    resource_id: str

    def wait_final(self, job_id: str, timeout_s: float = 30.0) -> str:
        """Poll the job until it ends; returns its final status."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.agent.check_alive()
            job = self.customer.get(f"/jobs/{job_id}").raise_for_status().json()
            if job["status"] in FINAL_STATUSES:
                return str(job["status"])
            time.sleep(_POLL_S)
        raise RuntimeError(f"job {job_id} did not end within {timeout_s} s")


@contextmanager
def spawn(name: str, command: list[str], log_path: Path) -> Iterator[Child]:
    """Start a process; SIGTERM it (then SIGKILL) on exit."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        yield Child(name, process, log_path)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(check: Any, what: str, child: Child, timeout_s: float = 30.0) -> None:
    """Call `check()` until it is true, while `child` lives."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        child.check_alive()
        if check():
            return
        time.sleep(_POLL_S)
    raise RuntimeError(f"{what} did not happen within {timeout_s} s:\n{child.log()[-3000:]}")


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=1.0)
    except httpx.TransportError:
        return False
    return True


def start_server(stack: ExitStack, tmp: Path, flags: list[str]) -> tuple[Child, str]:
    port = free_port()
    command = [
        sys.executable, "-m", "calctra_agent", "server", "--host", "127.0.0.1",
        "--port", str(port), "--data-dir", str(tmp / "server"), "--dev-faucet",
        "--rate-limit", "0", *flags,
    ]  # fmt: skip
    server = stack.enter_context(spawn("server", command, tmp / "server.log"))
    api_url = f"http://127.0.0.1:{port}/v1"
    wait_until(lambda: _answers(f"{api_url}/openapi.json"), "server start", server)
    return server, api_url


def register(api_url: str, name: str) -> str:
    """A new account; returns its email."""
    email = f"{name}-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": PASSWORD, "name": name}
    httpx.post(f"{api_url}/api/auth/register", json=body).raise_for_status()
    return email


def customer_client(api_url: str, deposit: float) -> httpx.Client:
    email = register(api_url, "customer")
    login = httpx.post(f"{api_url}/api/auth/login", json={"email": email, "password": PASSWORD})
    login.raise_for_status()
    headers = {"authorization": f"Bearer {login.json()['token']}"}
    client = httpx.Client(base_url=f"{api_url}/api", headers=headers, timeout=30.0)
    client.post("/tokens/deposit", json={"amount": deposit}).raise_for_status()
    return client


def write_config(tmp: Path, api_url: str, settings: dict[str, Any]) -> Path:
    """agent.toml: `settings` are top-level values, but for a dict value, which is a table."""
    lines = [
        f'api_url = "{api_url}"',
        f'state_dir = "{tmp / "agent"}"',
        "price_per_hour = 2.0",
        'log_level = "INFO"',
        *(f"{key} = {json.dumps(v)}" for key, v in settings.items() if not isinstance(v, dict)),
    ]
    for table, values in settings.items():
        if isinstance(values, dict):
            lines += [f"[{table}]", *(f"{key} = {json.dumps(v)}" for key, v in values.items())]
    path = tmp / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def login_agent(config: Path, email: str) -> None:
    command = [
        sys.executable, "-m", "calctra_agent", "login", "--config", str(config),
        "--email", email, "--password-stdin",
    ]  # fmt: skip
    done = subprocess.run(
        command, input=f"{PASSWORD}\n", capture_output=True, text=True, cwd=REPO_ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(f"calctra-agent login failed:\n{done.stdout}\n{done.stderr}")


def agent_credentials(state_dir: Path) -> tuple[str, str]:
    """The resource id and agent token that `login` stored."""
    sys.path.insert(0, str(REPO_ROOT))
    from calctra_agent.daemon import State

    state = State(state_dir)
    try:
        credentials = state.credentials()
    finally:
        state.close()
    if credentials is None:
        raise RuntimeError(f"no agent credentials in {state_dir} after login")
    return credentials.resource_id, credentials.agent_token


@contextmanager
def stack(
    server_flags: list[str], agent_settings: dict[str, Any], docker: bool = False
) -> Iterator[Stack]:
    """Server, customer, owner, `calctra-agent login`, and the agent daemon, ready."""
    with tempfile.TemporaryDirectory(prefix="calctra-bench-") as name, ExitStack() as stack:
        tmp = Path(name)
        server, api_url = start_server(stack, tmp, server_flags)
        customer = customer_client(api_url, deposit=10_000)
        stack.callback(customer.close)
        config = write_config(tmp, api_url, agent_settings)
        login_agent(config, register(api_url, "provider"))
        resource_id, token = agent_credentials(tmp / "agent")
        agent_api = stack.enter_context(
            httpx.Client(
                base_url=f"{api_url}/api",
                headers={"authorization": f"Bearer {token}"},
                timeout=30.0,
            )
        )
        if docker:
            command = [sys.executable, "-m", "calctra_agent", "run", "--config", str(config)]
        else:
            command = [sys.executable, "-m", "tests.agent_main", str(config)]
        agent = stack.enter_context(spawn("agent", command, tmp / "agent.log"))
        wait_until(lambda: "agent ready" in agent.log(), "agent start", agent)
        yield Stack(tmp, api_url, server, agent, customer, agent_api, resource_id)
