"""Fixtures for the Docker runner's tests, against the real engine.

A test drives `DockerRunner` directly, with `Events` recording what it reports and a
`MemoryPlatform` in place of the API client: it keeps the shipped log in memory (with the
server's offset rules and cap) and serves datasets from a directory. The platform's real
endpoints have their own tests; this double only lets the runner's be about the runner. Every
runner gets an instance id of its own, and the fixture removes its containers at the end.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest

from calctra_agent.config import AgentSettings
from calctra_agent.errors import Conflict, NotFound
from calctra_agent.runner import Completed, Failed, Grant, JobSpec, Outcome
from calctra_agent.runner.docker import DockerRunner
from calctra_agent.runner.docker._engine import Engine
from calctra_agent.runner.docker._labels import LABEL_INSTANCE_ID
from calctra_agent.wire import JobLogAppend
from tests.docker_support import BUSYBOX_IMAGE, PYTHON_IMAGE, docker_client, require_images

__all__ = ["BUSYBOX_IMAGE", "PYTHON_IMAGE"]


class Events:
    """A JobEvents that records every call, from any thread."""

    def __init__(self) -> None:
        self.started_jobs: list[str] = []
        self.progress_reports: list[tuple[str, int]] = []
        self.outcomes: list[tuple[str, Outcome]] = []
        self._changed = threading.Condition()

    def started(self, job_id: str) -> None:
        with self._changed:
            self.started_jobs.append(job_id)
            self._changed.notify_all()

    def progress(self, job_id: str, percent: int, message: str) -> None:
        with self._changed:
            self.progress_reports.append((job_id, percent))
            self._changed.notify_all()

    def finished(self, job_id: str, outcome: Outcome) -> None:
        with self._changed:
            self.outcomes.append((job_id, outcome))
            self._changed.notify_all()

    def wait_for(self, what: Callable[[], Any], timeout_s: float = 30.0) -> Any:
        """Wait until `what()` is truthy, and return it."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not (value := what()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout_s} s; {self!r}")
                self._changed.wait(min(remaining, 0.5))
            return value

    def outcome(self, job_id: str, timeout_s: float = 30.0) -> Outcome:
        """The job's outcome, once it finished; fails unless it finished exactly once."""
        self.wait_for(lambda: self.finished_jobs().count(job_id), timeout_s)
        outcomes = [outcome for done, outcome in self.outcomes if done == job_id]
        assert len(outcomes) == 1, outcomes
        return outcomes[0]

    def finished_jobs(self) -> list[str]:
        return [job_id for job_id, _ in self.outcomes]

    def percents(self, job_id: str) -> list[int]:
        return [percent for done, percent in self.progress_reports if done == job_id]

    def __repr__(self) -> str:
        return (
            f"Events(started={self.started_jobs}, progress={self.progress_reports}, "
            f"finished={self.outcomes})"
        )


