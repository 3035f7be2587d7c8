"""The provider's side of a job: offers, status reports and claims.

The rules are those of docs/provider-protocol.md; each function runs inside the caller's
database transaction and raises ApiError for what the agent must hear about.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from solders.pubkey import Pubkey
from solders.signature import Signature
from sqlalchemy import String, cast, select, update
from sqlalchemy.orm import Session, defer

from calctra_agent.server_stub._agent_tokens import AgentPrincipal
from calctra_agent.server_stub._db import (
    Job,
    JobDecline,
    LedgerTransaction,
    Resource,
    User,
    from_micro,
)
from calctra_agent.server_stub._errors import ApiError, not_found, validation_error
from calctra_agent.server_stub._events import emit
from calctra_agent.server_stub._heartbeats import note_cancellation
from calctra_agent.server_stub._jobs import end_job, job_event_data, rematch
from calctra_agent.server_stub._ledger import (
    Related,
    escrow_account,
    move,
    refund_escrow,
    user_account,
)
from calctra_agent.wire import (
    ClaimRequest,
    DeclineRequest,
    ErrorCode,
    FailureReason,
    JobStatus,
    ReportableStatus,
    StatusReport,
    TransactionType,
    WebhookEvent,
    claim_message,
)

logger = logging.getLogger(__name__)

MAX_OFFERS = 50
"""The most offers one answer carries; the agent sees the rest once it acted on these."""


# Offers


def offers_for(session: Session, resource_id: str) -> list[Job]:
    """MATCHED jobs that name this resource among their matches, oldest first, without their
    code."""
    # The LIKE narrows the MATCHED jobs in the database; the list test confirms each one.
    pattern = f'%"{resource_id}"%'
    rows = session.scalars(
        select(Job)
        .options(defer(Job.code))
        .where(
            Job.status == JobStatus.MATCHED.value,
            cast(Job.matched_resources, String).like(pattern),
        )
        .order_by(Job.created_at, Job.id)
        .limit(MAX_OFFERS)
    ).all()
    return [job for job in rows if resource_id in job.matched_resources]


def _offered_job(session: Session, agent: AgentPrincipal, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found("job", "jobId", job_id)
    if agent.resource_id not in job.matched_resources and not _holds(agent, job):
        raise ApiError(
            ErrorCode.PERMISSION_DENIED,
            f"job {job_id} is not offered to resource {agent.resource_id}",
            jobId=job_id,
        )
    return job


def accept_offer(session: Session, agent: AgentPrincipal, job_id: str, at: datetime) -> Job:
    """Take a MATCHED job for the agent's resource, at the resource's current price. Only one
    resource ever succeeds; the holder asking again gets the job again."""
    job = _offered_job(session, agent, job_id)
    if job.status == JobStatus.ACCEPTED.value and _holds(agent, job):
        return job
    resource = session.get(Resource, agent.resource_id)
    if resource is None:
        raise not_found("resource", "resourceId", agent.resource_id)
    # One conditional UPDATE: of concurrent accepts, on one server process or several, the
    # database lets exactly one change the row.
    taken = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.MATCHED.value)
        .values(
            status=JobStatus.ACCEPTED.value,
            assigned_resource_id=agent.resource_id,
            accepted_at=at,
            price_per_hour=resource.price_per_hour,
        )
        .execution_options(synchronize_session=False)
    )
    session.refresh(job)
    if taken.rowcount != 1:  # type: ignore[attr-defined]
        raise _conflict(f"cannot accept job {job_id}", job)
    emit(session, job.owner_id, WebhookEvent.JOB_ACCEPTED, job_event_data(job))
    logger.info("job accepted job_id=%s resource_id=%s", job_id, agent.resource_id)
    return job


def decline_offer(
    session: Session,
    agent: AgentPrincipal,
    job_id: str,
    body: DeclineRequest,
    at: datetime,
    limit: int,
) -> Job:
    """Record the decline and match the job anew without this resource; a repeated decline
    changes nothing."""
    if session.get(JobDecline, (job_id, agent.resource_id)) is not None:
        return _existing_job(session, job_id)
    job = _offered_job(session, agent, job_id)
    if job.status != JobStatus.MATCHED.value:
        raise _conflict(f"cannot decline job {job_id}", job)
    session.add(
        JobDecline(
            job_id=job_id,
            resource_id=agent.resource_id,
            reason=body.reason.value,
            message=body.message,
            created_at=at,
        )
    )
    session.flush()
    rematch(session, job, at, limit)
    logger.info(
        "offer declined job_id=%s resource_id=%s reason=%s status=%s",
        job_id,
        agent.resource_id,
        body.reason.value,
        job.status,
    )
    return job


# Status reports


def held_job(
    session: Session, agent: AgentPrincipal, job_id: str, action: str = "report on it or claim it"
) -> Job:
    """The job, if the agent's resource holds it: 404 for an unknown job, 403 for another's;
    `action` says in the 403's message what only the holder may do."""
    job = _existing_job(session, job_id)
    if not _holds(agent, job):
        raise ApiError(
            ErrorCode.PERMISSION_DENIED,
            f"job {job_id} is not held by resource {agent.resource_id}; only the resource "
            f"that accepted a job may {action}",
            jobId=job_id,
        )
    return job


