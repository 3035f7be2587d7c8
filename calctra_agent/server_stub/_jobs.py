"""Job lifecycle steps shared by the API routes and the background matcher."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from calctra_agent.server_stub._db import Job, utcnow
from calctra_agent.server_stub._events import emit
from calctra_agent.server_stub._ledger import refund_escrow
from calctra_agent.server_stub._matching import find_matches
from calctra_agent.wire import JobStatus, WebhookEvent

logger = logging.getLogger(__name__)


def job_event_data(job: Job) -> dict[str, object]:
    return {
        "jobId": job.id,
        "status": job.status,
        "matchedResources": list(job.matched_resources),
        "assignedResource": job.assigned_resource_id,
    }


def try_match(session: Session, job: Job, at: datetime, limit: int) -> bool:
    """Move a CREATED job to MATCHED when resources fit it; returns whether it matched."""
    matches = find_matches(session, job, at, limit)
    if not matches:
        return False
    job.matched_resources = matches
    job.status = JobStatus.MATCHED.value
    emit(session, job.owner_id, WebhookEvent.JOB_MATCHED, job_event_data(job))
    logger.info("job matched job_id=%s resources=%d", job.id, len(matches))
    return True


def end_job(session: Session, job: Job, status: JobStatus, message: str) -> None:
    """Finish a job that did not complete: refund its escrow and tell its owner."""
    job.status = status.value
    job.status_message = message
    job.completed_at = utcnow()
    refund_escrow(session, job.id, job.owner_id)
    event = (
        WebhookEvent.JOB_CANCELLED if status == JobStatus.CANCELLED else WebhookEvent.JOB_FAILED
    )
    emit(session, job.owner_id, event, job_event_data(job) | {"message": message})


def match_waiting_jobs(session: Session, limit: int) -> int:
    """One pass of the matcher: expire jobs whose deadline passed unstarted, and match the
    CREATED ones that resources now fit. Returns how many jobs changed."""
    now = utcnow()
    waiting = session.scalars(
        select(Job).where(Job.status.in_([JobStatus.CREATED.value, JobStatus.MATCHED.value]))
    ).all()
    changed = 0
    for job in waiting:
        if job.deadline is not None and job.deadline <= now:
            end_job(session, job, JobStatus.FAILED, "the deadline passed before the job started")
            changed += 1
        elif job.status == JobStatus.CREATED.value and try_match(session, job, now, limit):
            changed += 1
    return changed
