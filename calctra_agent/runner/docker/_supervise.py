"""One job's supervisor: prepares the job, runs its container, watches it, reports its outcome
and removes what it left. A thread of its own per job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calctra_agent.config import AgentSettings
from calctra_agent.errors import CalctraError, RunnerError
from calctra_agent.probe import GpuRuntime
from calctra_agent.runner._interface import (
    Completed,
    Failed,
    JobEvents,
    JobPlatform,
    JobSpec,
    Outcome,
)
from calctra_agent.runner.docker import _logstream as logstream
from calctra_agent.runner.docker import _workdir as workdir
from calctra_agent.runner.docker._container import (
    create_kwargs,
    device_requests,
    job_user,
    resource_limits,
)
from calctra_agent.runner.docker._engine import Engine, NotOnEngine, engine_errors
from calctra_agent.runner.docker._images import ImageStore
from calctra_agent.runner.docker._labels import LABEL_DEADLINE, Identity, labels
from calctra_agent.runner.docker._logs import LogFollower, LogStream
from calctra_agent.runner.docker._output import MIB, output_size, pack
from calctra_agent.wire import FailureReason

if TYPE_CHECKING:
    from docker.models.containers import Container

logger = logging.getLogger(__name__)

_POLL_S = 0.2
_STATE_CHECK_S = 2.0
"""How often the container's state is asked for, besides the end of its log stream."""
_OUTPUT_CHECK_S = 1.0
_ENGINE_GRACE_S = 60.0
"""How long the engine may fail to answer before the job is given up."""
_EXIT_WAIT_S = 30.0
_LOG_DRAIN_S = 30.0
"""How long the last of the log may take to reach the platform once the job ended."""
_RUNNING_STATES = ("running", "restarting", "paused")


@dataclass(frozen=True)
class Context:
    """What every job's supervisor shares with the runner."""

    engine: Engine
    settings: AgentSettings
    platform: JobPlatform
    images: ImageStore
    identity: Identity
    gpu: GpuRuntime
    active_images: Callable[[], set[str]]

    @property
    def results_dir(self) -> Path:
        return self.settings.state_dir / "results"


class _Stopped(Exception):
    """The job was cancelled, or the runner detached, before its container ran."""


