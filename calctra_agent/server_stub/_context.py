"""What every request handler reaches: settings, database, token signer, event outbox."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from calctra_agent.server_stub._db import Database, User
from calctra_agent.server_stub._errors import ApiError
from calctra_agent.server_stub._security import TokenError, TokenSigner
from calctra_agent.server_stub._settings import ServerSettings
from calctra_agent.wire import ErrorCode


@dataclass
class ServerContext:
    settings: ServerSettings
    db: Database
    signer: TokenSigner
    outbox_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    """Set after a transaction that queued webhook deliveries, so the worker sends them now."""


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
    try:
        return context.signer.check(credentials.credentials.strip()).user_id
    except TokenError as exc:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, str(exc)) from None


UserId = Annotated[str, Depends(authenticated_user_id)]


def load_user(session: Session, user_id: str) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "the token's user no longer exists")
    return user
