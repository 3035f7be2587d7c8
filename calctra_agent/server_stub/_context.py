"""What every request handler reaches: settings, database, token signer, event outbox."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from calctra_agent.server_stub._agent_tokens import AgentPrincipal, AgentTokenCache
from calctra_agent.server_stub._db import Database, User
from calctra_agent.server_stub._errors import ApiError
from calctra_agent.server_stub._heartbeats import CancelledJobs, HeartbeatBuffer
from calctra_agent.server_stub._market import MarketIndex
from calctra_agent.server_stub._offers import OfferNotifier
from calctra_agent.server_stub._security import TokenError, TokenSigner
from calctra_agent.server_stub._settings import ServerSettings
from calctra_agent.wire import AGENT_TOKEN_PREFIX, ErrorCode


@dataclass
class ServerContext:
    settings: ServerSettings
    db: Database
    signer: TokenSigner
    outbox_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    """Set after a transaction that queued webhook deliveries, so the worker sends them now."""
    agent_tokens: AgentTokenCache = field(default_factory=AgentTokenCache)
    offers: OfferNotifier = field(default_factory=OfferNotifier)
    heartbeats: HeartbeatBuffer = field(default_factory=HeartbeatBuffer)
    cancelled: CancelledJobs = field(default_factory=CancelledJobs)
    market: MarketIndex = field(default_factory=MarketIndex)


# The dependencies are coroutines although nothing in them awaits: FastAPI runs a plain
# function in its thread pool, and that round trip cost more than the work, every request.
async def get_context(request: Request) -> ServerContext:
    context: ServerContext = request.app.state.context
    return context


Context = Annotated[ServerContext, Depends(get_context)]


_bearer = HTTPBearer(auto_error=False, description="A token from POST /v1/api/auth/login")


async def authenticated_user_id(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    context: Context,
) -> str:
    if credentials is None or not credentials.credentials.strip():
        raise ApiError(
            ErrorCode.AUTHENTICATION_REQUIRED,
            "this endpoint needs 'Authorization: Bearer <token>'; get a token from "
            "POST /v1/api/auth/login",
        )
    if credentials.credentials.strip().startswith(AGENT_TOKEN_PREFIX):
        raise ApiError(
            ErrorCode.AUTHENTICATION_REQUIRED,
            "an agent token is for an agent's endpoints (/v1/api/provider/..., a job's logs "
            "and results, its datasets' content, reading /v1/api/resources); this endpoint "
            "needs a user token from POST /v1/api/auth/login",
        )
    try:
        return context.signer.check(credentials.credentials.strip()).user_id
    except TokenError as exc:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, str(exc)) from None


UserId = Annotated[str, Depends(authenticated_user_id)]


_agent_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AgentToken",
    description="An agent token (cat_...) from POST /v1/api/agent-tokens",
)


async def authenticated_agent(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_agent_bearer)],
    context: Context,
) -> AgentPrincipal:
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        raise ApiError(
            ErrorCode.AUTHENTICATION_REQUIRED,
            "this endpoint needs 'Authorization: Bearer <agent token>'; issue one with "
            "POST /v1/api/agent-tokens",
        )
    if not token.startswith(AGENT_TOKEN_PREFIX):
        raise ApiError(
            ErrorCode.AUTHENTICATION_REQUIRED,
            "this endpoint takes an agent token (cat_...), not a user token; issue one with "
            "POST /v1/api/agent-tokens",
        )
    principal = context.agent_tokens.principal(context.db, token)
    if principal is None:
        raise ApiError(
            ErrorCode.AUTHENTICATION_REQUIRED,
            "the agent token is unknown or revoked; issue a new one with "
            "POST /v1/api/agent-tokens",
        )
    return principal


Agent = Annotated[AgentPrincipal, Depends(authenticated_agent)]


async def market_reader(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    context: Context,
) -> str:
    """The marketplace's listing is readable with a user token or an agent token (an agent
    compares prices); returns the caller's user id."""
    token = credentials.credentials.strip() if credentials else ""
    if token.startswith(AGENT_TOKEN_PREFIX):
        return (await authenticated_agent(credentials, context)).owner_id
    return await authenticated_user_id(credentials, context)


MarketReader = Annotated[str, Depends(market_reader)]


@dataclass(frozen=True)
class Caller:
    """Who calls an endpoint that takes either kind of token: a user, or an agent."""

    user_id: str
    """The user, or the owner of the agent's resource."""
    agent: AgentPrincipal | None = None
    """Set when the caller authenticated with an agent token."""


async def any_caller(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    context: Context,
) -> Caller:
    """A user token or an agent token, each checked as its own endpoints check it."""
    token = credentials.credentials.strip() if credentials else ""
    if token.startswith(AGENT_TOKEN_PREFIX):
        agent = await authenticated_agent(credentials, context)
        return Caller(user_id=agent.owner_id, agent=agent)
    return Caller(user_id=await authenticated_user_id(credentials, context))


AnyCaller = Annotated[Caller, Depends(any_caller)]


def load_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "the token's user no longer exists")
    return user
