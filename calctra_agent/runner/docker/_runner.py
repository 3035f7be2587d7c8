"""The Docker runner: each job in a container of its own, confined to what it was granted.

The job machinery (supervisors, and the Docker SDK under them) loads at the first job or
container to take up: until then the runner asks the engine only through `Engine`'s light
calls, and an idle agent stays small.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from calctra_agent.config import AgentSettings
from calctra_agent.errors import RunnerError
from calctra_agent.runner._interface import JobEvents, JobPlatform, JobSpec, Recovery
from calctra_agent.runner.docker import _workdir as workdir
from calctra_agent.runner.docker._engine import Engine, NotOnEngine, engine_errors
from calctra_agent.runner.docker._images import (
    RECORD_NAME,
    ImageStore,
    PulledImages,
    resolve_image,
)
from calctra_agent.runner.docker._labels import LABEL_JOB_ID, Identity, instance_filter
from calctra_agent.wire import FailureReason

if TYPE_CHECKING:
    from calctra_agent.probe import GpuRuntime
    from calctra_agent.runner.docker._supervise import Context, Supervisor

logger = logging.getLogger(__name__)

_DETACH_WAIT_S = 5.0
_FINISHED_STATES = ("exited", "dead")
_RUNNING_STATES = ("running", "restarting", "paused")


class DockerRunner:
    """Runs jobs on the Docker engine, as docs/job-environment.md describes. Every container
    it makes carries this agent's `instance_id`, and it touches no other container: an engine
    may be shared. Raises RunnerError when the engine does not answer."""

    def __init__(
        self,
        settings: AgentSettings,
        platform: JobPlatform,
        resource_id: str,
        instance_id: str,
    ) -> None:
        self.settings = settings
        self.instance_id = instance_id
        self.platform = platform
        self.identity = Identity(resource_id, instance_id)
        # Connections for the supervisors' requests; log streams have their own.
        self.engine = Engine(
            settings.containers.docker_host, max_pool_size=settings.max_concurrent_jobs + 8
        )
        try:
            self._gpu: GpuRuntime = self.engine.gpu_runtime()
        except RunnerError:
            self.engine.close()
            raise
        self.gpu_runtime = self._gpu.usable
        self.images = ImageStore(
            self.engine,
            PulledImages(settings.state_dir / RECORD_NAME),
            settings.images.min_free_gb,
        )
        self._context: Context | None = None
        self._jobs: dict[str, Supervisor] = {}
        self._lock = threading.Lock()
        logger.info(
            "docker runner ready instance_id=%s gpu_runtime=%s", instance_id, self.gpu_runtime
        )

    def start(self, spec: JobSpec, events: JobEvents) -> None:
        """Check the job and start it in the background: image, datasets, container. Raises
        RunnerError for a job that cannot run here, or that has a container already."""
        image = resolve_image(spec, self.settings.images)
        supervisor = self._supervisor(spec, image, events)
        supervisor.check()
        with self._lock:
            if spec.job_id in self._jobs:
                raise RunnerError(f"cannot start job {spec.job_id}: it is running here already")
            if self._containers(spec.job_id):
                raise RunnerError(
                    f"cannot start job {spec.job_id}: it has a container on this engine already, "
                    "from an earlier start"
                )
            self._jobs[spec.job_id] = supervisor
        logger.info("job starting job_id=%s image=%s", spec.job_id, supervisor.image)
        supervisor.launch()

    def cancel(self, job_id: str) -> None:
        """Kill the job's container; its supervisor reports CANCELLED_BY_AGENT. Never raises:
        a container that cannot be killed now is logged."""
        with self._lock:
            supervisor = self._jobs.get(job_id)
        if supervisor is not None:
            supervisor.cancel()
            return
        # Nobody watches it (the runner detached): the next recovery reports it cancelled.
        try:
            for container in self._containers(job_id):
                directory = workdir.job_dir(self.settings.work_dir, job_id)
                workdir.write_verdict(directory, FailureReason.CANCELLED_BY_AGENT)
                if container.get("State") in _RUNNING_STATES:
                    with engine_errors(f"kill the container of job {job_id}"):
                        self.engine.sdk.api.kill(container["Id"])
        except NotOnEngine:
            pass  # it went meanwhile
        except RunnerError as exc:
            logger.warning("job not cancelled job_id=%s error=%s", job_id, exc)

    def recover(self, specs: list[JobSpec], events: JobEvents) -> Recovery:
        """Take up this instance's containers again: reattach to the running jobs of `specs`,
        report those that ended meanwhile, and remove the containers of any other job."""
        by_job = self._containers_by_job()
        wanted = {spec.job_id for spec in specs}
        orphans = [job_id for job_id in by_job if job_id not in wanted]
        for job_id in orphans:
            self._remove_orphan(job_id, by_job.pop(job_id))
        recovery = Recovery()
        concluded = 0
        for spec in specs:
            container = by_job.get(spec.job_id)
            if container is None:
                recovery.lost.append(spec.job_id)
                self._remove_job_dir(spec.job_id)
            elif self._take_up(spec, events, container):
                recovery.running.append(spec.job_id)
            else:
                concluded += 1
        logger.info(
            "containers recovered running=%d ended=%d lost=%d orphans=%d",
            len(recovery.running), concluded, len(recovery.lost), len(orphans),
        )  # fmt: skip
        return recovery

    def running(self) -> list[str]:
        with self._lock:
            return [job_id for job_id, supervisor in self._jobs.items() if supervisor.alive()]

    def detach(self) -> None:
        """Stop watching: the containers go on, and the next `recover` finds them."""
        with self._lock:
            supervisors = list(self._jobs.values())
        for supervisor in supervisors:
            supervisor.detach()
        for supervisor in supervisors:
            supervisor.join(_DETACH_WAIT_S)
        logger.info("docker runner detached jobs=%d", len(supervisors))

    def close(self) -> None:
        """Close the connections to the engine; the runner is of no further use."""
        self.engine.close()

    def _supervisor(self, spec: JobSpec, image: str, events: JobEvents) -> Supervisor:
        """A supervisor for `spec`; the first one loads the job machinery."""
        from calctra_agent.runner.docker._supervise import Context, Supervisor

        with self._lock:
            if self._context is None:
                self._context = Context(
                    engine=self.engine,
                    settings=self.settings,
                    platform=self.platform,
                    images=self.images,
                    identity=self.identity,
                    gpu=self._gpu,
                    active_images=self._active_images,
                )
        return Supervisor(spec, image, events, self._context, self._forget)

    def _take_up(self, spec: JobSpec, events: JobEvents, summary: dict[str, Any]) -> bool:
        """Reattach to a running container (True), or conclude an exited one (False)."""
        with engine_errors(f"read the container of job {spec.job_id}"):
            container = self.engine.sdk.containers.get(summary["Id"])
        # The image it was created from: the list of allowed images may have changed since.
        image = str(container.attrs["Config"]["Image"])
        supervisor = self._supervisor(spec, image, events)
        with self._lock:
            self._jobs[spec.job_id] = supervisor
        if container.status in _FINISHED_STATES:
            supervisor.conclude_now(container)
            return False
        supervisor.reattach(container)
        return True

    def _remove_orphan(self, job_id: str, container: dict[str, Any]) -> None:
        try:
            with engine_errors(f"remove the container of job {job_id}, no longer assigned"):
                self.engine.sdk.api.remove_container(container["Id"], force=True)
        except NotOnEngine:
            pass  # it went meanwhile
        except RunnerError as exc:
            logger.warning("orphan container not removed job_id=%s error=%s", job_id, exc)
            return
        name = (container.get("Names") or ["?"])[0].lstrip("/")
        logger.info("orphan container removed job_id=%s container=%s", job_id, name)
        self._remove_job_dir(job_id)

    def _containers(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """The engine's summaries of this instance's containers (of one job)."""
        return self.engine.containers(instance_filter(self.instance_id, job_id))

    def _containers_by_job(self) -> dict[str, dict[str, Any]]:
        # A job has one container at most: its name, from the job and instance ids, is unique.
        return {
            (container.get("Labels") or {}).get(LABEL_JOB_ID, ""): container
            for container in self._containers()
        }

    def _remove_job_dir(self, job_id: str) -> None:
        try:
            workdir.remove(workdir.job_dir(self.settings.work_dir, job_id))
        except RunnerError:
            pass  # not a valid id, so never a directory of ours

    def _active_images(self) -> set[str]:
        with self._lock:
            return {supervisor.image for supervisor in self._jobs.values()}

    def _forget(self, supervisor: Supervisor) -> None:
        with self._lock:
            if self._jobs.get(supervisor.job_id) is supervisor:
                del self._jobs[supervisor.job_id]
