"""The current user's profile."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import bindparam, func, select

from calctra_agent.server_stub._context import Context, UserId, load_user
from calctra_agent.server_stub._db import Resource, User
from calctra_agent.server_stub._errors import ApiError
from calctra_agent.wire import ErrorCode, Message, UpdateProfileRequest, UserProfile

router = APIRouter(prefix="/users", tags=["users"])

# The user and the reputation of their resources in one statement, built once: two statements
# built on every request cost three times the database time, and every client calls /users/me.
_PROFILE = select(
    User,
    select(
        func.sum(Resource.reputation * Resource.rating_count)
        / func.nullif(func.sum(Resource.rating_count), 0)
    )
    .where(Resource.owner_id == User.id)
    .scalar_subquery(),
).where(User.id == bindparam("user_id"))


@router.get("/me", response_model=UserProfile)
async def get_me(user_id: UserId, context: Context) -> UserProfile:
    with context.db.transaction() as session:
        row = session.execute(_PROFILE, {"user_id": user_id}).one_or_none()
    if row is None:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "the token's user no longer exists")
    user, reputation = row
    return UserProfile(
        id=user.id,
        email=user.email,
        name=user.name,
        wallet_address=user.wallet_address,
        created_at=user.created_at,
        reputation=round(reputation or 0.0, 2),
    )


@router.put("/me", response_model=Message)
async def update_me(body: UpdateProfileRequest, user_id: UserId, context: Context) -> Message:
    with context.db.transaction() as session:
        user = load_user(session, user_id)
        if body.name is not None:
            user.name = body.name
        if body.wallet_address is not None:
            user.wallet_address = body.wallet_address
    return Message(message="Profile updated successfully")
