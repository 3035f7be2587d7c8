"""Registration and login."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from calctra_agent.server_stub._context import Context
from calctra_agent.server_stub._db import User, new_id
from calctra_agent.server_stub._errors import ApiError
from calctra_agent.server_stub._ledger import open_user_account
from calctra_agent.server_stub._security import hash_password, verify_password
from calctra_agent.wire import (
    ErrorCode,
    LoginRequest,
    LoginResponse,
    RegisterRequest,
    RegisterResponse,
    UserSummary,
)

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/auth", tags=["auth"])


def _email_taken(email: str) -> ApiError:
    return ApiError(
        ErrorCode.CONFLICT,
        "an account with this email already exists; log in instead",
        email=email,
    )


@router.post("/register", response_model=RegisterResponse, status_code=201)
async def register(body: RegisterRequest, context: Context) -> RegisterResponse:
    # argon2 takes tens of milliseconds by design: keep it off the event loop.
    password_hash = await run_in_threadpool(hash_password, body.password)
    user_id = new_id("usr")
    try:
        with context.db.transaction() as session:
            if session.scalar(select(User.id).where(User.email == body.email)):
                raise _email_taken(body.email)
            session.add(
                User(id=user_id, email=body.email, name=body.name, password_hash=password_hash)
            )
            session.flush()
            open_user_account(session, user_id)
    except IntegrityError:
        # Two registrations of one email at once: the unique index decides.
        raise _email_taken(body.email) from None
    logger.info("user registered user_id=%s", user_id)
    return RegisterResponse(message="User registered successfully", user_id=user_id)


@router.post("/login", response_model=LoginResponse)
async def login(body: LoginRequest, context: Context) -> LoginResponse:
    with context.db.transaction() as session:
        user = session.scalar(select(User).where(User.email == body.email.lower()))
    known_hash = user.password_hash if user else None
    if not await run_in_threadpool(verify_password, known_hash, body.password) or user is None:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "wrong email or password")
    token = context.signer.issue(user.id)
    return LoginResponse(
        token=token,
        expires_in=context.signer.ttl_s,
        user=UserSummary(id=user.id, email=user.email, name=user.name),
    )
