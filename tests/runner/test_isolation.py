"""What a job can and cannot do inside its container."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

from calctra_agent.runner import Grant
from calctra_agent.runner.docker._labels import (
    LABEL_DEADLINE,
    LABEL_INSTANCE_ID,
    LABEL_JOB_ID,
    LABEL_RESOURCE_ID,
    LABEL_VERSION,
)
from tests.runner.conftest import Events, Harness, job, unpack

REPORT = """
import os
def report(text):
    with open(os.path.join(os.environ["CALCTRA_OUTPUT_DIR"], "report"), "w") as file:
        file.write(text)
"""


def run_report(harness: Harness, code: str, tmp_path: Path, **overrides: object) -> str:
    """Run `code` (which calls report()) to completion; returns what it reported."""
    runner, events = harness.runner(), Events()
    spec = job(REPORT + code, **overrides)
    runner.start(spec, events)
    return unpack(events.outcome(spec.job_id), tmp_path / "unpacked")["report"].decode()


def test_job_has_no_network_and_cannot_reach_the_hosts_loopback(
    harness: Harness, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    reached = "connected"
except OSError as exc:
    reached = type(exc).__name__
report(" ".join(sorted(os.listdir("/sys/class/net"))) + " " + reached)
"""
        listener.settimeout(0.1)
        reported = run_report(harness, code, tmp_path)
        try:
            listener.accept()[0].close()
            accepted = True
        except TimeoutError:
            accepted = False

    assert reported == "lo ConnectionRefusedError"
    assert not accepted


def test_job_cannot_write_outside_its_output_and_tmp(harness: Harness, tmp_path: Path) -> None:
    code = """
import errno
results = []
for path in ("/var/tmp/x", "/job/code/x", "/etc/x", "/tmp/x", "/job/output/x"):
    try:
        open(path, "w").close()
        results.append("ok")
    except OSError as exc:
        results.append(errno.errorcode[exc.errno])
report(" ".join(results))
"""
    assert run_report(harness, code, tmp_path) == "EROFS EROFS EROFS ok ok"


def test_job_runs_unprivileged(harness: Harness, tmp_path: Path) -> None:
    code = """
with open("/proc/self/status") as status:
    fields = dict(line.split(":", 1) for line in status)
caps = [fields[name].strip() for name in ("CapEff", "CapPrm", "CapBnd")]
report(f"{os.getuid()}:{os.getgid()} {' '.join(caps)} {fields['NoNewPrivs'].strip()}")
"""
    uid = 65534 if os.getuid() == 0 else os.getuid()
    gid = 65534 if os.getuid() == 0 else os.getgid()
    zero = "0000000000000000"

    assert run_report(harness, code, tmp_path) == f"{uid}:{gid} {zero} {zero} {zero} 1"


def test_job_sees_nothing_of_the_agent(harness: Harness, tmp_path: Path) -> None:
    secret_name = f"calctra-secret-{uuid.uuid4().hex}"
    state_dir = harness.tmp_path / "state"
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / secret_name).write_text("wallet and token")
    os.environ["CALCTRA_TEST_SECRET"] = "agent-only"
    code = f"""
found = []
for top in sorted(set(os.listdir("/")) - {{"proc", "sys", "dev"}}):
    for root, dirs, files in os.walk("/" + top):
        found += [os.path.join(root, name) for name in files if name == "{secret_name}"]
report(chr(10).join([",".join(sorted(os.environ)), ",".join(sorted(os.listdir("/job")))] + found))
"""
    try:
        reported = run_report(harness, code, tmp_path)
    finally:
        del os.environ["CALCTRA_TEST_SECRET"]

    names, job_dir, *found = reported.split("\n")
    assert "CALCTRA_TEST_SECRET" not in names.split(",")
    assert set(names.split(",")) <= {
        "CALCTRA_JOB_ID", "CALCTRA_OUTPUT_DIR", "CALCTRA_DATA_DIR", "CALCTRA_PROGRESS_FILE",
        "HOME", "PATH", "HOSTNAME", "PYTHONUNBUFFERED",
        "LC_CTYPE",  # set by Python itself in a C locale (PEP 538)
    }  # fmt: skip
    assert job_dir == "code,data,output,status"
    assert found == []


def test_fork_bomb_is_held_by_the_pids_limit(harness: Harness, tmp_path: Path) -> None:
    code = """
import errno, signal, time
def bomb():
    while True:
        try:
            os.fork()
        except OSError:
            time.sleep(0.01)
refused, started = 0, time.time()
while time.time() - started < 2:
    try:
        if os.fork() == 0:
            bomb()
    except OSError as exc:
        refused += 1
        reason = errno.errorcode[exc.errno]
os.kill(-1, signal.SIGKILL)  # every process of the job but this one
report(f"{reason} {refused > 0}")
"""
    runner, events = harness.runner(settings=harness.settings(pids_limit=64)), Events()
    spec = job(REPORT + code)

    runner.start(spec, events)
    files = unpack(events.outcome(spec.job_id), tmp_path / "unpacked")

    assert files["report"] == b"EAGAIN True"
    assert subprocess.run(["true"], check=False).returncode == 0  # the host can still fork


def test_container_is_confined_to_the_grant_and_labelled(harness: Harness) -> None:
    settings = harness.settings(pids_limit=100, tmp_size_mb=32)
    runner, events = harness.runner(settings=settings), Events()
    spec = job("import time\ntime.sleep(60)", grant=Grant(1, 0.5, 1), timeout_s=30)
    runner.start(spec, events)
    events.wait_for(lambda: events.started_jobs)

    [container] = harness.containers(runner.instance_id)
    host, config = container.attrs["HostConfig"], container.attrs["Config"]
    runner.cancel(spec.job_id)

    assert host["Memory"] == host["MemorySwap"] == 512 * 1024**2
    assert host["NanoCpus"] == 10**9
    assert host["PidsLimit"] == 100
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=32m"}
    assert host["LogConfig"] == {
        "Type": "json-file",
        "Config": {"max-size": "64m", "max-file": "2"},
    }
    assert not host.get("Binds") and not host.get("DeviceRequests")
    assert {mount["Destination"]: mount["RW"] for mount in container.attrs["Mounts"]} == {
        "/job/code": False, "/job/data": False, "/job/output": True, "/job/status": True,
    }  # fmt: skip
    labels = config["Labels"]
    assert labels[LABEL_JOB_ID] == spec.job_id
    assert labels[LABEL_RESOURCE_ID] == "res_test"
    assert labels[LABEL_INSTANCE_ID] == runner.instance_id
    assert labels[LABEL_VERSION] == "0.1.0"
    assert float(labels[LABEL_DEADLINE]) > 0
