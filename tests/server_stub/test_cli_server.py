"""`calctra-agent server`: how the command starts, logs, refuses bad options and stops."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, MakeServer


def run_cli(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "calctra_agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def wait_for_log(live: LiveServer, needle: str, count: int, timeout_s: float = 10) -> str:
    """The server's log once `needle` appears `count` times in it (its writes may lag)."""
    deadline = time.monotonic() + timeout_s
    while True:
        log = live.log()
        if log.count(needle) >= count or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_server_stops_cleanly_with_exit_code_0(make_server: MakeServer, sig: int) -> None:
    live = make_server()
    with live.client() as http:
        assert http.get("/users/me").status_code == 401

    returncode = live.stop(sig)

    log = live.log()
    assert returncode == 0, log
    assert "Shutting down" in log
    assert "background workers stopped" in log
    assert log.rstrip().endswith("reference server stopped"), log
    assert "Traceback" not in log
    assert "KeyboardInterrupt" not in log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{live.url}/openapi.json", timeout=2.0)


def test_server_logs_one_line_per_request(server: LiveServer) -> None:
    path = f"/v1/api/resources/res_{uuid.uuid4().hex}"
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as http:
        statuses = [http.get(path).status_code for _ in range(3)]
        http.delete(path)

    get_line = f'"GET {path} HTTP/1.1" 401'
    log = wait_for_log(server, get_line, 3)
    assert statuses == [401, 401, 401]
    assert log.count(get_line) == 3
    log = wait_for_log(server, f'"DELETE {path} HTTP/1.1" 401', 1)
    assert log.count(path) == 4


def test_log_level_warning_leaves_out_request_lines(make_server: MakeServer) -> None:
    live = make_server("--log-level", "warning")
    path = f"/v1/api/users/me?marker={uuid.uuid4().hex}"
    httpx.get(f"http://127.0.0.1:{live.port}{path}", timeout=30.0)

    assert live.stop() == 0

    log = live.log()
    assert path not in log
    assert " INFO " not in log


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--port", "0"], "--port"),
        (["--port", "notanumber"], "--port"),
        (["--port", "65536"], "--port"),
        (["--port", "-1"], "--port"),
        (["--rate-limit", "-5"], "--rate-limit"),
        (["--rate-limit-window", "0"], "--rate-limit-window"),
        (["--max-upload-mb", "0"], "--max-upload-mb"),
        (["--max-log-mb", "0"], "--max-log-mb"),
        (["--max-log-mb", "lots"], "--max-log-mb"),
        (["--log-level", "loud"], "--log-level"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_bad_option_exits_with_usage_error_and_no_traceback(
    tmp_path: Path, args: list[str], option: str
) -> None:
    data_dir = tmp_path / "data"

    result = run_cli("server", "--data-dir", str(data_dir), *args)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert option in result.stderr
    assert not data_dir.exists(), "a refused command must not create the data dir"


def test_server_without_a_data_dir_is_a_usage_error() -> None:
    result = run_cli("server", "--port", "8080")

    assert result.returncode == 2
    assert "--data-dir" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_port_already_in_use_fails_with_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_cli("server", "--data-dir", str(tmp_path / "data"), "--port", str(port))

    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "address already in use" in output
    assert "Traceback" not in output
