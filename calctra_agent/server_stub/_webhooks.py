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
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select

from calctra_agent.server_stub._context import ServerContext
from calctra_agent.server_stub._db import Webhook, WebhookDelivery, utcnow

logger = logging.getLogger(__name__)

_MAX_IN_FLIGHT = 50


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


def check_target(url: str, allow_private: bool) -> str | None:
    """Refuse URLs that are not http(s) or whose host resolves to a loopback, private,
    link-local or otherwise non-public address (server-side request forgery). Returns the
    address the check vetted, for the delivery to connect to that one and no other (a host
    whose name resolves anew to a private address in between gains nothing); None when
    private targets are allowed, and the URL is used as it is."""
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
        return None
    addresses = _resolve(parts.hostname, port)
    for address in addresses:
        if not _is_public(address):
            raise UnsafeTarget(
                f"resolves to {address}, a loopback, private or link-local address; "
                "webhooks must reach a public host"
            )
    return str(addresses[0])


@dataclass(frozen=True)
class PinnedRequest:
    """A delivery's URL with its host replaced by the vetted address; the Host header and,
    for https, the TLS server name (and so the certificate's check) stay the host's."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, str]


def pin(url: str, address: str | None) -> PinnedRequest:
    if address is None:
        return PinnedRequest(url, {}, {})
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = f"{literal}:{parts.port}" if parts.port else literal
    host_header = f"[{host}]" if ":" in host else host
    if parts.port:
        host_header = f"{host_header}:{parts.port}"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return PinnedRequest(parts._replace(netloc=netloc).geturl(), {"host": host_header}, extensions)


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if not address.is_global or address.is_multicast:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address reach that address: judge it instead.
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address.teredo:
            embedded.append(address.teredo[1])
        if address in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        return all(_is_public(inner) for inner in embedded if inner is not None)
    return True


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


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


@dataclass(frozen=True)
class _Attempt:
    delivery_id: str
    event: str
    payload: str
    attempts: int
    url: str
    secret: str


class OutboxWorker:
    """Delivers queued events, oldest due first, retrying with exponential backoff and jitter.

    Each delivery runs on its own, so a slow receiver holds up only its own deliveries, and
    records its outcome as soon as it has one: a restart resumes the queue and loses nothing.
    """

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.settings = context.settings
        self._client = httpx.AsyncClient(
            timeout=self.settings.webhook_timeout_s, follow_redirects=False
        )
        self._in_flight: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        while True:
            self.context.outbox_wakeup.clear()
            try:
                self.start_due()
            except Exception:
                logger.exception("webhook outbox pass failed; retrying")
            try:
                await asyncio.wait_for(self.context.outbox_wakeup.wait(), timeout=1.0)
            except TimeoutError:
                pass

    def start_due(self) -> int:
        """Start a delivery task for each due delivery not already in flight."""
        room = _MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return 0
        with self.context.db.transaction() as session:
            rows = session.execute(
                select(WebhookDelivery, Webhook)
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .where(
                    WebhookDelivery.status == "PENDING",
                    WebhookDelivery.next_attempt_at <= utcnow(),
                    WebhookDelivery.id.not_in(list(self._in_flight)),
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(room)
            ).all()
            attempts = [
                _Attempt(d.id, d.event, d.payload, d.attempts, h.url, h.secret) for d, h in rows
            ]
        for attempt in attempts:
            task = asyncio.create_task(self._deliver(attempt))
            self._in_flight[attempt.delivery_id] = task
        return len(attempts)

    async def _deliver(self, attempt: _Attempt) -> None:
        try:
            error = await self._send(attempt.event, attempt.payload, attempt.url, attempt.secret)
            with self.context.db.transaction() as session:
                delivery = session.get(WebhookDelivery, attempt.delivery_id)
                if delivery is not None:
                    self._record(delivery, attempt.attempts + 1, error)
        except Exception:
            logger.exception("webhook delivery failed delivery_id=%s", attempt.delivery_id)
        finally:
            self._in_flight.pop(attempt.delivery_id, None)

    async def _send(self, event: str, payload: str, url: str, secret: str) -> str | None:
        """POST one delivery; returns None on a 2xx answer, else what went wrong."""
        body = payload.encode()
        try:
            # Checked again at each delivery, and the request goes to the address checked.
            address = await asyncio.to_thread(
                check_target, url, self.settings.allow_private_webhooks
            )
            target = pin(url, address)
            response = await self._client.post(
                target.url,
                content=body,
                headers={
                    **target.headers,
                    "content-type": "application/json",
                    "x-calctra-event": event,
                    "x-calctra-signature": sign(secret, int(time.time()), body),
                },
                extensions=target.extensions,
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
        for task in list(self._in_flight.values()):
            task.cancel()
        await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
        await self._client.aclose()
