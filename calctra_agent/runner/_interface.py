"""What the daemon asks of a runner, and what a runner tells the daemon."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from calctra_agent.wire import FailureReason, JobLogAppend


@dataclass(frozen=True)
class Grant:
    """The share of the machine a job was given: the runner holds the job to it."""

    cpu_cores: int
    memory_gb: float
    storage_gb: float
    gpu_uuids: tuple[str, ...] = ()


@dataclass(frozen=True)
class JobSpec:
    """Everything a runner needs to run one accepted job."""

    job_id: str
    code: str
    grant: Grant
    timeout_s: float
    datasets: tuple[str, ...] = ()
    image: str | None = None


@dataclass(frozen=True)
class ResultArchive:
    """A finished job's output, packed as tar.gz: the daemon uploads it, then deletes it."""

    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class Completed:
    message: str = ""
    result: ResultArchive | None = None


@dataclass(frozen=True)
class Failed:
    reason: FailureReason
    message: str = ""
    exit_code: int | None = None


Outcome = Completed | Failed


class JobEvents(Protocol):
    """Callbacks a runner makes, from any thread, as a job moves along."""

    def started(self, job_id: str) -> None: ...

    def progress(self, job_id: str, percent: int, message: str) -> None: ...

    def finished(self, job_id: str, outcome: Outcome) -> None: ...


@dataclass
class Recovery:
    """What a runner found of the jobs the daemon held before it restarted."""

    running: list[str] = field(default_factory=list)
    """Still running: the runner reattached and will report on them."""
    lost: list[str] = field(default_factory=list)
    """Nowhere to be found: the daemon reports them FAILED."""


class JobPlatform(Protocol):
    """What a runner fetches from, and sends to, the platform while it runs a job. The API
    client, authenticated with the agent token, provides it."""

    def download_dataset(self, dataset_id: str, dest: Path) -> str:
        """Stream the dataset's content into `dest`; returns its sha256, already checked
        against the platform's. Raises CalctraError; `dest` is absent then."""
        ...

    def append_job_logs(self, job_id: str, offset: int, data: bytes) -> JobLogAppend:
        """Store `data` as the job's log from byte `offset` on. Sending bytes again is a
        no-op; the answer says how much the platform holds and whether its cap was hit."""
        ...


class Runner(Protocol):
    """Runs jobs in the background and reports through `JobEvents`."""

    gpu_runtime: bool
    """Whether GPU jobs can run: the daemon declines them otherwise."""

    def start(self, spec: JobSpec, events: JobEvents) -> None:
        """Start the job and return at once; raises RunnerError when it cannot start."""
        ...

    def cancel(self, job_id: str) -> None:
        """Stop the job; it finishes with Failed(CANCELLED_BY_AGENT) or not at all."""
        ...

    def recover(self, specs: list[JobSpec], events: JobEvents) -> Recovery:
        """Find the jobs of an earlier run of the daemon. Jobs that ended meanwhile are
        reported through `events.finished` as part of the recovery."""
        ...

    def running(self) -> list[str]: ...

    def detach(self) -> None:
        """Stop watching jobs without stopping them: they go on, and `recover` finds them."""
        ...
