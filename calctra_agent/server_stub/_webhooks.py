"""Webhook targets, signatures and the outbox worker that delivers events.

A delivery is signed as `X-Calctra-Signature: t=<epoch seconds>,v1=<hex>`, where the hex is
HMAC-SHA256 under the webhook's secret of `<t>.<raw body>`. Receivers recompute it and refuse
an old `t`, which stops replays.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import random
import socket
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select

from calctra_agent.server_stub._context import ServerContext
from calctra_agent.server_stub._db import Webhook, WebhookDelivery, utcnow

logger = logging.getLogger(__name__)

_BATCH = 20


class UnsafeTarget(ValueError):
    """A webhook URL that is malformed or points into a private network."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """Check a signature header as a receiver should: the MAC, and the timestamp's age."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def check_target(url: str, allow_private: bool) -> None:
    """Refuse URLs that are not http(s) or whose host resolves to a loopback, private,
    link-local or otherwise non-public address (server-side request forgery)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeTarget("must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise UnsafeTarget("must not carry a user name or password")
    try:
        port = parts.port
    except ValueError:
        raise UnsafeTarget("has an invalid port") from None
    if allow_private:
        return
    for address in _resolve(parts.hostname, port):
        if not address.is_global or address.is_multicast:
            raise UnsafeTarget(
                f"resolves to {address}, a loopback, private or link-local address; "
                "webhooks must reach a public host"
            )


def _resolve(host: str, port: int | None) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UnsafeTarget(f"its host {host!r} does not resolve") from None
    return [ipaddress.ip_address(info[4][0]) for info in infos]


class OutboxWorker:
    """Delivers queued events, oldest due first, retrying with exponential backoff and jitter.
    Each delivery's outcome is written back before the next batch, so a restart resumes where
    the worker stopped and loses nothing."""

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.settings = context.settings
        self._client = httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_s, follow_redirects=False
        )

    async def run(self) -> None:
        while True:
            try:
                sent = await self.deliver_due()
            except Exception:
                logger.exception("webhook delivery pass failed; retrying")
                sent = 0
            if sent == _BATCH:
                continue
            self.context.outbox_wakeup.clear()
            try:
                await asyncio.wait_for(self.context.outbox_wakeup.wait(), timeout=1.0)
            except TimeoutError:
                pass

    async def deliver_due(self) -> int:
        with self.context.db.transaction() as session:
            rows = session.execute(
                select(WebhookDelivery, Webhook)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(
                    WebhookDelivery.status == "PENDING",
                    WebhookDelivery.next_attempt_at <= utcnow(),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(_BATCH)
            ).all()
            work = [(d.id, d.event, d.payload, d.attempts, h.url, h.secret) for d, h in rows]
        outcomes = await asyncio.gather(*(self._send(*item[1:3], *item[4:]) for item in work))
        with self.context.db.transaction() as session:
            for (delivery_id, _event, _payload, attempts, *_), error in zip(
                work, outcomes, strict=True
            ):
                delivery = session.get(WebhookDelivery, delivery_id)
                if delivery is not None:
                    self._record(delivery, attempts + 1, error)
        return len(work)

    async def _send(self, event: str, payload: str, url: str, secret: str) -> str | None:
        """POST one delivery; returns None on a 2xx answer, else what went wrong."""
        body = payload.encode()
        try:
            check_target(url, self.settings.allow_private_webhooks)
            response = await self._client.post(
                url,
                content=body,
                headers={
                    "content-type": "application/json",
                    "x-calctra-event": event,
                    "x-calctra-signature": sign(secret, int(time.time()), body),
                },
            )
        except (httpx.HTTPError, UnsafeTarget) as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"the receiver answered HTTP {response.status_code}"

    def _record(self, delivery: WebhookDelivery, attempts: int, error: str | None) -> None:
        delivery.attempts = attempts
        if error is None:
            delivery.status = "DELIVERED"
            delivery.delivered_at = utcnow()
            delivery.last_error = None
            logger.info("webhook delivered delivery_id=%s event=%s", delivery.id, delivery.event)
            return
        delivery.last_error = error[:1000]
        if attempts >= self.settings.webhook_max_attempts:
            delivery.status = "FAILED"
            logger.warning(
                "webhook abandoned delivery_id=%s attempts=%d error=%s",
                delivery.id,
                attempts,
                error,
            )
            return
        backoff = min(
            self.settings.webhook_backoff_base_s * 2 ** (attempts - 1),
            self.settings.webhook_backoff_max_s,
        )
        delivery.next_attempt_at = utcnow() + timedelta(seconds=backoff * random.uniform(0.8, 1.2))
        logger.info(
            "webhook retry scheduled delivery_id=%s attempt=%d in_s=%.1f error=%s",
            delivery.id,
            attempts,
            backoff,
            error,
        )

    async def close(self) -> None:
        await self._client.aclose()
