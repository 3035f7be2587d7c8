"""The runner's connection to the engine: the light calls of an idle agent, the SDK's errors,
and the addresses it takes. Against the real engine."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from calctra_agent.errors import RunnerError
from calctra_agent.runner import Completed
from calctra_agent.runner.docker import DockerRunner
from calctra_agent.runner.docker._engine import Engine, NotOnEngine, engine_errors
from tests.docker_support import BUSYBOX_IMAGE
from tests.runner.conftest import Events, Harness, job, wait_idle

REPO_ROOT = Path(__file__).resolve().parents[2]

IDLE_RUNNER = """
import sys
from calctra_agent.config import AgentSettings
from calctra_agent.runner import default_runner

settings = AgentSettings(state_dir=sys.argv[1])
# No job comes: the platform and the job events are never called.
runner = default_runner(settings, platform=None, resource_id="res_idle", instance_id=sys.argv[2])
recovery = runner.recover([], events=None)
runner.running()
runner.close()
loaded = sorted(name for name in ("docker", "requests", "urllib3") if name in sys.modules)
print(f"recovered={len(recovery.running)} loaded={loaded}")
"""


def test_runner_without_a_job_never_loads_the_docker_sdk(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", IDLE_RUNNER, str(tmp_path / "state"), f"test-{uuid.uuid4().hex}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "recovered=0 loaded=[]"


class _ToEngineSocket(socketserver.BaseRequestHandler):
    """Relays one TCP connection to the engine's unix socket, both ways."""

    server: _Relay

    def handle(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as engine:
            engine.connect(self.server.socket_path)
            back = threading.Thread(target=_pump, args=(engine, self.request), daemon=True)
            back.start()
            _pump(self.request, engine)
            back.join(10)


def _pump(source: socket.socket, dest: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            dest.sendall(data)
        dest.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class _Relay(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    socket_path: str


@contextmanager
def engine_on_loopback_tcp(socket_path: str) -> Iterator[str]:
    """The engine of unix socket `socket_path` at a tcp://127.0.0.1 address, by a relay."""
    with _Relay(("127.0.0.1", 0), _ToEngineSocket) as relay:
        relay.socket_path = socket_path
        thread = threading.Thread(target=relay.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"tcp://127.0.0.1:{relay.server_address[1]}"
        finally:
            relay.shutdown()


def test_engine_at_a_tcp_address_is_used_like_the_socket(
    client: docker.DockerClient, engine: Engine
) -> None:
    assert engine.host.startswith("unix://")
    with engine_on_loopback_tcp(engine.host.removeprefix("unix://")) as address:
        over_tcp = Engine(address, max_pool_size=2)
        try:
            info = over_tcp.info()
            listed = over_tcp.containers({"label": ["calctra.test=none"]})
            sdk_version = over_tcp.sdk.version()["Version"]
        finally:
            over_tcp.close()

    assert info["ID"] == engine.info()["ID"]
    assert listed == []
    assert sdk_version == info["ServerVersion"]


def test_job_runs_on_an_engine_at_a_tcp_address(harness: Harness, engine: Engine) -> None:
    with engine_on_loopback_tcp(engine.host.removeprefix("unix://")) as address:
        runner = harness.runner(settings=harness.settings(docker_host=address))
        events = Events()
        spec = job("print('over tcp')")

        runner.start(spec, events)
        outcome = events.outcome(spec.job_id)
        wait_idle(runner)

    assert isinstance(outcome, Completed), outcome
    assert harness.platform.log(spec.job_id) == b"over tcp\n"


def test_containers_are_listed_by_label_with_their_state(
    client: docker.DockerClient, engine: Engine
) -> None:
    label = f"calctra.test={uuid.uuid4().hex}"
    created = client.containers.create(
        BUSYBOX_IMAGE, command=["true"], labels=dict([label.split("=")]), network_mode="none"
    )
    try:
        (found,) = engine.containers({"label": [label]})
        others = engine.containers({"label": [f"{label}-other"]})
    finally:
        created.remove(force=True)

    assert found["Id"] == created.id
    assert found["State"] == "created"
    assert found["Labels"]["calctra.test"] == label.split("=")[1]
    assert others == []


def test_sdk_is_made_once_and_its_missing_objects_are_not_found(engine: Engine) -> None:
    assert engine.sdk is engine.sdk

    with pytest.raises(NotOnEngine) as raised, engine_errors("read container calctra-absent"):
        engine.sdk.containers.get("calctra-absent")

    assert str(raised.value).startswith("cannot read container calctra-absent: ")
    assert "calctra-absent" in str(raised.value).removeprefix("cannot read container")


def test_engine_address_the_agent_cannot_use_is_a_clear_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", "ssh://builder@engine.example")

    with pytest.raises(RunnerError) as raised:
        DockerRunner(harness.settings(), harness.platform, "res_test", "test-ssh")

    assert str(raised.value) == (
        "cannot use the Docker engine at ssh://builder@engine.example: the agent reaches a "
        "Docker engine at a unix:// or tcp:// address only"
    )
