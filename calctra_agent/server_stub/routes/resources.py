"""Resources: the machines that providers offer."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from calctra_agent.server_stub._agent_tokens import revoke_resource_tokens
from calctra_agent.server_stub._context import Context, MarketReader, UserId
from calctra_agent.server_stub._db import Job, Resource, from_micro, new_id, to_micro, utcnow
from calctra_agent.server_stub._errors import ApiError, not_found
from calctra_agent.server_stub._market import Filters, PageRow, page_rows
from calctra_agent.server_stub._pagination import Pagination
from calctra_agent.wire import (
    ErrorCode,
    JobStatus,
    Message,
    ResourceCreated,
    ResourcePage,
    ResourceRequest,
    ResourceType,
)
from calctra_agent.wire import Resource as ResourceOut

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/resources", tags=["resources"])

_BUSY_STATUSES = (JobStatus.ACCEPTED.value, JobStatus.RUNNING.value)


def resource_fields(row: Resource | PageRow) -> dict[str, Any]:
    """A resource as the fields of the wire's Resource, to validate in one go."""
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "type": row.type,
        "owner": row.owner_id,
        "specs": {
            "cpu_cores": row.cpu_cores,
            "memory_gb": row.memory_gb,
            "storage_gb": row.storage_gb,
            "gpu_model": row.gpu_model,
            "gpu_memory_gb": row.gpu_memory_gb,
        },
        "price_per_hour": from_micro(row.price_per_hour),
        "availability": row.availability or None,
        "reputation": round(row.reputation, 2),
        "active": row.active,
    }


def resource_out(row: Resource | PageRow) -> ResourceOut:
    return ResourceOut.model_validate(resource_fields(row))


def get_resource(session: Session, resource_id: str) -> Resource:
    row = session.get(Resource, resource_id)
    if row is None:
        raise not_found("resource", "resourceId", resource_id)
    return row


def owned_resource(session: Session, resource_id: str, user_id: str) -> Resource:
    row = get_resource(session, resource_id)
    if row.owner_id != user_id:
        raise ApiError(
            ErrorCode.PERMISSION_DENIED,
            "only the resource's owner may change it",
            resourceId=resource_id,
        )
    return row


def apply_request(row: Resource, body: ResourceRequest) -> None:
    specs = body.specs
    has_gpu = specs.gpu_model is not None
    row.name = body.name
    row.description = body.description
    row.type = (body.type or (ResourceType.GPU if has_gpu else ResourceType.CPU)).value
    row.cpu_cores = specs.cpu_cores
    row.memory_gb = specs.memory_gb
    row.storage_gb = specs.storage_gb
    row.has_gpu = has_gpu
    row.gpu_model = specs.gpu_model
    row.gpu_memory_gb = specs.gpu_memory_gb if has_gpu else None
    row.price_per_hour = to_micro(body.price_per_hour)
    row.availability = body.availability.model_dump(by_alias=True) if body.availability else None
    row.updated_at = utcnow()


def check_gpu_fields(body: ResourceRequest) -> None:
    if body.specs.gpu_memory_gb and body.specs.gpu_model is None:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "specs.gpuMemoryGb is set but specs.gpuModel is not; name the GPU model",
            field="specs.gpuModel",
        )
    if body.type == ResourceType.GPU and body.specs.gpu_model is None:
        raise ApiError(
            ErrorCode.VALIDATION_ERROR,
            "a GPU resource needs specs.gpuModel",
            field="specs.gpuModel",
        )


@router.get("", response_model=ResourcePage)
async def list_resources(
    context: Context,
    _user_id: MarketReader,
    page: Pagination,
    type: Annotated[ResourceType | None, Query(description="CPU, GPU or Storage")] = None,
    min_cpu: Annotated[int | None, Query(alias="minCpu", ge=0, le=1_000_000)] = None,
    min_memory: Annotated[float | None, Query(alias="minMemory", ge=0, le=1e9)] = None,
    min_storage: Annotated[float | None, Query(alias="minStorage", ge=0, le=1e12)] = None,
    has_gpu: Annotated[bool | None, Query(alias="hasGpu")] = None,
    max_price: Annotated[float | None, Query(alias="maxPrice", ge=0, le=1e12)] = None,
) -> Response:
    filters = Filters(
        type=type.value if type is not None else None,
        min_cpu=min_cpu,
        min_memory=min_memory,
        min_storage=min_storage,
        has_gpu=has_gpu,
        max_price=to_micro(max_price) if max_price is not None else None,
    )
    with context.db.read() as connection:
        total, ids = context.market.search(connection, filters, page.offset, page.limit)
        resources = [resource_fields(row) for row in page_rows(connection, ids)]
    listing = ResourcePage.model_validate(
        {"total": total, "page": page.page, "limit": page.limit, "resources": resources}
    )
    # Serialized here, as FastAPI would, without the second validation that it would run first.
    return Response(listing.model_dump_json(by_alias=True), media_type="application/json")


@router.get("/{resource_id}", response_model=ResourceOut)
async def read_resource(resource_id: str, context: Context, _user_id: MarketReader) -> ResourceOut:
    with context.db.transaction() as session:
        return resource_out(get_resource(session, resource_id))


@router.post("", response_model=ResourceCreated, status_code=201)
async def create_resource(
    body: ResourceRequest, context: Context, user_id: UserId
) -> ResourceCreated:
    check_gpu_fields(body)
    row = Resource(
        id=new_id("res"),
        owner_id=user_id,
        created_at=utcnow(),
        active=True,
        reputation=0.0,
        rating_count=0,
    )
    apply_request(row, body)
    with context.db.transaction() as session:
        session.add(row)
    logger.info("resource registered resource_id=%s owner=%s", row.id, user_id)
    return ResourceCreated(message="Resource registered successfully", resource_id=row.id)


@router.put("/{resource_id}", response_model=Message)
async def update_resource(
    resource_id: str, body: ResourceRequest, context: Context, user_id: UserId
) -> Message:
    check_gpu_fields(body)
    with context.db.transaction() as session:
        apply_request(owned_resource(session, resource_id, user_id), body)
    return Message(message="Resource updated successfully")


@router.delete("/{resource_id}", response_model=Message)
async def delete_resource(resource_id: str, context: Context, user_id: UserId) -> Message:
    with context.db.transaction() as session:
        row = owned_resource(session, resource_id, user_id)
        busy = session.scalar(
            select(Job.id).where(
                Job.assigned_resource_id == resource_id, Job.status.in_(_BUSY_STATUSES)
            )
        )
        if busy:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"resource {resource_id} is running job {busy}; delete it once the job ends",
                resourceId=resource_id,
                jobId=busy,
            )
        session.delete(row)
        revoked = revoke_resource_tokens(session, resource_id)
    context.agent_tokens.forget_resource(resource_id)
    logger.info("resource deleted resource_id=%s agent_tokens_revoked=%d", resource_id, revoked)
    return Message(message="Resource deleted successfully")
