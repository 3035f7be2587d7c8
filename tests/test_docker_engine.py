"""The Docker engine and local images that scripts/test and scripts/build-images provide.

The engine is the real one; the pid-file tests run scripts/_docker.sh's own cleanup over a
temporary run directory, with processes renamed dockerd and containerd, so that the running
engine is never touched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker_support import BUSYBOX_IMAGE, PYTHON_IMAGE, docker_client, require_images

REPO = Path(__file__).resolve().parent.parent
DOCKER_SH = REPO / "scripts" / "_docker.sh"
BUILD_IMAGES = REPO / "scripts" / "build-images"


def test_engine_answers() -> None:
    client = docker_client()
    try:
        assert client.version()["ApiVersion"]
    finally:
        client.close()


def test_both_local_images_exist() -> None:
    client = docker_client()
    try:
        require_images(client)
    finally:
        client.close()


def test_busybox_container_prints_and_has_only_loopback() -> None:
    client = docker_client()
    try:
        require_images(client, BUSYBOX_IMAGE)
        script = "echo hello from busybox; ls /sys/class/net"
        output = client.containers.run(
            BUSYBOX_IMAGE, ["sh", "-c", script], network_mode="none", remove=True
        )
    finally:
        client.close()
    assert output.decode() == "hello from busybox\nlo\n"


def test_python_image_has_the_modules_jobs_use() -> None:
    client = docker_client()
    code = (
        "import hashlib, json, os, tarfile; "
        "print(json.dumps({'sha256': hashlib.sha256(b'calctra').hexdigest(), 'uid': os.getuid()}))"
    )
    try:
        require_images(client, PYTHON_IMAGE)
        output = client.containers.run(
            PYTHON_IMAGE, ["python3", "-c", code], network_mode="none", user="65534:65534",
            remove=True,
        )  # fmt: skip
    finally:
        client.close()
    expected = hashlib.sha256(b"calctra").hexdigest()
    assert output.decode() == f'{{"sha256": "{expected}", "uid": 65534}}\n'


def test_build_images_is_quick_when_all_is_there() -> None:
    client = docker_client()
    try:
        require_images(client)
    finally:
        client.close()
    started = time.monotonic()
    result = _run([str(BUILD_IMAGES)])
    elapsed_s = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "building" not in result.stdout + result.stderr
    assert f"{BUSYBOX_IMAGE} and {PYTHON_IMAGE} present" in result.stdout
    assert elapsed_s < 3.0


def test_build_images_refuses_unknown_arguments() -> None:
    result = _run([str(BUILD_IMAGES), "--rebuild"])
    assert result.returncode == 2
    assert result.stderr == (
        "build-images: unexpected arguments: --rebuild; the only option is --force\n"
    )


def test_engine_named_by_docker_host_is_never_started(tmp_path: Path) -> None:
    socket = tmp_path / "docker.sock"
    result = _run([str(BUILD_IMAGES)], DOCKER_HOST=f"unix://{socket}")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"docker: no engine answers at DOCKER_HOST=unix://{socket} (")
    assert lines[0].endswith("unset DOCKER_HOST to use a local one")
    assert result.stdout == ""
    assert not socket.exists()


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "docker" / "containerd").mkdir(parents=True)
    return tmp_path


@pytest.fixture
def named_processes(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Live processes whose command names are dockerd, containerd and sleep, by name."""
    processes = {}
    for name in ("dockerd", "containerd", "sleep"):
        program = tmp_path / "bin" / name
        program.parent.mkdir(exist_ok=True)
        shutil.copy(shutil.which("sleep") or "/bin/sleep", program)
        processes[name] = subprocess.Popen([str(program), "60"])
    yield {name: process.pid for name, process in processes.items()}
    for process in processes.values():
        process.kill()
        process.wait()


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("content", ["dead", "sleep", "not a pid"])
def test_stale_dockerd_pid_file_is_removed(
    run_dir: Path, named_processes: dict[str, int], content: str
) -> None:
    pid_file = run_dir / "docker.pid"
    pid = {"dead": _dead_pid(), "sleep": named_processes["sleep"]}.get(content, content)
    pid_file.write_text(f"{pid}\n")
    result = _clear_stale(run_dir)
    assert result.stdout == f"docker: removing stale {pid_file}\n"
    assert not pid_file.exists()


def test_pid_file_of_a_live_dockerd_is_kept(
    run_dir: Path, named_processes: dict[str, int]
) -> None:
    pid_file = run_dir / "docker.pid"
    pid_file.write_text(f"{named_processes['dockerd']}\n")
    containerd = run_dir / "docker" / "containerd"
    (containerd / "containerd.pid").write_text(str(named_processes["containerd"]))
    (containerd / "containerd.sock").touch()
    result = _clear_stale(run_dir)
    assert result.stdout == ""
    assert pid_file.read_text() == f"{named_processes['dockerd']}\n"
    assert sorted(path.name for path in containerd.iterdir()) == [
        "containerd.pid",
        "containerd.sock",
    ]


def test_containerd_leftovers_of_a_dead_containerd_are_removed(run_dir: Path) -> None:
    containerd = run_dir / "docker" / "containerd"
    (containerd / "containerd.pid").write_text(str(_dead_pid()))
    for name in ("containerd.sock", "containerd.sock.ttrpc", "containerd-debug.sock"):
        (containerd / name).touch()
    (containerd / "containerd.toml").write_text("")
    result = _clear_stale(run_dir)
    assert result.stdout.startswith("docker: removing stale containerd files: ")
    assert [path.name for path in containerd.iterdir()] == ["containerd.toml"]


def _clear_stale(run_dir: Path) -> subprocess.CompletedProcess[str]:
    script = f'set -euo pipefail; source "{DOCKER_SH}"; _docker_run_dir="$1"; _docker_clear_stale'
    result = _run(["bash", "-c", script, "bash", str(run_dir)])
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )
