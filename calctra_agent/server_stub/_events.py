"""Queue webhook events in the durable outbox, inside the caller's transaction."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from calctra_agent.server_stub._db import Webhook, WebhookDelivery, new_id, utcnow
from calctra_agent.wire import WebhookEvent


def emit(session: Session, user_id: str, event: WebhookEvent, data: dict[str, Any]) -> int:
    """Queue one delivery per webhook of `user_id` that subscribes to `event`; returns how many.

    The rows commit or roll back with the change that caused the event, so an event is sent
    if and only if its change happened.
    """
    hooks = session.scalars(select(Webhook).where(Webhook.owner_id == user_id)).all()
    queued = 0
    now = utcnow()
    for hook in hooks:
        if event.value not in hook.events:
            continue
        delivery_id = new_id("dlv")
        payload = {
            "id": delivery_id,
            "event": event.value,
            "createdAt": now.isoformat().replace("+00:00", "Z"),
            "data": data,
        }
        session.add(
            WebhookDelivery(
                id=delivery_id,
                webhook_id=hook.id,
                event=event.value,
                payload=json.dumps(payload, separators=(",", ":")),
                next_attempt_at=now,
                created_at=now,
            )
        )
        queued += 1
    return queued
