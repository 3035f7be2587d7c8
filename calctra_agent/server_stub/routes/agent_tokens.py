"""Agent tokens: an owner issues one per resource for the agent on that machine."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.orm import Session

from calctra_agent.server_stub._agent_tokens import new_agent_token, token_sha256
from calctra_agent.server_stub._context import Context, UserId
from calctra_agent.server_stub._db import AgentTokenRow, new_id, utcnow
from calctra_agent.server_stub._errors import ApiError, not_found
from calctra_agent.server_stub.routes.resources import get_resource
from calctra_agent.wire import (
    AgentToken,
    AgentTokenCreated,
    AgentTokenList,
    AgentTokenRequest,
    ErrorCode,
    Message,
)

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/agent-tokens", tags=["agent tokens"])


def agent_token_out(row: AgentTokenRow) -> AgentToken:
    return AgentToken(
        id=row.id,
        resource_id=row.resource_id,
        name=row.name,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked=row.revoked_at is not None,
    )


@router.post("", response_model=AgentTokenCreated, status_code=201)
async def issue_agent_token(
    body: AgentTokenRequest, context: Context, user_id: UserId
) -> AgentTokenCreated:
    token = new_agent_token()
    row = AgentTokenRow(
        id=new_id("tok"),
        token_sha256=token_sha256(token),
        owner_id=user_id,
        resource_id=body.resource_id,
        name=body.name,
        created_at=utcnow(),
    )
    with context.db.transaction() as session:
        if get_resource(session, body.resource_id).owner_id != user_id:
            raise ApiError(
                ErrorCode.PERMISSION_DENIED,
                f"resource {body.resource_id} belongs to another user; an agent token can "
                "only be issued for one's own resource",
                resourceId=body.resource_id,
            )
        session.add(row)
    logger.info("agent token issued token_id=%s resource_id=%s", row.id, row.resource_id)
    return AgentTokenCreated(
        token_id=row.id, token=token, resource_id=row.resource_id, created_at=row.created_at
    )


@router.get("", response_model=AgentTokenList)
async def list_agent_tokens(context: Context, user_id: UserId) -> AgentTokenList:
    with context.db.transaction() as session:
        rows = session.scalars(
            select(AgentTokenRow)
            .where(AgentTokenRow.owner_id == user_id)
            .order_by(AgentTokenRow.created_at, AgentTokenRow.id)
        ).all()
        return AgentTokenList(tokens=[agent_token_out(row) for row in rows])


@router.delete("/{token_id}", response_model=Message)
async def revoke_agent_token(token_id: str, context: Context, user_id: UserId) -> Message:
    with context.db.transaction() as session:
        row = _owned_token(session, token_id, user_id)
        if row.revoked_at is None:
            row.revoked_at = utcnow()
    context.agent_tokens.forget_token(token_id)
    logger.info("agent token revoked token_id=%s", token_id)
    return Message(message="Agent token revoked")


def _owned_token(session: Session, token_id: str, user_id: str) -> AgentTokenRow:
    row = session.get(AgentTokenRow, token_id)
    if row is None:
        raise not_found("agent token", "tokenId", token_id)
    if row.owner_id != user_id:
        raise ApiError(
            ErrorCode.PERMISSION_DENIED,
            "this agent token belongs to another user",
            tokenId=token_id,
        )
    return row
