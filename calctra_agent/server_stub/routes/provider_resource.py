"""The agent's own resource: read it, and keep its specs, price and availability current."""

from __future__ import annotations

import logging

from fastapi import APIRouter

from calctra_agent.server_stub._context import Agent, Context
from calctra_agent.server_stub._db import Resource
from calctra_agent.server_stub._errors import not_found
from calctra_agent.server_stub.routes.resources import (
    apply_request,
    check_gpu_fields,
    resource_out,
)
from calctra_agent.wire import Message, ProviderResource, ResourceRequest

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/provider", tags=["provider"])


@router.get("/resource", response_model=ProviderResource)
async def read_own_resource(context: Context, agent: Agent) -> ProviderResource:
    with context.db.transaction() as session:
        row = session.get(Resource, agent.resource_id)
        if row is None:
            raise not_found("resource", "resourceId", agent.resource_id)
        public = resource_out(row)
        return ProviderResource(
            **public.model_dump(),
            last_heartbeat_at=row.last_heartbeat_at,
            agent_version=row.agent_version,
        )


@router.put("/resource", response_model=Message)
async def update_own_resource(body: ResourceRequest, context: Context, agent: Agent) -> Message:
    check_gpu_fields(body)
    with context.db.transaction() as session:
        row = session.get(Resource, agent.resource_id)
        if row is None:
            raise not_found("resource", "resourceId", agent.resource_id)
        apply_request(row, body)
    logger.info("resource updated by its agent resource_id=%s", agent.resource_id)
    return Message(message="Resource updated successfully")
