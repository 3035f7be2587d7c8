"""Job lifecycle steps shared by the API routes and the background matcher."""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from calctra_agent.server_stub._db import Job, JobDecline, Resource, utcnow
from calctra_agent.server_stub._events import emit
from calctra_agent.server_stub._heartbeats import note_cancellation
from calctra_agent.server_stub._ledger import refund_escrow
from calctra_agent.server_stub._matching import find_matches
from calctra_agent.server_stub._offers import wake_after_commit
from calctra_agent.wire import JobStatus, WebhookEvent

logger = logging.getLogger(__name__)

_IN_BATCH = 500
"""Ids per IN (...) list, well within every database's limit on bound parameters."""


def job_event_data(job: Job) -> dict[str, object]:
    return {
        "jobId": job.id,
        "status": job.status,
        "matchedResources": list(job.matched_resources),
        "assignedResource": job.assigned_resource_id,
    }


def declined_by(session: Session, job_id: str) -> set[str]:
    """The resources that declined the job."""
    rows = session.scalars(select(JobDecline.resource_id).where(JobDecline.job_id == job_id))
    return set(rows)


def try_match(
    session: Session,
    job: Job,
    at: datetime,
    limit: int,
    declined: Collection[str] | None = None,
) -> bool:
    """Move a CREATED job to MATCHED when resources that did not decline it fit it; returns
    whether it matched. `declined` saves the lookup when the caller knows it."""
    if declined is None:
        declined = declined_by(session, job.id)
    matches = find_matches(session, job, at, limit, exclude=declined)
    if not matches:
        return False
    job.matched_resources = matches
    job.status = JobStatus.MATCHED.value
    wake_after_commit(session, matches)
    emit(session, job.owner_id, WebhookEvent.JOB_MATCHED, job_event_data(job))
    logger.info("job matched job_id=%s resources=%d", job.id, len(matches))
    return True


def end_job(
    session: Session,
    job: Job,
    status: JobStatus,
    message: str,
    details: dict[str, object] | None = None,
) -> None:
    """Finish a job that did not complete: refund its escrow and tell its owner; `details`
    join the event's data."""
    job.status = status.value
    job.status_message = message
    job.completed_at = utcnow()
    refund_escrow(session, job.id, job.owner_id)
    if status == JobStatus.CANCELLED:
        # The agent that holds the job learns of it in its long poll and its heartbeat.
        note_cancellation(session, job.assigned_resource_id, job.id)
        wake_after_commit(session, [job.assigned_resource_id])
    event = (
        WebhookEvent.JOB_CANCELLED if status == JobStatus.CANCELLED else WebhookEvent.JOB_FAILED
    )
    data = job_event_data(job) | {"message": message} | (details or {})
    emit(session, job.owner_id, event, data)


def match_waiting_jobs(session: Session, limit: int) -> int:
    """One pass of the matcher: expire jobs whose deadline passed unstarted, match the
    CREATED ones that resources now fit, and match anew the MATCHED ones whose resources
    have all gone inactive or away. Returns how many jobs changed."""
    now = utcnow()
    waiting = session.scalars(
        select(Job).where(Job.status.in_([JobStatus.CREATED.value, JobStatus.MATCHED.value]))
    ).all()
    declines = _declines_of_created_jobs(session)
    matched = [job for job in waiting if job.status == JobStatus.MATCHED.value]
    stranded = _stranded(session, matched)
    changed = 0
    for job in waiting:
        if job.deadline is not None and job.deadline <= now:
            end_job(session, job, JobStatus.FAILED, "the deadline passed before the job started")
            changed += 1
        elif job.id in stranded:
            rematch(session, job, now, limit)
            changed += 1
        elif job.status == JobStatus.CREATED.value and try_match(
            session, job, now, limit, declines.get(job.id, set())
        ):
            changed += 1
    return changed


def _stranded(session: Session, matched: list[Job]) -> set[str]:
    """The MATCHED jobs none of whose matched resources is active any more: no live agent
    would ever take them, so they must be offered to others."""
    resource_ids = sorted({rid for job in matched for rid in job.matched_resources})
    active: set[str] = set()
    for start in range(0, len(resource_ids), _IN_BATCH):
        batch = resource_ids[start : start + _IN_BATCH]
        active.update(
            session.scalars(
                select(Resource.id).where(Resource.id.in_(batch), Resource.active.is_(True))
            )
        )
    return {job.id for job in matched if active.isdisjoint(job.matched_resources)}


def _declines_of_created_jobs(session: Session) -> dict[str, set[str]]:
    rows = session.execute(
        select(JobDecline.job_id, JobDecline.resource_id)
        .join(Job, Job.id == JobDecline.job_id)
        .where(Job.status == JobStatus.CREATED.value)
    )
    declines: dict[str, set[str]] = {}
    for job_id, resource_id in rows:
        declines.setdefault(job_id, set()).add(resource_id)
    return declines


def rematch(session: Session, job: Job, at: datetime, limit: int) -> bool:
    """Match a MATCHED job anew (after a decline, or once its resources went inactive), among
    the resources that did not decline it; with none left it goes back to CREATED for the
    background matcher. Returns whether it is still MATCHED."""
    matches = find_matches(session, job, at, limit, exclude=declined_by(session, job.id))
    job.matched_resources = matches
    job.status = (JobStatus.MATCHED if matches else JobStatus.CREATED).value
    wake_after_commit(session, matches)
    logger.info("job matched anew job_id=%s resources=%d", job.id, len(matches))
    return bool(matches)
