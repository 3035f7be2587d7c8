"""Load benchmark of the reference server: requests/s and latency over loopback.

Starts the reference server in a subprocess (rate limiting and the access log off) over a temp
data dir, seeds it with many resources written straight into its SQLite file, and drives it
with keep-alive clients in a few processes. A bare FastAPI app served by uvicorn with the same
settings is measured by the same client in the same run, as the ceiling to compare against.

Besides listings with fixed filters, one line asks for a new random listing each request (random
minimum cores, maximum price, GPU or not, and page), so that no cache of any kind, in the server
or in SQLite, can make the figures look better than they are.

    .venv/bin/python bench/server_load.py [--resources 100000] [--duration 10]

Prints figures; it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "bench password 1234"
LIST_P99_TARGET_MS = 50.0
USERS_ME_RPS_TARGET = 1000.0
HEARTBEATS_RPS_TARGET = 1000.0
HEARTBEAT_AGENTS = 200
GPU_MODELS = [
    ("NVIDIA H100", 80.0),
    ("NVIDIA A100", 40.0),
    ("NVIDIA A100", 80.0),
    ("NVIDIA L4", 24.0),
    ("NVIDIA T4", 16.0),
    ("GeForce RTX 4090", 24.0),
    ("GeForce RTX 3090", 24.0),
]
LIST_QUERIES = [
    "minCpu=16&hasGpu=true&maxPrice=10&limit=20",
    "type=CPU&minMemory=64&minStorage=500&limit=20",
    "limit=20",
]
RANDOM_MIN_CPUS = [1, 2, 4, 8, 16, 32, 64]
RANDOM_LIST_LABEL = "GET /v1/api/resources?<random minCpu,maxPrice,hasGpu,page 1-5>"
# The uvicorn settings of calctra_agent.server_stub._serve.serve, access log off; loop and
# http are uvicorn's "auto" (uvloop and httptools where installed) in both servers.
UVICORN_SETTINGS: dict[str, Any] = {
    "log_config": None,
    "access_log": False,
    "proxy_headers": False,
    "timeout_graceful_shutdown": 10,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- servers -------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def run_server(
    name: str, command: list[str], log_path: Path, port: int
) -> Iterator[ServerProcess]:
    """Start a server process and wait until its port answers HTTP; stop it on exit."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    server = ServerProcess(name, port, process, log_path)
    try:
        wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready(server: ServerProcess, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited at start:\n{server.log_tail()}")
        try:
            httpx.get(f"{server.base_url}/", timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{server.name} did not start within {timeout_s} s:\n{server.log_tail()}")


def reference_server_command(data_dir: Path, port: int) -> list[str]:
    return [
        sys.executable, "-m", "calctra_agent", "server",
        "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir),
        "--rate-limit", "0", "--no-access-log",
    ]  # fmt: skip


def baseline_server_command(port: int) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--serve-baseline", str(port)]


def serve_baseline(port: int) -> None:
    """The ceiling: one async endpoint returning a constant dict, nothing else."""
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/api/constant")
    async def constant() -> dict[str, str]:
        return {"status": "ok", "service": "baseline"}

    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **UVICORN_SETTINGS)).run()


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- seeding -------------------------------------------------------------------------------


def register_and_login(base_url: str, email: str) -> tuple[str, str]:
    """Register an account through the API; returns its user id and a token."""
    with httpx.Client(base_url=f"{base_url}/v1/api", timeout=30.0) as client:
        response = client.post(
            "/auth/register", json={"email": email, "password": PASSWORD, "name": "Bench"}
        )
        response.raise_for_status()
        response = client.post("/auth/login", json={"email": email, "password": PASSWORD})
        response.raise_for_status()
        body = response.json()
        return str(body["user"]["id"]), str(body["token"])


def resource_rows(
    count: int, owner_ids: Sequence[str], rng: random.Random
) -> Iterator[dict[str, Any]]:
    """Varied resources: 1-128 cores, about 30% with a GPU, prices 0.1-20 tokens an hour."""
    now = datetime.now(UTC)
    for index in range(count):
        gpu = rng.choice(GPU_MODELS) if rng.random() < 0.3 else None
        kind = "GPU" if gpu else ("Storage" if rng.random() < 0.05 else "CPU")
        availability = None
        if rng.random() < 0.2:
            days = sorted(rng.sample(range(1, 8), rng.randint(1, 7)))
            schedule = {"days": days, "startHour": rng.randint(0, 11), "endHour": 23}
            availability = {"schedule": schedule, "timezone": "UTC"}
        yield {
            "id": f"res_{rng.getrandbits(64):016x}",
            "owner_id": owner_ids[index % len(owner_ids)],
            "name": f"bench-{index}",
            "description": "seeded by bench/server_load.py",
            "type": kind,
            "cpu_cores": rng.choice([1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128]),
            "memory_gb": float(rng.choice([2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])),
            "storage_gb": float(rng.choice([20, 50, 100, 250, 500, 1000, 2000, 8000])),
            "has_gpu": gpu is not None,
            "gpu_model": gpu[0] if gpu else None,
            "gpu_memory_gb": gpu[1] if gpu else None,
            "price_per_hour": rng.randint(100_000, 20_000_000),
            "availability": availability,
            "reputation": round(rng.uniform(0, 5), 2),
            "rating_count": rng.randint(0, 50),
            "active": rng.random() < 0.97,
            "created_at": now,
            "updated_at": now,
        }


