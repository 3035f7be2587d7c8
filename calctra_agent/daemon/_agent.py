"""The daemon: keeps the resource fresh, takes offers, runs jobs, reports and claims."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from calctra_agent import __version__
from calctra_agent.daemon._decide import Accept, Decision, Terms, decide
from calctra_agent.daemon._messages import TOKEN_REFUSED
from calctra_agent.daemon._notify import notify
from calctra_agent.daemon._reports import ReportSender
from calctra_agent.daemon._state import OPEN_STATUSES, State
from calctra_agent.errors import (
    ApiError,
    ApiUnavailable,
    AuthenticationRequired,
    CalctraError,
    Conflict,
    RunnerError,
)
from calctra_agent.probe import Capacity
from calctra_agent.runner import Completed, Failed, Grant, JobSpec, Outcome, Runner
from calctra_agent.wire import (
    AcceptedJob,
    DeclineReason,
    Failure,
    FailureReason,
    HeartbeatRequest,
    JobStatus,
    Offer,
    OfferBatch,
    ReportableStatus,
    StatusReport,
    Utilization,
)

logger = logging.getLogger(__name__)

_OFFER_ERROR_PAUSE_S = 2.0
_CANCEL_PENDING_PAUSE_S = 1.0
"""The long poll answers at once while a cancellation is unacknowledged, which lasts as long
as the job takes to stop: between such answers the agent waits this long."""
_MIN_HEARTBEAT_S = 1.0


@dataclass(frozen=True)
class AgentConfig:
    """What the daemon needs of the settings, in its own terms."""

    capacity: Capacity
    terms: Terms
    heartbeat_interval_s: float
    offer_wait_s: float
    outbox_interval_s: float
    job_timeout_factor: float
    drain_on_stop: bool
    default_image: str | None = None


class Agent:
    """One run of the daemon: `run()` blocks until `stop()` (or a second `stop()`, which
    aborts a drain)."""

    def __init__(
        self,
        config: AgentConfig,
        state: State,
        client: Any,
        runner: Runner,
        sign_claim: Any,
        sample_utilization: Any,
        stop_requests: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.client = client
        self.runner = runner
        self.sample_utilization = sample_utilization
        self.reports = ReportSender(
            state,
            client,
            sign_claim,
            on_cancelled=self._cancel_local,
            on_failed=lambda job_id, message: self.finished(
                job_id, Failed(FailureReason.ERROR, message)
            ),
        )
        self._stopping = threading.Event()
        self._offers_closed = threading.Event()
        self._aborting = threading.Event()
        self._grants: dict[str, Grant] = {}
        self._grants_lock = threading.Lock()
        self._active: bool | None = None
        self._offers_error: str | None = None
        # Set once the agent leaves: the client's retries end then, not after their backoff.
        self._stop_requests = stop_requests or threading.Event()
        # Held while changing the scheduler's jobs; see _schedule.
        self._scheduling = threading.Lock()
        self._scheduler_closing = False
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )

    # lifecycle

    def run(self) -> None:
        """Run the daemon until `stop()`, taking offers in a thread of their own."""
        self.startup()
        offers = threading.Thread(target=self.take_offers, name="offers", daemon=True)
        try:
            offers.start()
            self.wait_stopped()
        finally:
            self.shutdown()

    def startup(self) -> None:
        logger.info("agent starting version=%s", __version__)
        self._recover_jobs()
        self.heartbeat()
        self._scheduler.add_job(
            self._heartbeat_job,
            "interval",
            seconds=self.config.heartbeat_interval_s,
            id="heartbeat",
        )
        self._scheduler.add_job(
            self.reports.flush, "interval", seconds=self.config.outbox_interval_s, id="outbox"
        )
        self._scheduler.start()
        notify("READY=1")
        logger.info("agent ready jobs=%d", len(self._grants))

    def wait_stopped(self) -> None:
        """Block until `stop()`. A signal interrupts the wait to run its handler, which may
        call `stop()`: an idle agent need not wake up to look."""
        self._stopping.wait()

    def stop(self) -> None:
        """First call: stop taking offers (those that come while jobs drain are declined).
        Second call: stop waiting for running jobs."""
        if self._stopping.is_set():
            logger.warning("second stop signal: aborting")
            self._aborting.set()
        self._stopping.set()

    def shutdown(self) -> None:
        notify("STOPPING=1")
        if self.config.drain_on_stop:
            self._drain()
        else:
            self.runner.detach()
            logger.info("leaving jobs running for the next start jobs=%d", len(self._grants))
        self._offers_closed.set()
        self._stop_requests.set()
        with self._scheduling:
            self._scheduler_closing = True
        if self._scheduler.running:  # not when the start failed
            self._scheduler.shutdown(wait=not self._aborting.is_set())
        try:
            self.reports.flush()
        except CalctraError as exc:
            logger.warning("final report flush failed error=%s", exc)
        logger.info("agent stopped pending_reports=%d", self.state.pending_count())

    def _drain(self) -> None:
        logger.info("draining jobs=%d", len(self._grants))
        while self._grants and not self._aborting.is_set():
            time.sleep(0.2)
        if self._grants:
            self.runner.detach()
        logger.info("drain complete jobs_left=%d", len(self._grants))

    # offers

    def take_offers(self) -> None:
        """Poll for offers until the agent leaves: while it drains after `stop()`, offers are
        declined, so that the platform matches them elsewhere."""
        while not self._offers_closed.is_set():
            batch = self._poll_offers()
            if batch is None:
                self._offers_closed.wait(_OFFER_ERROR_PAUSE_S)
                continue
            for job_id in batch.cancelled_jobs:
                self._cancel_local(job_id)
            for offer in batch.offers:
                self.consider(offer)
            if batch.cancelled_jobs and not batch.offers:
                self._offers_closed.wait(_CANCEL_PENDING_PAUSE_S)

    def _poll_offers(self) -> OfferBatch | None:
        """The next batch of offers; None when the poll failed, logged once until it works
        again or fails otherwise."""
        try:
            batch: OfferBatch = self.client.wait_for_offers(self.config.offer_wait_s)
        except (ApiUnavailable, ApiError) as exc:
            # Once the agent leaves, requests give up on purpose: nothing to warn about.
            if str(exc) != self._offers_error and not self._stop_requests.is_set():
                logger.warning("waiting for offers failed error=%s", exc)
            self._offers_error = str(exc)
            return None
        if self._offers_error is not None:
            logger.info("waiting for offers works again")
            self._offers_error = None
        return batch

    def consider(self, offer: Offer) -> None:
        """Accept the offer and start it, or decline it with the reason."""
        if self._stopping.is_set():
            self._decline(offer, DeclineReason.SHUTTING_DOWN, "the agent is shutting down")
            return
        decision = self._reserve(offer, self._terms(), datetime.now(UTC))
        if not isinstance(decision, Accept):
            self._decline(offer, decision.reason, decision.message)
            return
        self._accept(offer, decision.grant)

    def _reserve(self, offer: Offer, terms: Terms, now: datetime) -> Decision:
        """Decide on the offer; an accepted one holds its grant from then on."""
        with self._grants_lock:
            decision = decide(offer, self.config.capacity, list(self._grants.values()), terms, now)
            if isinstance(decision, Accept):
                self._grants[offer.job_id] = decision.grant
        return decision

    def _terms(self) -> Terms:
        """The configured terms, at the price that `pricing set` gave since the start."""
        price = self.state.price_override()
        if price is None or price == self.config.terms.price_per_hour:
            return self.config.terms
        return dataclasses.replace(self.config.terms, price_per_hour=price)

    def _decline(self, offer: Offer, reason: DeclineReason, message: str) -> None:
        logger.info(
            "offer declined job_id=%s reason=%s detail=%s", offer.job_id, reason.value, message
        )
        try:
            self.client.decline_offer(offer.job_id, reason, message)
        except (ApiUnavailable, ApiError) as exc:
            logger.warning("decline failed job_id=%s error=%s", offer.job_id, exc)

    def _accept(self, offer: Offer, grant: Grant) -> None:
        try:
            job = self.client.accept_offer(offer.job_id)
        except Conflict:
            logger.info("offer taken by another provider job_id=%s", offer.job_id)
            self._release(offer.job_id)
            return
        except (ApiUnavailable, ApiError) as exc:
            logger.warning("accept failed job_id=%s error=%s", offer.job_id, exc)
            self._release(offer.job_id)
            return
        spec = self._job_spec(job, grant)
        self.state.add_job(job.job_id, _spec_to_dict(spec))
        logger.info(
            "job accepted job_id=%s cores=%d memory_gb=%g gpus=%d",
            job.job_id,
            grant.cpu_cores,
            grant.memory_gb,
            len(grant.gpu_uuids),
        )
        self._start(spec)

    def _job_spec(self, job: AcceptedJob, grant: Grant) -> JobSpec:
        hours = job.requirements.estimated_duration_hours
        timeout_s = hours * 3600 * self.config.job_timeout_factor
        if job.deadline is not None:
            timeout_s = min(timeout_s, (job.deadline - datetime.now(UTC)).total_seconds())
        return JobSpec(
            job_id=job.job_id,
            code=job.code,
            grant=grant,
            timeout_s=max(timeout_s, 1.0),
            datasets=tuple(job.datasets),
            image=job.image or self.config.default_image,
        )

    def _start(self, spec: JobSpec) -> None:
        try:
            self.runner.start(spec, self)
        except RunnerError as exc:
            logger.error("job could not start job_id=%s error=%s", spec.job_id, exc)
            self.finished(spec.job_id, Failed(FailureReason.ERROR, str(exc)))

    def _release(self, job_id: str) -> None:
        with self._grants_lock:
            self._grants.pop(job_id, None)

    def _cancel_local(self, job_id: str) -> None:
        local = self.state.job(job_id)
        if local is not None and local.status == "CANCELLING":
            return
        if local is None or local.status not in OPEN_STATUSES:
            self._ack_cancel(job_id)
            return
        logger.info("stopping cancelled job job_id=%s", job_id)
        self.state.update_job(job_id, status="CANCELLING")
        self.runner.cancel(job_id)

    def _ack_cancel(self, job_id: str) -> None:
        report = StatusReport(status=ReportableStatus.CANCELLED, message="stopped by the agent")
        self.state.enqueue(job_id, "status", _dump(report))
        self._kick_outbox()

    # runner events (called from the runner's threads)

    def started(self, job_id: str) -> None:
        report = StatusReport(status=ReportableStatus.RUNNING, progress=0, message="started")
        self.state.enqueue(job_id, "status", _dump(report), status="RUNNING")
        self._kick_outbox()

    def progress(self, job_id: str, percent: int, message: str) -> None:
        report = StatusReport(
            status=ReportableStatus.RUNNING, progress=percent, message=message[:4000]
        )
        self.state.enqueue(
            job_id, "progress", _dump(report), progress=percent, message=message[:4000]
        )
        self._kick_outbox()

    def finished(self, job_id: str, outcome: Outcome) -> None:
        local = self.state.job(job_id)
        now = time.time()
        if local is not None and local.status == "CANCELLING":
            self.state.update_job(job_id, status="CANCELLED", finished_at=now)
            self._ack_cancel(job_id)
        elif isinstance(outcome, Completed):
            if outcome.result is not None:
                # Uploaded before COMPLETED is reported: the owner never sees a completed job
                # without its results.
                result = outcome.result
                payload = {"path": str(result.path), "sha256": result.sha256, "size": result.size}
                self.state.enqueue(job_id, "results", payload)
            report = StatusReport(
                status=ReportableStatus.COMPLETED, progress=100, message=outcome.message[-4000:]
            )
            self.state.enqueue(
                job_id, "status", _dump(report), status="COMPLETED", progress=100, finished_at=now
            )
            self.state.enqueue(job_id, "claim", {})
            logger.info("job completed job_id=%s", job_id)
        else:
            failure = Failure(reason=outcome.reason, exit_code=outcome.exit_code)
            report = StatusReport(
                status=ReportableStatus.FAILED, message=outcome.message[-4000:], failure=failure
            )
            self.state.enqueue(
                job_id,
                "status",
                _dump(report),
                status="FAILED",
                finished_at=now,
                failure=_dump(failure),
            )
            logger.info("job failed job_id=%s reason=%s", job_id, outcome.reason.value)
        self._release(job_id)
        self._kick_outbox()

    def _kick_outbox(self) -> None:
        self._schedule(
            lambda: self._scheduler.modify_job("outbox", next_run_time=datetime.now(UTC))
        )

    def _schedule(self, change: Callable[[], object]) -> None:
        """Change the scheduler's jobs, unless it is shutting down: its shutdown waits for the
        running jobs while holding the lock that a change takes, so a job (a heartbeat that
        reschedules itself) making one then would never end."""
        with self._scheduling:
            if self._scheduler.running and not self._scheduler_closing:
                change()

    # heartbeat

    def _heartbeat_job(self) -> None:
        interval = self.heartbeat()
        self._schedule(
            lambda: self._scheduler.reschedule_job(
                "heartbeat", trigger="interval", seconds=interval
            )
        )

    def heartbeat(self) -> float:
        """Send one heartbeat; returns the seconds until the next one."""
        request = HeartbeatRequest(
            agent_version=__version__,
            utilization=self._utilization(),
            running_jobs=sorted(self._grants),
        )
        interval = self.config.heartbeat_interval_s
        try:
            answer = self.client.heartbeat(request)
        except (ApiUnavailable, ApiError) as exc:
            if self._active is not False and not self._stop_requests.is_set():
                if isinstance(exc, AuthenticationRequired):
                    logger.error("heartbeat refused: %s error=%s", TOKEN_REFUSED, exc)
                else:
                    logger.warning("heartbeat failed error=%s", exc)
            if isinstance(exc, AuthenticationRequired):
                self._take_new_token()
            self._active = False
        else:
            if answer.active != self._active:
                logger.info("heartbeat ok active=%s", answer.active)
            self._active = answer.active
            # The platform proposes; the configured interval is the longest the agent waits.
            interval = min(max(answer.next_heartbeat_in_s, _MIN_HEARTBEAT_S), interval)
            for job_id in answer.cancelled_jobs:
                self._cancel_local(job_id)
        notify("WATCHDOG=1")
        return interval

    def _take_new_token(self) -> None:
        """A `calctra-agent login` while the agent runs leaves a new token in the state: the
        agent goes on with it, rather than waiting for a restart."""
        credentials = self.state.credentials()
        if credentials is None or credentials.agent_token == self.client.token:
            return
        self.client.token = credentials.agent_token
        logger.info("agent token renewed by a login token_id=%s", credentials.token_id)

    def _utilization(self) -> Utilization:
        try:
            return self.sample_utilization()
        except CalctraError as exc:
            logger.warning("utilization sample failed error=%s", exc)
            return Utilization(cpu_percent=0, memory_used_gb=0)

    # restart

    def _recover_jobs(self) -> None:
        """Pick up where the last run left off. The platform's list of the jobs it assigns
        this resource settles what the local records cannot: jobs it took back while the agent
        was down are dropped, and jobs it assigns that the agent has no record of (accepted
        just before a crash) are started now, or failed if they had started. When the platform
        cannot be reached, the local records are trusted as they are."""
        assigned = self._assigned_jobs()
        held = self.state.jobs(OPEN_STATUSES + ("CANCELLING",))
        if assigned is not None:
            held = [job for job in held if self._still_assigned(job.job_id, assigned)]
        specs = [_spec_from_dict(job.job_id, job.spec) for job in held]
        for spec in specs:
            self._grants[spec.job_id] = spec.grant
        recovery = self.runner.recover(specs, self)
        for job_id in recovery.lost:
            logger.warning("job lost while the agent was down job_id=%s", job_id)
            self.finished(
                job_id, Failed(FailureReason.ERROR, "the job was lost while the agent was down")
            )
        logger.info("jobs recovered running=%d lost=%d", len(recovery.running), len(recovery.lost))
        if assigned is not None:
            for job in assigned.values():
                if self.state.job(job.job_id) is None:
                    self._adopt(job)

    def _assigned_jobs(self) -> dict[str, AcceptedJob] | None:
        """The open jobs the platform assigns this resource; None when it cannot say."""
        jobs: dict[str, AcceptedJob] = {}
        try:
            for status in (JobStatus.ACCEPTED, JobStatus.RUNNING):
                page = 1
                while True:
                    batch = self.client.list_assigned_jobs(status=status, page=page)
                    jobs.update((job.job_id, job) for job in batch.jobs)
                    if page * batch.limit >= batch.total or not batch.jobs:
                        break
                    page += 1
        except (ApiUnavailable, ApiError) as exc:
            logger.warning("cannot list the jobs the platform assigns error=%s", exc)
            return None
        return jobs

    def _still_assigned(self, job_id: str, assigned: dict[str, AcceptedJob]) -> bool:
        if job_id in assigned:
            return True
        logger.info("job no longer assigned to this machine, dropping it job_id=%s", job_id)
        self.state.update_job(job_id, status="CANCELLED", finished_at=time.time())
        self.state.drop_job_reports(job_id)
        return False

    def _adopt(self, job: AcceptedJob) -> None:
        """A job the platform assigns but the agent never recorded: it was accepted, and the
        agent stopped before it wrote the job down. Started now if it had not started; its
        availability window was open when it was accepted."""
        if job.status != JobStatus.ACCEPTED:
            logger.warning("job started by an earlier run has no record job_id=%s", job.job_id)
            self._fail_unrecorded(job, "the agent lost its record of the job and its run")
            return
        offer = Offer.model_validate({**job.model_dump(), "created_at": job.accepted_at})
        terms = dataclasses.replace(self._terms(), availability=None)
        decision = self._reserve(offer, terms, job.accepted_at)
        if not isinstance(decision, Accept):
            self._fail_unrecorded(job, decision.message)
            return
        spec = self._job_spec(job, decision.grant)
        self.state.add_job(job.job_id, _spec_to_dict(spec))
        logger.info("job accepted before a restart, starting it job_id=%s", job.job_id)
        self._start(spec)

    def _fail_unrecorded(self, job: AcceptedJob, message: str) -> None:
        self.state.add_job(job.job_id, _spec_to_dict(self._job_spec(job, Grant(0, 0.0, 0.0))))
        self.finished(job.job_id, Failed(FailureReason.ERROR, message))


def _dump(model: Any) -> dict[str, Any]:
    return dict(model.model_dump(by_alias=True, exclude_none=True, mode="json"))


def _spec_to_dict(spec: JobSpec) -> dict[str, Any]:
    grant = spec.grant
    return {
        "code": spec.code,
        "timeoutS": spec.timeout_s,
        "datasets": list(spec.datasets),
        "image": spec.image,
        "grant": {
            "cpuCores": grant.cpu_cores,
            "memoryGb": grant.memory_gb,
            "storageGb": grant.storage_gb,
            "gpuUuids": list(grant.gpu_uuids),
        },
    }


def _spec_from_dict(job_id: str, data: dict[str, Any]) -> JobSpec:
    grant = data["grant"]
    return JobSpec(
        job_id=job_id,
        code=data["code"],
        timeout_s=data["timeoutS"],
        datasets=tuple(data["datasets"]),
        image=data.get("image"),
        grant=Grant(
            grant["cpuCores"], grant["memoryGb"], grant["storageGb"], tuple(grant["gpuUuids"])
        ),
    )