OPEN_STATUSES = frozenset({JobStatus.ACCEPTED.value, JobStatus.RUNNING.value})
"""The states in which the resource that holds a job works on it."""


def require_open(job: Job, attempt: str) -> None:
    """409 with the job's state unless it is ACCEPTED or RUNNING."""
    if job.status not in OPEN_STATUSES:
        raise _conflict(f"cannot {attempt} job {job.id}", job)


def apply_report(session: Session, job: Job, report: StatusReport, at: datetime) -> None:
    """Move the job as the report says, or raise 409 with the job's real state. Repeating the
    report that brought the job to its state changes nothing."""
    _REPORT_STEPS[report.status](session, job, report, at)


def _report_running(session: Session, job: Job, report: StatusReport, at: datetime) -> None:
    if job.status == JobStatus.ACCEPTED.value:
        job.status = JobStatus.RUNNING.value
        job.started_at = at
        _update_progress(job, report)
        emit(session, job.owner_id, WebhookEvent.JOB_STARTED, _report_data(job))
        logger.info("job started job_id=%s", job.id)
    elif job.status == JobStatus.RUNNING.value:
        _update_progress(job, report)
    else:
        raise _conflict(f"cannot report RUNNING for job {job.id}", job)


def _update_progress(job: Job, report: StatusReport) -> None:
    # Progress never goes backwards: a lower figure (a late retry) keeps the job's.
    if report.progress is not None and report.progress > job.progress:
        job.progress = report.progress
    if report.message:
        job.status_message = report.message


def _report_completed(session: Session, job: Job, report: StatusReport, at: datetime) -> None:
    if job.status == JobStatus.COMPLETED.value:
        return
    if job.status != JobStatus.RUNNING.value:
        raise _conflict(f"cannot report COMPLETED for job {job.id}", job)
    job.status = JobStatus.COMPLETED.value
    job.progress = 100
    job.completed_at = at
    if report.message:
        job.status_message = report.message
    emit(session, job.owner_id, WebhookEvent.JOB_COMPLETED, _report_data(job))
    logger.info("job completed job_id=%s", job.id)


def _report_failed(session: Session, job: Job, report: StatusReport, at: datetime) -> None:
    failure = report.failure
    if failure is None:
        raise validation_error("a FAILED report needs a failure", field="failure")
    if failure.reason == FailureReason.EXIT_CODE and failure.exit_code is None:
        raise validation_error("failure EXIT_CODE needs failure.exitCode", field="failure")
    if job.status == JobStatus.FAILED.value:
        return
    if job.status not in (JobStatus.ACCEPTED.value, JobStatus.RUNNING.value):
        raise _conflict(f"cannot report FAILED for job {job.id}", job)
    job.failure = failure.model_dump(by_alias=True, exclude_none=True)
    message = report.message or f"the job failed: {failure.reason.value}"
    end_job(session, job, JobStatus.FAILED, message, {"failure": job.failure})
    logger.info("job failed job_id=%s reason=%s", job.id, failure.reason.value)


def _report_cancelled(session: Session, job: Job, report: StatusReport, at: datetime) -> None:
    if job.status != JobStatus.CANCELLED.value:
        raise _conflict(
            f"cannot report CANCELLED for job {job.id}: only a job its owner cancelled can be",
            job,
        )
    job.cancel_acknowledged = True
    note_cancellation(session, job.assigned_resource_id, job.id, acknowledged=True)


_REPORT_STEPS: dict[ReportableStatus, Callable[[Session, Job, StatusReport, datetime], None]] = {
    ReportableStatus.RUNNING: _report_running,
    ReportableStatus.COMPLETED: _report_completed,
    ReportableStatus.FAILED: _report_failed,
    ReportableStatus.CANCELLED: _report_cancelled,
}


def _report_data(job: Job) -> dict[str, object]:
    return job_event_data(job) | {"progress": job.progress, "message": job.status_message}


# Claims


@dataclass(frozen=True)
class Claim:
    job: Job
    payment: LedgerTransaction
    refund: LedgerTransaction | None
    metered_hours: float


def claim_payment(
    session: Session,
    agent: AgentPrincipal,
    job: Job,
    body: ClaimRequest,
    max_skew_s: float,
    now: datetime,
) -> Claim:
    """Pay a COMPLETED job: min(budget, price x metered hours) to the provider, the rest of
    the escrow back to the job's owner. A job already paid answers its transactions again."""
    if job.status != JobStatus.COMPLETED.value:
        raise _conflict(f"cannot claim job {job.id}: only a COMPLETED job is paid", job)
    if job.payment_tx_id is not None:
        return _paid_claim(session, job)
    owner = session.get(User, agent.owner_id)
    if owner is None:
        raise not_found("user", "userId", agent.owner_id)
    _check_claim(owner, agent, job.id, body, max_skew_s, now)
    return _pay(session, agent, job)