class Supervisor:
    """Looks after one job, from its start (or the agent's restart) to its removal."""

    def __init__(
        self,
        spec: JobSpec,
        image: str,
        events: JobEvents,
        context: Context,
        on_exit: Callable[[Supervisor], None],
    ) -> None:
        self.spec = spec
        self.image = image
        self.events = events
        self.context = context
        self.directory = workdir.job_dir(context.settings.work_dir, spec.job_id)
        self._on_exit = on_exit
        self._deadline = time.time() + spec.timeout_s
        self._wake = threading.Event()
        self._cancelled = threading.Event()
        self._detached = threading.Event()
        self._verdict: FailureReason | None = None
        self._killed = False
        self._container: Container | None = None
        self._follower: LogFollower | None = None
        self._reported = False
        self._thread: threading.Thread | None = None

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    # what the runner calls

    def check(self) -> None:
        """Raises RunnerError when the job cannot run on this machine: limits the engine
        would refuse, or GPUs it cannot give."""
        resource_limits(self.spec)
        device_requests(self.spec, self.context.gpu)

    def launch(self) -> None:
        """Prepare and run the job in the background."""
        self._spawn(self._run_new)

    def reattach(self, container: Container) -> None:
        """Watch the container of an earlier run of the agent in the background."""
        self._spawn(lambda: self._run_attached(container))

    def conclude_now(self, container: Container) -> None:
        """Report on a container that exited while the agent was away, and remove it."""
        self._guarded(lambda: self._conclude_exited(container))

    def cancel(self) -> None:
        self._cancelled.set()
        self._wake.set()
        container = self._container
        if container is not None:
            self._stop_container(container, FailureReason.CANCELLED_BY_AGENT)

    def detach(self) -> None:
        self._detached.set()
        self._wake.set()
        if self._follower is not None:
            self._follower.stop()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # the job's life

    def _spawn(self, body: Callable[[], None]) -> None:
        self._thread = threading.Thread(
            target=self._guarded, args=(body,), name=f"job-{self.job_id}", daemon=True
        )
        self._thread.start()

    def _guarded(self, body: Callable[[], None]) -> None:
        try:
            body()
        except Exception as exc:
            # An engine failure that outlasted its grace, or a bug: the job must still end.
            logger.exception("job supervision failed job_id=%s", self.job_id)
            self._abandon(exc)
        finally:
            self._on_exit(self)

    def _run_new(self) -> None:
        try:
            container = self._prepare()
        except _Stopped:
            self._stopped_before_start()
            return
        except RunnerError as exc:
            logger.error("job could not start job_id=%s error=%s", self.job_id, exc)
            self._report(Failed(FailureReason.ERROR, str(exc)))
            self._clean()
            return
        logger.info("job container started job_id=%s container=%s", self.job_id, container.name)
        self.events.started(self.job_id)
        self._supervise(container)

    def _run_attached(self, container: Container) -> None:
        self._container = container
        self._deadline = _deadline_of(container, self._deadline)
        if container.status == "created":  # the agent stopped between create and start
            with engine_errors(f"start the container of job {self.job_id}"):
                container.start()
            self.events.started(self.job_id)
        logger.info("job reattached job_id=%s container=%s", self.job_id, container.name)
        self._supervise(container)

    def _conclude_exited(self, container: Container) -> None:
        self._container = container
        self._deadline = _deadline_of(container, self._deadline)
        follower = self._follow(container)
        self._conclude(container, follower)

    # preparing

    def _prepare(self) -> Container:
        """Image, directory, datasets, container: started, with its deadline from now."""
        self._checkpoint()
        self.context.images.ensure(self.image, keep=self.context.active_images())
        self._checkpoint()
        workdir.prepare(self.directory, self.spec.code, job_user(self.settings.containers.user))
        for dataset_id in self.spec.datasets:
            self._download(dataset_id)
            self._checkpoint()
        self._deadline = time.time() + self.spec.timeout_s
        kwargs = create_kwargs(
            self.spec,
            self.image,
            self.directory,
            self.settings.containers,
            labels(self.spec, self.context.identity, self._deadline),
            self.context.gpu,
        )
        with engine_errors(f"create the container of job {self.job_id}"):
            self._container = self.context.engine.sdk.containers.create(**kwargs)
        self._checkpoint()
        with engine_errors(f"start the container of job {self.job_id}"):
            self._container.start()
        return self._container

    @property
    def settings(self) -> AgentSettings:
        return self.context.settings

    def _checkpoint(self) -> None:
        if self._cancelled.is_set() or self._detached.is_set():
            raise _Stopped

    def _download(self, dataset_id: str) -> None:
        dest = self.directory.data / workdir.check_id("dataset", dataset_id)
        logger.info("dataset download starting job_id=%s dataset_id=%s", self.job_id, dataset_id)
        try:
            self.context.platform.download_dataset(dataset_id, dest)
            dest.chmod(0o644)
        except CalctraError as exc:
            raise RunnerError(
                f"cannot download dataset {dataset_id} for job {self.job_id}: {exc}"
            ) from exc
        except OSError as exc:
            raise RunnerError(f"cannot store dataset {dataset_id} at {dest}: {exc}") from exc
        logger.info("dataset download complete job_id=%s dataset_id=%s", self.job_id, dataset_id)

    def _stopped_before_start(self) -> None:
        if self._detached.is_set() and not self._cancelled.is_set():
            return  # the next run of the agent finds no container: the job is lost then
        self._report(Failed(FailureReason.CANCELLED_BY_AGENT, "cancelled before it started"))
        self._clean()

    # watching

    def _supervise(self, container: Container) -> None:
        follower = self._follow(container)
        if self._watch(container, follower):
            self._conclude(container, follower)
        else:
            follower.stop()

    def _follow(self, container: Container) -> LogFollower:
        follower = LogFollower(
            self.job_id,
            self.directory,
            self.context.platform,
            open_stream=lambda: self._log_stream(container),
            is_running=lambda: self._running(container),
            read_tail=lambda lines: self._log_tail(container, lines),
        )
        self._follower = follower
        follower.start()
        if self._detached.is_set():  # detach() came before the follower existed
            follower.stop()
        return follower

    def _log_stream(self, container: Container) -> LogStream:
        return logstream.EngineLogStream(self.context.engine.host, container.id)

    def _log_tail(self, container: Container, lines: int) -> bytes:
        with engine_errors(f"read the log of job {self.job_id}"):
            data: bytes = container.logs(stdout=True, stderr=True, tail=lines)
        return data

    def _running(self, container: Container) -> bool:
        try:
            with engine_errors(f"read the state of job {self.job_id}"):
                container.reload()
        except NotOnEngine:
            return False
        return container.status in _RUNNING_STATES

    def _watch(self, container: Container, follower: LogFollower) -> bool:
        """Watch the running job until its container exits (True) or the runner detaches
        (False): stopping it past its deadline or output cap, reporting its progress."""
        progress = _ProgressReporter(self, follower)
        output_check = state_check = time.monotonic()
        engine_failing_since: float | None = None
        while not follower.finished():
            self._wake.wait(_POLL_S)
            self._wake.clear()
            if self._detached.is_set():
                return False
            if self._cancelled.is_set():
                self._stop_container(container, FailureReason.CANCELLED_BY_AGENT)
            if time.time() >= self._deadline:
                self._stop_container(container, FailureReason.TIMEOUT)
            if time.monotonic() >= output_check:
                output_check = time.monotonic() + _OUTPUT_CHECK_S
                if self._output_too_large():
                    self._stop_container(container, FailureReason.OUTPUT_TOO_LARGE)
            progress.report()
            if time.monotonic() >= state_check:
                state_check = time.monotonic() + _STATE_CHECK_S
                try:
                    if not self._running(container):
                        break
                    engine_failing_since = None
                except RunnerError as exc:
                    engine_failing_since = engine_failing_since or time.monotonic()
                    logger.warning("job state unknown job_id=%s error=%s", self.job_id, exc)
                    if time.monotonic() - engine_failing_since > _ENGINE_GRACE_S:
                        raise
        return not self._detached.is_set()

    def _output_too_large(self) -> bool:
        cap = self.settings.containers.max_output_mb * MIB
        return output_size(self.directory.output, stop_above=cap) > cap

    def _stop_container(self, container: Container, reason: FailureReason) -> None:
        """Kill the job's container for `reason`, remembered first so that an agent that
        restarts meanwhile reports it too; the first reason stands. Called again until a kill
        took: a container created but not started yet cannot be killed."""
        if self._killed:
            return
        if self._verdict is None:
            self._verdict = reason
            logger.info("job stopping job_id=%s reason=%s", self.job_id, reason.value)
            try:
                workdir.write_verdict(self.directory, reason)
            except RunnerError as exc:
                logger.warning("verdict not saved job_id=%s error=%s", self.job_id, exc)
        try:
            with engine_errors(f"kill the container of job {self.job_id}"):
                container.kill()
            self._killed = True
        except NotOnEngine:
            self._killed = True
        except RunnerError as exc:
            # Not running (yet, or any more): its state says the rest.
            logger.debug("job container not killed job_id=%s detail=%s", self.job_id, exc)

    # concluding

    def _conclude(self, container: Container, follower: LogFollower) -> None:
        state = self._exit_state(container)
        follower.wait(_LOG_DRAIN_S)
        outcome = self._outcome(state, follower.tail())
        if self._detached.is_set():
            return  # the next run of the agent concludes it
        self._report(outcome)
        self._clean()

    def _exit_state(self, container: Container) -> dict[str, Any]:
        with engine_errors(f"read the exit state of job {self.job_id}"):
            container.wait(timeout=_EXIT_WAIT_S)
            container.reload()
        state: dict[str, Any] = container.attrs["State"]
        return state

    def _outcome(self, state: dict[str, Any], tail: str) -> Outcome:
        verdict = self._verdict or workdir.read_verdict(self.directory)
        exit_code = int(state.get("ExitCode", -1))
        if self._cancelled.is_set() or verdict is FailureReason.CANCELLED_BY_AGENT:
            return Failed(FailureReason.CANCELLED_BY_AGENT, "cancelled by the agent")
        if verdict is FailureReason.TIMEOUT or _finished_after(state, self._deadline):
            return Failed(
                FailureReason.TIMEOUT, f"stopped at its time limit of {self.spec.timeout_s:g} s"
            )
        if verdict is FailureReason.OUTPUT_TOO_LARGE:
            return self._too_large()
        if state.get("OOMKilled"):
            return Failed(
                FailureReason.OUT_OF_MEMORY,
                f"killed for using more than its {self.spec.grant.memory_gb:g} GB of memory: "
                f"{tail}",
                exit_code,
            )
        if exit_code != 0:
            return Failed(FailureReason.EXIT_CODE, f"exit code {exit_code}: {tail}", exit_code)
        return self._result(tail)

    def _too_large(self) -> Failed:
        cap = self.settings.containers.max_output_mb
        return Failed(FailureReason.OUTPUT_TOO_LARGE, f"its output grew past {cap} MB")

    def _result(self, tail: str) -> Outcome:
        if self._output_too_large():
            return self._too_large()
        dest = self.context.results_dir / f"{self.job_id}.tar.gz"
        try:
            archive = pack(self.directory.output, dest)
        except RunnerError as exc:
            return Failed(FailureReason.ERROR, str(exc))
        logger.info("job output packed job_id=%s bytes=%d", self.job_id, archive.size)
        return Completed(message=tail, result=archive)

    def _report(self, outcome: Outcome) -> None:
        self._reported = True
        self.events.finished(self.job_id, outcome)

    def _abandon(self, exc: Exception) -> None:
        if self._reported or self._detached.is_set():
            return
        container = self._container
        if container is not None:
            self._stop_container(container, FailureReason.ERROR)
        self._report(Failed(FailureReason.ERROR, f"the agent lost track of the job: {exc}"))
        self._clean()

    def _clean(self) -> None:
        """Remove the container and the job directory, once the outcome is reported."""
        container = self._container
        if container is not None:
            try:
                with engine_errors(f"remove the container of job {self.job_id}"):
                    container.remove(force=True)
            except RunnerError as exc:
                logger.warning("job container not removed job_id=%s error=%s", self.job_id, exc)
        workdir.remove(self.directory)
        try:
            self.context.images.record.touch(self.image)
            self.context.images.prune(keep=self.context.active_images())
        except RunnerError as exc:
            logger.warning("image pruning failed error=%s", exc)


