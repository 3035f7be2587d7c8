"""The current user's profile."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy import bindparam, func, select

from calctra_agent.server_stub._context import Context, UserId, load_user
from calctra_agent.server_stub._db import Resource, User
from calctra_agent.server_stub._errors import ApiError
from calctra_agent.wire import ErrorCode, Message, UpdateProfileRequest, UserProfile

router = APIRouter(prefix="/users", tags=["users"])

# The user and the reputation of their resources in one statement, built once: two statements
# built on every request cost three times the database time, and every client calls /users/me.
_PROFILE = select(
    User.id,
    User.email,
    User.name,
    User.wallet_address,
    User.created_at,
    select(
        func.sum(Resource.reputation * Resource.rating_count)
        / func.nullif(func.sum(Resource.rating_count), 0)
    )
    .where(Resource.owner_id == User.id)
    .scalar_subquery()
    .label("reputation"),
).where(User.id == bindparam("user_id"))


@router.get("/me", response_model=UserProfile)
async def get_me(user_id: UserId, context: Context) -> Response:
    with context.db.read(snapshot=False) as connection:
        row = connection.execute(_PROFILE, {"user_id": user_id}).one_or_none()
    if row is None:
        raise ApiError(ErrorCode.AUTHENTICATION_REQUIRED, "the token's user no longer exists")
    profile = UserProfile(
        id=row.id,
        email=row.email,
        name=row.name,
        wallet_address=row.wallet_address,
        created_at=row.created_at,
        reputation=round(row.reputation or 0.0, 2),
    )
    # Serialized here, as FastAPI would, without the second validation that it would run first.
    return Response(profile.model_dump_json(by_alias=True), media_type="application/json")


@router.put("/me", response_model=Message)
async def update_me(body: UpdateProfileRequest, user_id: UserId, context: Context) -> Message:
    with context.db.transaction() as session:
        user = load_user(session, user_id)
        if body.name is not None:
            user.name = body.name
        if body.wallet_address is not None:
            user.wallet_address = body.wallet_address
    return Message(message="Profile updated successfully")
