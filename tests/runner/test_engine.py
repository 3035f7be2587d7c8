"""The runner's connection to the engine: the light calls of an idle agent, the SDK's errors,
and the addresses it takes. Against the real engine."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import docker
import pytest

from calctra_agent.errors import RunnerError
from calctra_agent.runner.docker import DockerRunner
from calctra_agent.runner.docker._engine import Engine, NotOnEngine, engine_errors
from tests.docker_support import BUSYBOX_IMAGE
from tests.runner.conftest import Harness

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