@dataclass
class MemoryPlatform:
    """The platform as a runner sees it, in memory: logs with the server's offset semantics
    and a cap, datasets from `datasets_dir`."""

    datasets_dir: Path
    log_cap: int = 16 * 1024 * 1024
    logs: dict[str, bytearray] = field(default_factory=dict)
    appends: list[tuple[str, int, int]] = field(default_factory=list)
    truncated: set[str] = field(default_factory=set)
    downloads: list[str] = field(default_factory=list)
    download_gate: threading.Event | None = None
    """When set, downloads wait for it: a test holds a job in its preparation."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_dataset(self, dataset_id: str, content: bytes) -> str:
        self.datasets_dir.mkdir(parents=True, exist_ok=True)
        (self.datasets_dir / dataset_id).write_bytes(content)
        return hashlib.sha256(content).hexdigest()

    def download_dataset(self, dataset_id: str, dest: Path) -> str:
        self.downloads.append(dataset_id)
        if self.download_gate is not None:
            self.download_gate.wait(30)
        source = self.datasets_dir / dataset_id
        if not source.is_file():
            raise NotFound(404, "RESOURCE_NOT_FOUND", f"dataset {dataset_id} not found")
        shutil.copyfile(source, dest)
        dest.chmod(0o600)  # as a temporary file would be
        return hashlib.sha256(dest.read_bytes()).hexdigest()

    def append_job_logs(self, job_id: str, offset: int, data: bytes) -> JobLogAppend:
        with self._lock:
            log = self.logs.setdefault(job_id, bytearray())
            self.appends.append((job_id, offset, len(data)))
            if offset > len(log):
                raise Conflict(409, "CONFLICT", "gap in the log", {"size": len(log)})
            fresh = data[len(log) - offset :]
            room = self.log_cap - len(log)
            log += fresh[:room]
            if len(fresh) > room:
                self.truncated.add(job_id)
            return JobLogAppend(size=len(log), truncated=job_id in self.truncated)

    def log(self, job_id: str) -> bytes:
        with self._lock:
            return bytes(self.logs.get(job_id, b""))


def job(code: str, job_id: str | None = None, **overrides: Any) -> JobSpec:
    """A job of 1 core and 256 MB that may run 60 s, unless told otherwise."""
    values: dict[str, Any] = {
        "job_id": job_id or f"job_{uuid.uuid4().hex[:12]}",
        "code": code,
        "grant": Grant(cpu_cores=1, memory_gb=0.25, storage_gb=1),
        "timeout_s": 60.0,
    }
    values.update(overrides)
    return JobSpec(**values)


def unpack(outcome: Outcome, dest: Path) -> dict[str, bytes]:
    """The files of a Completed outcome's archive, by path; checks its hash and size."""
    assert isinstance(outcome, Completed), outcome
    assert outcome.result is not None
    archive = outcome.result
    content = archive.path.read_bytes()
    assert hashlib.sha256(content).hexdigest() == archive.sha256
    assert len(content) == archive.size
    with tarfile.open(archive.path, "r:gz") as tar:
        tar.extractall(dest, filter="data")
        names = [member.name for member in tar.getmembers() if member.isfile()]
    return {name: (dest / name).read_bytes() for name in names}


def wait_idle(runner: DockerRunner, timeout_s: float = 10.0) -> None:
    """Wait until the runner watches no job: what a job left is removed by then."""
    deadline = time.monotonic() + timeout_s
    while runner.running():
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs still watched after {timeout_s} s: {runner.running()}")
        time.sleep(0.05)


def failed(outcome: Outcome) -> Failed:
    assert isinstance(outcome, Failed), outcome
    return outcome


@dataclass
class Harness:
    """Makes runners over one state dir; each instance id's containers go at teardown."""

    tmp_path: Path
    platform: MemoryPlatform
    client: docker.DockerClient
    runners: list[DockerRunner] = field(default_factory=list)
    instance_ids: set[str] = field(default_factory=set)

    def settings(self, **containers: Any) -> AgentSettings:
        values = {"progress_interval_s": 0.5, **containers}
        return AgentSettings(
            state_dir=self.tmp_path / "state",
            images={"default_image": PYTHON_IMAGE, "allowed_images": [BUSYBOX_IMAGE]},
            containers=values,
        )

    def runner(
        self, instance_id: str | None = None, settings: AgentSettings | None = None
    ) -> DockerRunner:
        instance_id = instance_id or f"test-{uuid.uuid4().hex[:10]}"
        self.instance_ids.add(instance_id)
        runner = DockerRunner(settings or self.settings(), self.platform, "res_test", instance_id)
        self.runners.append(runner)
        return runner

    def containers(self, instance_id: str) -> list[Any]:
        return self.client.containers.list(
            all=True, filters={"label": f"{LABEL_INSTANCE_ID}={instance_id}"}
        )

    def close(self) -> None:
        for runner in self.runners:
            runner.detach()
        for instance_id in self.instance_ids:
            for container in self.containers(instance_id):
                container.remove(force=True)
        for runner in self.runners:
            runner.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    client = docker_client()
    require_images(client)
    platform = MemoryPlatform(tmp_path / "datasets")
    harness = Harness(tmp_path, platform, client)
    try:
        yield harness
    finally:
        harness.close()
        client.close()


@pytest.fixture
def client() -> Iterator[docker.DockerClient]:
    """The Docker SDK's client of the test engine, which has the busybox image."""
    client = docker_client()
    require_images(client, BUSYBOX_IMAGE)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def engine(client: docker.DockerClient) -> Iterator[Engine]:
    """The runner's connection to the test engine."""
    engine = Engine(None, max_pool_size=2)
    try:
        yield engine
    finally:
        engine.close()
