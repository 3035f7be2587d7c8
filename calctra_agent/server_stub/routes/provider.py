"""The provider protocol: what an agent calls with its agent token (docs/provider-protocol.md)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from calctra_agent.server_stub._context import Agent, Context
from calctra_agent.server_stub._db import Job, from_micro, utcnow
from calctra_agent.server_stub._pagination import Pagination
from calctra_agent.server_stub._provider import (
    Claim,
    accept_offer,
    apply_report,
    claim_payment,
    decline_offer,
    held_job,
    offers_for,
)
from calctra_agent.server_stub.routes.tokens import transaction_out
from calctra_agent.wire import (
    AcceptedJob,
    AcceptedJobPage,
    ClaimRequest,
    ClaimResponse,
    DeclineRequest,
    ErrorEnvelope,
    HeartbeatRequest,
    HeartbeatResponse,
    JobStatus,
    JobType,
    Message,
    Offer,
    OfferBatch,
    Requirements,
    StatusReport,
    StatusReportResponse,
)

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/provider", tags=["provider"])

_CONFLICT: dict[int | str, dict[str, object]] = {
    409: {"model": ErrorEnvelope, "description": "CONFLICT"}
}
_RECHECK_S = 1.0
"""How often a waiting long poll looks at the database, for changes that another server
process committed and so woke nobody here."""
_JITTER = 0.1


def offer_out(job: Job) -> Offer:
    return Offer(
        job_id=job.id,
        name=job.name,
        type=JobType(job.type),
        requirements=Requirements.model_validate(job.requirements),
        datasets=list(job.datasets),
        budget=from_micro(job.budget),
        deadline=job.deadline,
        created_at=job.created_at,
        image=job.image,
    )


def accepted_job_out(job: Job) -> AcceptedJob:
    return AcceptedJob(
        job_id=job.id,
        name=job.name,
        type=JobType(job.type),
        code=job.code,
        requirements=Requirements.model_validate(job.requirements),
        datasets=list(job.datasets),
        budget=from_micro(job.budget),
        deadline=job.deadline,
        price_per_hour=from_micro(job.price_per_hour or 0),
        status=JobStatus(job.status),
        accepted_at=job.accepted_at or job.created_at,
        image=job.image,
    )


@router.post("/heartbeat", response_model=HeartbeatResponse)
async def heartbeat(body: HeartbeatRequest, context: Context, agent: Agent) -> HeartbeatResponse:
    now = utcnow()
    context.heartbeats.add(agent.resource_id, body, now)
    interval_s = context.settings.heartbeat_interval_s
    return HeartbeatResponse(
        next_heartbeat_in_s=round(interval_s * random.uniform(1 - _JITTER, 1 + _JITTER), 3),
        server_time=now,
        active=True,
        cancelled_jobs=context.cancelled.of(agent.resource_id),
    )


@router.get("/offers", response_model=OfferBatch)
async def poll_offers(
    context: Context,
    agent: Agent,
    wait_s: Annotated[
        float,
        Query(alias="waitS", ge=0, le=60, description="Seconds to wait for something to arrive"),
    ] = 25,
) -> OfferBatch:
    deadline = time.monotonic() + wait_s
    with context.offers.listening(agent.resource_id) as woken:
        while True:
            # Cleared before looking, so that a wake during the look is not lost.
            woken.clear()
            batch = _offer_batch(context, agent.resource_id)
            remaining_s = deadline - time.monotonic()
            if batch.offers or batch.cancelled_jobs or remaining_s <= 0:
                return batch
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), min(_RECHECK_S, remaining_s))


def _offer_batch(context: Context, resource_id: str) -> OfferBatch:
    with context.db.transaction() as session:
        offers = [offer_out(job) for job in offers_for(session, resource_id)]
    return OfferBatch(offers=offers, cancelled_jobs=context.cancelled.of(resource_id))


@router.post("/offers/{job_id}/accept", response_model=AcceptedJob, responses=_CONFLICT)
async def accept(job_id: str, context: Context, agent: Agent) -> AcceptedJob:
    with context.db.transaction() as session:
        accepted = accepted_job_out(accept_offer(session, agent, job_id, utcnow()))
    context.outbox_wakeup.set()
    return accepted


@router.post("/offers/{job_id}/decline", response_model=Message, responses=_CONFLICT)
async def decline(job_id: str, body: DeclineRequest, context: Context, agent: Agent) -> Message:
    limit = context.settings.matches_per_job
    with context.db.transaction() as session:
        decline_offer(session, agent, job_id, body, utcnow(), limit)
    return Message(message="Offer declined")


@router.post("/jobs/{job_id}/status", response_model=StatusReportResponse, responses=_CONFLICT)
async def report_status(
    job_id: str, body: StatusReport, context: Context, agent: Agent
) -> StatusReportResponse:
    with context.db.transaction() as session:
        job = held_job(session, agent, job_id)
        apply_report(session, job, body, utcnow())
        answer = StatusReportResponse(
            job_id=job.id, status=JobStatus(job.status), progress=job.progress
        )
    context.outbox_wakeup.set()
    return answer


@router.get("/jobs", response_model=AcceptedJobPage)
async def list_held_jobs(
    context: Context,
    agent: Agent,
    page: Pagination,
    status: Annotated[JobStatus | None, Query()] = None,
) -> AcceptedJobPage:
    conditions = [Job.assigned_resource_id == agent.resource_id]
    if status is not None:
        conditions.append(Job.status == status.value)
    with context.db.transaction() as session:
        total = session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0
        rows = session.scalars(
            select(Job)
            .where(*conditions)
            .order_by(Job.accepted_at.desc(), Job.id.desc())
            .offset(page.offset)
            .limit(page.limit)
        ).all()
        jobs = [accepted_job_out(row) for row in rows]
    return AcceptedJobPage(total=total, page=page.page, limit=page.limit, jobs=jobs)


@router.get("/jobs/{job_id}", response_model=AcceptedJob)
async def read_held_job(job_id: str, context: Context, agent: Agent) -> AcceptedJob:
    with context.db.transaction() as session:
        return accepted_job_out(held_job(session, agent, job_id))


@router.post("/jobs/{job_id}/claim", response_model=ClaimResponse, responses=_CONFLICT)
async def claim(job_id: str, body: ClaimRequest, context: Context, agent: Agent) -> ClaimResponse:
    max_skew_s = context.settings.claim_max_skew_s
    with context.db.transaction() as session:
        job = held_job(session, agent, job_id)
        answer = _claim_out(claim_payment(session, agent, job, body, max_skew_s, utcnow()))
    context.outbox_wakeup.set()
    return answer


def _claim_out(claim: Claim) -> ClaimResponse:
    return ClaimResponse(
        job_id=claim.job.id,
        payment=transaction_out(claim.payment),
        refund=transaction_out(claim.refund) if claim.refund else None,
        metered_hours=claim.metered_hours,
    )