def _check_claim(
    owner: User,
    agent: AgentPrincipal,
    job_id: str,
    body: ClaimRequest,
    max_skew_s: float,
    now: datetime,
) -> None:
    if owner.wallet_address is None:
        raise ApiError(
            ErrorCode.CONFLICT,
            f"cannot claim job {job_id}: the resource's owner has no walletAddress; set one "
            "with PUT /v1/api/users/me",
            jobId=job_id,
        )
    if body.wallet_address != owner.wallet_address:
        raise _denied(job_id, "walletAddress is not the resource owner's walletAddress")
    skew_s = abs(now.timestamp() - body.timestamp)
    if skew_s > max_skew_s:
        raise _denied(
            job_id,
            f"the timestamp is {skew_s:.0f} s from the server's clock, more than "
            f"{max_skew_s:g} s; sign the claim again with the current time",
            serverTime=int(now.timestamp()),
        )
    message = claim_message(job_id, agent.resource_id, body.wallet_address, body.timestamp)
    if not _signature_valid(body.signature, body.wallet_address, message):
        raise _denied(job_id, "the signature does not verify under walletAddress")


def _signature_valid(signature: str, wallet_address: str, message: bytes) -> bool:
    try:
        parsed = Signature.from_string(signature)
    except ValueError:
        return False
    return bool(parsed.verify(Pubkey.from_string(wallet_address), message))


def _metered_s(job: Job) -> float:
    # The time the server observed between the first RUNNING and COMPLETED.
    if job.started_at is None or job.completed_at is None:
        return 0.0
    return max((job.completed_at - job.started_at).total_seconds(), 0.0)


def metered_hours(job: Job) -> float:
    return _metered_s(job) / 3600


def payment_amount(job: Job) -> int:
    """min(budget, price x metered hours) in micro-tokens; at least one micro-token, since
    the ledger records no movement of nothing."""
    amount = round((job.price_per_hour or 0) * _metered_s(job) / 3600)
    return max(min(job.budget, amount), 1)


def _pay(session: Session, agent: AgentPrincipal, job: Job) -> Claim:
    related = Related("JOB", job.id)
    payment = move(
        session,
        kind=TransactionType.PAYMENT,
        amount=payment_amount(job),
        debit=escrow_account(job.id),
        credit=user_account(agent.owner_id),
        related=related,
    )
    refund = refund_escrow(session, job.id, job.owner_id)
    _record_payment(session, job, payment, refund)
    data = _payment_data(job, agent, payment, refund)
    for user_id in dict.fromkeys((job.owner_id, agent.owner_id)):
        emit(session, user_id, WebhookEvent.PAYMENT_PROCESSED, data)
    logger.info(
        "job paid job_id=%s amount=%s refund=%s",
        job.id,
        from_micro(payment.amount),
        from_micro(refund.amount) if refund else 0,
    )
    return Claim(job, payment, refund, metered_hours(job))


def _record_payment(
    session: Session, job: Job, payment: LedgerTransaction, refund: LedgerTransaction | None
) -> None:
    recorded = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.payment_tx_id.is_(None))
        .values(payment_tx_id=payment.id, refund_tx_id=refund.id if refund else None)
        .execution_options(synchronize_session=False)
    )
    if recorded.rowcount != 1:  # type: ignore[attr-defined]
        # Another server process paid it meanwhile: this transaction rolls back.
        raise ApiError(
            ErrorCode.CONFLICT,
            f"job {job.id} was claimed at the same time; claim again to see its payment",
            jobId=job.id,
        )
    session.refresh(job)


def _paid_claim(session: Session, job: Job) -> Claim:
    payment = session.get(LedgerTransaction, job.payment_tx_id)
    if payment is None:
        raise RuntimeError(f"job {job.id} names payment {job.payment_tx_id}, which is missing")
    refund = session.get(LedgerTransaction, job.refund_tx_id) if job.refund_tx_id else None
    return Claim(job, payment, refund, metered_hours(job))


def _payment_data(
    job: Job,
    agent: AgentPrincipal,
    payment: LedgerTransaction,
    refund: LedgerTransaction | None,
) -> dict[str, object]:
    return {
        "jobId": job.id,
        "resourceId": agent.resource_id,
        "paymentTransactionId": payment.id,
        "amount": from_micro(payment.amount),
        "refundTransactionId": refund.id if refund else None,
        "refundAmount": from_micro(refund.amount) if refund else 0,
        "meteredHours": metered_hours(job),
    }


# Shared checks


def _holds(agent: AgentPrincipal, job: Job) -> bool:
    return job.assigned_resource_id == agent.resource_id


def _existing_job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found("job", "jobId", job_id)
    return job


def _conflict(attempt: str, job: Job) -> ApiError:
    return ApiError(
        ErrorCode.CONFLICT, f"{attempt}: it is {job.status}", jobId=job.id, status=job.status
    )


def _denied(job_id: str, why: str, **details: object) -> ApiError:
    return ApiError(
        ErrorCode.PERMISSION_DENIED, f"cannot claim job {job_id}: {why}", jobId=job_id, **details
    )
