"""Webhook registrations."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from calctra_agent.server_stub._context import Context, UserId
from calctra_agent.server_stub._db import Webhook, new_id, utcnow
from calctra_agent.server_stub._errors import ApiError, not_found, validation_error
from calctra_agent.server_stub._webhooks import UnsafeTarget, check_target
from calctra_agent.wire import ErrorCode, Message, WebhookCreated, WebhookList, WebhookRequest
from calctra_agent.wire import Webhook as WebhookOut

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/webhooks", tags=["webhooks"])

MAX_WEBHOOKS_PER_USER = 20


@router.post("", response_model=WebhookCreated, status_code=201)
async def register_webhook(
    body: WebhookRequest, context: Context, user_id: UserId
) -> WebhookCreated:
    allow_private = context.settings.allow_private_webhooks
    try:
        # Resolving the host can take a while: keep it off the event loop.
        await run_in_threadpool(check_target, body.url, allow_private)
    except UnsafeTarget as exc:
        raise validation_error(f"url {exc}", field="url", url=body.url) from None
    hook = Webhook(
        id=new_id("hook"),
        owner_id=user_id,
        url=body.url,
        events=sorted({event.value for event in body.events}),
        secret=body.secret,
        created_at=utcnow(),
    )
    with context.db.transaction() as session:
        count = len(session.scalars(select(Webhook.id).where(Webhook.owner_id == user_id)).all())
        if count >= MAX_WEBHOOKS_PER_USER:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"a user may register at most {MAX_WEBHOOKS_PER_USER} webhooks; delete one first",
            )
        session.add(hook)
    logger.info("webhook registered webhook_id=%s events=%s", hook.id, ",".join(hook.events))
    return WebhookCreated(webhook_id=hook.id, message="Webhook registered successfully")


@router.get("", response_model=WebhookList)
async def list_webhooks(context: Context, user_id: UserId) -> WebhookList:
    with context.db.transaction() as session:
        rows = session.scalars(
            select(Webhook).where(Webhook.owner_id == user_id).order_by(Webhook.created_at)
        ).all()
        hooks = [
            WebhookOut(id=row.id, url=row.url, events=row.events, created_at=row.created_at)
            for row in rows
        ]
    return WebhookList(webhooks=hooks)


@router.delete("/{webhook_id}", response_model=Message)
async def delete_webhook(webhook_id: str, context: Context, user_id: UserId) -> Message:
    with context.db.transaction() as session:
        hook = session.get(Webhook, webhook_id)
        if hook is None:
            raise not_found("webhook", "webhookId", webhook_id)
        if hook.owner_id != user_id:
            raise ApiError(
                ErrorCode.PERMISSION_DENIED,
                "this webhook belongs to another user",
                webhookId=webhook_id,
            )
        session.delete(hook)
    logger.info("webhook deleted webhook_id=%s", webhook_id)
    return Message(message="Webhook deleted successfully")