def seed(database_url: str, owner_id: str, count: int) -> None:
    """Insert `count` resources, spread over about one owner per 100 resources (the user that
    logged in through the API among them), in one transaction."""
    from sqlalchemy import create_engine, insert

    from calctra_agent.server_stub._db import Resource, User

    rng = random.Random(20240601)
    owners = [owner_id] + [f"usr_{rng.getrandbits(64):016x}" for _ in range(count // 100)]
    now = datetime.now(UTC)
    # "!" is no argon2 hash: nobody can log in as these owners.
    users = [
        dict(
            id=user, email=f"{user}@bench.invalid", name="Owner", password_hash="!", created_at=now
        )
        for user in owners[1:]
    ]
    engine = create_engine(database_url)
    with engine.begin() as connection:
        if users:
            connection.execute(insert(User), users)
        rows = list(resource_rows(count, owners, rng))
        for start in range(0, len(rows), 20_000):
            connection.execute(insert(Resource), rows[start : start + 20_000])
    engine.dispose()


# --- load client ---------------------------------------------------------------------------


@dataclass
class Window:
    """The measured interval, in time.monotonic() seconds of the worker's own clock."""

    start: float
    end: float


class Stats:
    """What one client process measured in the window."""

    def __init__(self) -> None:
        self.latencies_s: list[float] = []
        self.errors = 0
        self.bad_status: dict[int, int] = {}
        self.cpu_s = 0.0
        """This process's CPU seconds in the window."""

    def start_cpu_clock(self) -> None:
        self.cpu_s = -time.process_time()

    def stop_cpu_clock(self) -> None:
        self.cpu_s += time.process_time()


def random_list_path(rng: random.Random) -> str:
    """A listing with random filters and page, hardly ever the same twice."""
    query = [f"minCpu={rng.choice(RANDOM_MIN_CPUS)}", f"maxPrice={rng.uniform(1, 20):.2f}"]
    has_gpu = rng.choice([None, "true", "false"])
    if has_gpu:
        query.append(f"hasGpu={has_gpu}")
    query += [f"page={rng.randint(1, 5)}", "limit=20"]
    return "/v1/api/resources?" + "&".join(query)


@dataclass(frozen=True)
class Target:
    """What the load asks for: `path` every time, or a new random listing if it is None.
    With `tokens`, each request is a POST of `body` from one of those agents, at random."""

    path: str | None
    token: str | None
    body: bytes = b""
    tokens: tuple[str, ...] = ()

    def request(self, rng: random.Random) -> bytes:
        path = self.path or random_list_path(rng)
        token = rng.choice(self.tokens) if self.tokens else self.token
        auth = f"authorization: Bearer {token}\r\n" if token else ""
        if not self.tokens:
            return f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}\r\n".encode()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{auth}"
            f"content-type: application/json\r\ncontent-length: {len(self.body)}\r\n\r\n"
        )
        return head.encode() + self.body


class _LoadConnection(asyncio.Protocol):
    """One keep-alive connection that sends the next request as soon as the answer is in.
    Responses are parsed just enough to find their end (uvicorn sends Content-Length)."""

    def __init__(self, target: Target, window: Window, stats: Stats, done: asyncio.Future) -> None:
        self._target = target
        self._rng = random.Random()
        self._fixed = target.request(self._rng) if target.path else None
        self._window = window
        self._stats = stats
        self._done = done
        self._buffer = b""
        self._response_end: int | None = None
        self._status = 0
        self._sent_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self._send()

    def _send(self) -> None:
        request = self._fixed or self._target.request(self._rng)
        self._sent_at = time.monotonic()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._response_end is None:
            header_end = self._buffer.find(b"\r\n\r\n")
            if header_end < 0:
                return
            head = self._buffer[:header_end].lower()
            self._status = int(head[9:12])
            length_at = head.index(b"\r\ncontent-length:") + 17
            length = int(head[length_at : head.index(b"\r\n", length_at)])
            self._response_end = header_end + 4 + length
        if len(self._buffer) >= self._response_end:
            self._buffer = self._buffer[self._response_end :]
            self._response_end = None
            self._finish()

    def _finish(self) -> None:
        now = time.monotonic()
        if self._window.start <= self._sent_at and now <= self._window.end:
            if 200 <= self._status < 300:
                self._stats.latencies_s.append(now - self._sent_at)
            else:
                self._stats.bad_status[self._status] = (
                    self._stats.bad_status.get(self._status, 0) + 1
                )
        if now < self._window.end:
            self._send()
        else:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.monotonic() < self._window.end:
            self._stats.errors += 1
        if not self._done.done():
            self._done.set_result(None)