class _ProgressReporter:
    """Sends the job's progress when it grew, at most every containers.progress_interval_s:
    the higher of its progress file and its last CALCTRA_PROGRESS line."""

    def __init__(self, supervisor: Supervisor, follower: LogFollower) -> None:
        self.supervisor = supervisor
        self.follower = follower
        self.interval_s = supervisor.settings.containers.progress_interval_s
        self.sent = -1
        self.sent_at = 0.0

    def report(self) -> None:
        if time.monotonic() - self.sent_at < self.interval_s:
            return
        values = [workdir.read_progress(self.supervisor.directory), self.follower.progress]
        percent = max((value for value in values if value is not None), default=None)
        if percent is None or percent <= self.sent:
            return
        self.sent, self.sent_at = percent, time.monotonic()
        self.supervisor.events.progress(self.supervisor.job_id, percent, f"{percent}%")


def _deadline_of(container: Container, default: float) -> float:
    try:
        return float(container.labels[LABEL_DEADLINE])
    except (KeyError, ValueError):
        return default


def _finished_after(state: dict[str, Any], deadline: float) -> bool:
    """Whether the container ended after the deadline: it did so while no agent watched."""
    finished_at = str(state.get("FinishedAt") or "")
    # The engine writes UTC with nanoseconds, which fromisoformat does not take.
    whole, _, fraction = finished_at.removesuffix("Z").partition(".")
    try:
        moment = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
        moment += float(f"0.{fraction or 0}")
    except ValueError:
        return False
    return moment > deadline
