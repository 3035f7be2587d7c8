"""Resources: the machines that providers offer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from calctra_agent.server_stub._agent_tokens import revoke_resource_tokens
from calctra_agent.server_stub._context import Context, MarketReader, UserId
from calctra_agent.server_stub._db import Job, Resource, new_id, to_micro, utcnow
from calctra_agent.server_stub._errors import ApiError, not_found
from calctra_agent.server_stub._market import Filters, PageRow, resource_fields
from calctra_agent.server_stub._pagination import Page, PageQuery, parse_query, query_parameters
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


class ListingQuery(PageQuery):
    """The query string of GET /resources: a page and the filters, None for no filter."""

    type: Annotated[ResourceType | None, Field(description="CPU, GPU or Storage")] = None
    min_cpu: Annotated[int | None, Field(alias="minCpu", ge=0, le=1_000_000)] = None
    min_memory: Annotated[float | None, Field(alias="minMemory", ge=0, le=1e9)] = None
    min_storage: Annotated[float | None, Field(alias="minStorage", ge=0, le=1e12)] = None
    has_gpu: Annotated[bool | None, Field(alias="hasGpu")] = None
    max_price: Annotated[float | None, Field(alias="maxPrice", ge=0, le=1e12)] = None

    def filters(self) -> Filters:
        return Filters(
            type=self.type.value if self.type is not None else None,
            min_cpu=self.min_cpu,
            min_memory=self.min_memory,
            min_storage=self.min_storage,
            has_gpu=self.has_gpu,
            max_price=to_micro(self.max_price) if self.max_price is not None else None,
        )


async def listing_query(request: Request) -> ListingQuery:  # a coroutine: see page_params
    return parse_query(ListingQuery, request)


def listing_json(total: int, page: Page, resources: Sequence[bytes]) -> bytes:
    """The ResourcePage, its resources already JSON: the bytes that model_dump_json(by_alias=
    True) gives for the validated page."""
    head = b'{"total":%d,"page":%d,"limit":%d,"resources":[' % (total, page.page, page.limit)
    return head + b",".join(resources) + b"]}"


@router.get(
    "", response_model=ResourcePage, openapi_extra={"parameters": query_parameters(ListingQuery)}
)
async def list_resources(
    context: Context,
    _user_id: MarketReader,
    query: Annotated[ListingQuery, Depends(listing_query)],
) -> Response:
    page = query.applied
    with context.db.read() as connection:
        total, resources = context.market.listing(
            connection, query.filters(), page.offset, page.limit
        )
    return Response(listing_json(total, page, resources), media_type="application/json")


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
