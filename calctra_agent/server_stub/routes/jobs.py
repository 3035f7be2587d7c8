"""Jobs: what customers want computed."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from calctra_agent.server_stub._context import Context, UserId
from calctra_agent.server_stub._db import (
    Dataset,
    Job,
    Resource,
    from_micro,
    new_id,
    to_micro,
    utcnow,
)
from calctra_agent.server_stub._errors import ApiError, not_found, validation_error
from calctra_agent.server_stub._jobs import end_job, try_match
from calctra_agent.server_stub._ledger import (
    Related,
    escrow_account,
    move,
    open_escrow_account,
    user_account,
)
from calctra_agent.server_stub._pagination import Pagination
from calctra_agent.server_stub._results import result_out
from calctra_agent.wire import (
    FINAL_JOB_STATUSES,
    ErrorCode,
    JobCreated,
    JobDetail,
    JobPage,
    JobRequest,
    JobStatus,
    JobType,
    Message,
    RateRequest,
    Requirements,
    TransactionStatus,
    TransactionType,
)
from calctra_agent.wire import Job as JobOut

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])


def job_out(job: Job, detail: bool = False) -> JobOut:
    fields = dict(
        id=job.id,
        name=job.name,
        description=job.description,
        type=JobType(job.type),
        requirements=Requirements.model_validate(job.requirements),
        datasets=list(job.datasets),
        budget=from_micro(job.budget),
        deadline=job.deadline,
        status=JobStatus(job.status),
        progress=job.progress,
        created_at=job.created_at,
        started_at=job.started_at,
        estimated_completion=_estimated_completion(job),
        completed_at=job.completed_at,
        matched_resources=list(job.matched_resources),
        assigned_resource=job.assigned_resource_id,
        status_message=job.status_message,
        rating=job.rating,
        image=job.image,
        result=result_out(job),
    )
    return JobDetail(**fields, code=job.code) if detail else JobOut(**fields)


def _estimated_completion(job: Job) -> object:
    if job.completed_at is not None:
        return job.completed_at
    if job.started_at is None:
        return None
    return job.started_at + timedelta(hours=float(job.requirements["estimatedDurationHours"]))


def owned_job(session: Session, job_id: str, user_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise not_found("job", "jobId", job_id)
    if job.owner_id != user_id:
        raise ApiError(
            ErrorCode.PERMISSION_DENIED, "this job belongs to another user", jobId=job_id
        )
    return job


def _check_schedule(body: JobRequest) -> None:
    if body.deadline is None:
        return
    now = utcnow()
    if body.deadline <= now:
        raise validation_error("deadline must be in the future", field="deadline")
    hours = body.requirements.estimated_duration_hours
    if now + timedelta(hours=hours) > body.deadline:
        raise validation_error(
            f"the job's estimated {hours:g} hours do not fit before its deadline",
            field="deadline",
        )


def _check_requirements(body: JobRequest) -> None:
    req = body.requirements
    if req.min_gpu_memory_gb and not req.needs_gpu:
        raise validation_error(
            "requirements.minGpuMemoryGb is set but requirements.needsGpu is false",
            field="requirements.needsGpu",
        )


def _check_datasets(session: Session, dataset_ids: list[str], user_id: str) -> None:
    for dataset_id in dict.fromkeys(dataset_ids):
        dataset = session.get(Dataset, dataset_id)
        if dataset is None:
            raise not_found("dataset", "datasetId", dataset_id)
        if dataset.owner_id != user_id and not dataset.is_public:
            raise ApiError(
                ErrorCode.PERMISSION_DENIED,
                f"dataset {dataset_id} is private to another user",
                datasetId=dataset_id,
            )


@router.get("", response_model=JobPage)
async def list_jobs(
    context: Context,
    user_id: UserId,
    page: Pagination,
    status: Annotated[JobStatus | None, Query()] = None,
) -> JobPage:
    conditions = [Job.owner_id == user_id]
    if status is not None:
        conditions.append(Job.status == status.value)
    with context.db.transaction() as session:
        total = session.scalar(select(func.count(Job.id)).where(*conditions)) or 0
        rows = session.scalars(
            select(Job)
            .where(*conditions)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .offset(page.offset)
            .limit(page.limit)
        ).all()
        jobs = [job_out(row) for row in rows]
    return JobPage(total=total, page=page.page, limit=page.limit, jobs=jobs)


@router.get("/{job_id}", response_model=JobDetail)
async def read_job(job_id: str, context: Context, user_id: UserId) -> JobOut:
    with context.db.transaction() as session:
        return job_out(owned_job(session, job_id, user_id), detail=True)


@router.post("", response_model=JobCreated, status_code=201)
async def create_job(body: JobRequest, context: Context, user_id: UserId) -> JobCreated:
    _check_requirements(body)
    _check_schedule(body)
    now = utcnow()
    job = Job(
        id=new_id("job"),
        owner_id=user_id,
        name=body.name,
        description=body.description,
        type=body.type.value,
        code=body.code,
        datasets=list(body.datasets),
        requirements=body.requirements.model_dump(by_alias=True),
        budget=to_micro(body.budget),
        deadline=body.deadline,
        status=JobStatus.CREATED.value,
        progress=0,
        matched_resources=[],
        created_at=now,
        image=body.image,
    )
    with context.db.transaction() as session:
        _check_datasets(session, body.datasets, user_id)
        session.add(job)
        open_escrow_account(session, job.id, user_id)
        move(
            session,
            kind=TransactionType.ESCROW,
            amount=job.budget,
            debit=user_account(user_id),
            credit=escrow_account(job.id),
            related=Related("JOB", job.id),
            status=TransactionStatus.PENDING,
        )
        matched = try_match(session, job, now, context.settings.matches_per_job)
    context.outbox_wakeup.set()
    logger.info("job created job_id=%s budget=%s matched=%s", job.id, body.budget, matched)
    eta = now if matched else now + timedelta(seconds=context.settings.matcher_interval_s)
    return JobCreated(message="Job created successfully", job_id=job.id, estimated_matching=eta)


@router.post("/{job_id}/cancel", response_model=Message)
async def cancel_job(job_id: str, context: Context, user_id: UserId) -> Message:
    with context.db.transaction() as session:
        job = owned_job(session, job_id, user_id)
        if JobStatus(job.status) in FINAL_JOB_STATUSES:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"job {job_id} is already {job.status} and can no longer be cancelled",
                jobId=job_id,
                status=job.status,
            )
        end_job(session, job, JobStatus.CANCELLED, "cancelled by its owner")
    context.outbox_wakeup.set()
    logger.info("job cancelled job_id=%s", job_id)
    return Message(message="Job cancelled successfully")


@router.post("/{job_id}/rate", response_model=Message)
async def rate_job(job_id: str, body: RateRequest, context: Context, user_id: UserId) -> Message:
    with context.db.transaction() as session:
        job = owned_job(session, job_id, user_id)
        if job.status != JobStatus.COMPLETED.value:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"only a COMPLETED job can be rated; job {job_id} is {job.status}",
                jobId=job_id,
                status=job.status,
            )
        if job.rating is not None:
            raise ApiError(ErrorCode.CONFLICT, f"job {job_id} is already rated", jobId=job_id)
        job.rating = body.rating
        job.feedback = body.feedback
        resource = session.get(Resource, job.assigned_resource_id or "")
        if resource is not None:
            total = resource.reputation * resource.rating_count + body.rating
            resource.rating_count += 1
            resource.reputation = total / resource.rating_count
    return Message(message="Job rated successfully")