async def _drive(port: int, target: Target, connections: int, window: Window) -> Stats:
    loop = asyncio.get_running_loop()
    stats = Stats()
    now = time.monotonic()
    loop.call_later(window.start - now, stats.start_cpu_clock)
    loop.call_later(window.end - now, stats.stop_cpu_clock)
    finished = []
    for _ in range(connections):
        done = loop.create_future()
        connection = functools.partial(_LoadConnection, target, window, stats, done)
        await loop.create_connection(connection, "127.0.0.1", port)
        finished.append(done)
    await asyncio.wait_for(asyncio.gather(*finished), window.end - time.monotonic() + 30)
    return stats


def load_worker(
    port: int,
    target: Target,
    connections: int,
    start_wall: float,
    warmup_s: float,
    duration_s: float,
) -> Stats:
    """One client process: `connections` keep-alive connections from `start_wall` (time.time)
    on, measuring after the warm-up for `duration_s`."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    start = time.monotonic() + (start_wall - time.time()) + warmup_s
    return asyncio.run(_drive(port, target, connections, Window(start, start + duration_s)))


def _wait_until(wall: float) -> None:
    time.sleep(max(wall - time.time(), 0))


# --- measuring and reporting ---------------------------------------------------------------


@dataclass
class Result:
    label: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    server_cpu: float
    """Server CPU seconds per wall second in the window: 1.0 is one core saturated."""
    client_cpu: float
    """The same, summed over the client processes."""

    @property
    def server_cpu_ms_per_request(self) -> float:
        """What a request costs the server, whatever else the machine is busy with."""
        return self.server_cpu * 1000 / self.rps if self.rps else float("nan")


def measure(
    server: ServerProcess,
    label: str,
    path: str | None,
    token: str | None,
    args: argparse.Namespace,
    target: Target | None = None,
) -> Result:
    """Load `path`, or a new random listing each request if it is None, for the window."""
    target = target or Target(path, token)
    start_wall = time.time() + 0.5
    context = multiprocessing.get_context("spawn")
    per_process = [args.connections // args.processes] * args.processes
    for index in range(args.connections % args.processes):
        per_process[index] += 1
    with context.Pool(args.processes) as pool:
        pending = [
            pool.apply_async(
                load_worker,
                (server.port, target, n, start_wall, args.warmup, args.duration),
            )
            for n in per_process
        ]
        _wait_until(start_wall + args.warmup)
        cpu_before = server.cpu_s()
        _wait_until(start_wall + args.warmup + args.duration)
        server_cpu = (server.cpu_s() - cpu_before) / args.duration
        outcomes = [item.get() for item in pending]
    latencies = sorted(value for stats in outcomes for value in stats.latencies_s)
    errors = sum(stats.errors + sum(stats.bad_status.values()) for stats in outcomes)
    return Result(
        label=label,
        requests=len(latencies),
        rps=len(latencies) / args.duration,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        errors=errors,
        server_cpu=server_cpu,
        client_cpu=sum(stats.cpu_s for stats in outcomes) / args.duration,
    )


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(int(len(sorted_values) * fraction), len(sorted_values) - 1)
    return sorted_values[index]


def print_header(args: argparse.Namespace) -> None:
    print(
        f"reference server load: {args.resources:,} resources, {args.connections} keep-alive "
        f"connections over {args.processes} client processes, {args.warmup:g} s warm-up then "
        f"{args.duration:g} s per endpoint; rate limit and access log off in both servers; "
        f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}"
    )
    columns = ["req/s", "p50 ms", "p99 ms", "errors", "cpu", "client", "ms/req"]
    print(f"{'endpoint':<70}" + "".join(f"{column:>9}" for column in columns))


def print_result(result: Result, target: str = "") -> None:
    print(
        f"{result.label:<70}{result.rps:>9.0f}{result.p50_ms:>9.2f}{result.p99_ms:>9.2f}"
        f"{result.errors:>9}{result.server_cpu:>9.2f}{result.client_cpu:>9.2f}"
        f"{result.server_cpu_ms_per_request:>9.2f}  {target}",
        flush=True,
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def bench_reference(args: argparse.Namespace, work_dir: Path) -> Result:
    """Seed and measure the reference server; returns the users/me result."""
    data_dir = work_dir / "data"
    port = free_port()
    command = reference_server_command(data_dir, port)
    with run_server("reference server", command, work_dir / "reference.log", port) as server:
        owner_id, token = register_and_login(server.base_url, "owner@bench.invalid")
        seeded_at = time.monotonic()
        seed(f"sqlite:///{data_dir / 'calctra.db'}", owner_id, args.resources)
        print(f"seeded {args.resources:,} resources in {time.monotonic() - seeded_at:.1f} s")
        print_header(args)
        listings: list[tuple[str, str | None]] = [
            (f"GET /v1/api/resources?{query}", f"/v1/api/resources?{query}")
            for query in LIST_QUERIES
        ]
        for label, path in [*listings, (RANDOM_LIST_LABEL, None)]:
            result = measure(server, label, path, token, args)
            met = verdict(result.p99_ms <= LIST_P99_TARGET_MS)
            print_result(result, f"target p99 <= {LIST_P99_TARGET_MS:g} ms: {met}")
        result = measure(server, "GET /v1/api/users/me", "/v1/api/users/me", token, args)
        met = verdict(result.rps >= USERS_ME_RPS_TARGET)
        print_result(result, f"target >= {USERS_ME_RPS_TARGET:g} req/s: {met}")
        measure_heartbeats(server, token, args)
    return result


def agent_tokens(base_url: str, user_token: str, count: int) -> tuple[str, ...]:
    """Register `count` resources of the bench user through the API, each with an agent
    token, as `calctra-agent login` does on each machine."""
    headers = {"authorization": f"Bearer {user_token}"}
    tokens = []
    with httpx.Client(base_url=f"{base_url}/v1/api", headers=headers, timeout=30) as client:
        for index in range(count):
            body = {
                "name": f"agent machine {index}",
                "specs": {"cpuCores": 8, "memoryGb": 32, "storageGb": 200},
                "pricePerHour": 1.0,
            }
            created = client.post("/resources", json=body).raise_for_status()
            resource_id = created.json()["resourceId"]
            issued = client.post("/agent-tokens", json={"resourceId": resource_id})
            tokens.append(issued.raise_for_status().json()["token"])
    return tuple(tokens)


def measure_heartbeats(server: ServerProcess, user_token: str, args: argparse.Namespace) -> None:
    tokens = agent_tokens(server.base_url, user_token, HEARTBEAT_AGENTS)
    body = (
        b'{"agentVersion":"0.1.0","utilization":{"cpuPercent":12.5,"memoryUsedGb":7.1,'
        b'"gpus":[{"uuid":"GPU-0","utilizationPercent":40,"memoryUsedGb":3.2,'
        b'"temperatureC":61}]},"runningJobs":[]}'
    )
    path = "/v1/api/provider/heartbeat"
    target = Target(path, None, body=body, tokens=tokens)
    label = f"POST {path} ({HEARTBEAT_AGENTS} agents)"
    result = measure(server, label, path, None, args, target=target)
    met = verdict(result.rps >= HEARTBEATS_RPS_TARGET)
    print_result(result, f"target >= {HEARTBEATS_RPS_TARGET:g} req/s: {met}")


def bench_baseline(args: argparse.Namespace, work_dir: Path) -> Result:
    port = free_port()
    command = baseline_server_command(port)
    with run_server("baseline server", command, work_dir / "baseline.log", port) as server:
        path = "/v1/api/constant"
        result = measure(server, f"baseline: bare FastAPI GET {path}", path, None, args)
    print_result(result)
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=100_000, help="resources to seed")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--connections", type=int, default=16, help="concurrent connections")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--only", choices=["reference", "baseline"], help="run one half")
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.processes = max(1, min(args.processes, args.connections))
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return
    with tempfile.TemporaryDirectory(prefix="calctra-bench-") as work_dir:
        users_me = None if args.only == "baseline" else bench_reference(args, Path(work_dir))
        if users_me is None:
            print_header(args)
        baseline = None if args.only == "reference" else bench_baseline(args, Path(work_dir))
    if users_me and baseline:
        cpu_ratio = users_me.server_cpu_ms_per_request / baseline.server_cpu_ms_per_request
        print(
            f"users/me / baseline: {users_me.rps:.0f} / {baseline.rps:.0f} req/s = "
            f"{users_me.rps / baseline.rps:.2f}; server CPU per request "
            f"{users_me.server_cpu_ms_per_request:.2f} / "
            f"{baseline.server_cpu_ms_per_request:.2f} ms = {cpu_ratio:.1f}x"
        )
    print(
        "cpu, client: CPU seconds per second in the window of the server and of all client "
        "processes (1.00 is one core busy); ms/req: server CPU ms per request"
    )


if __name__ == "__main__":
    main()
