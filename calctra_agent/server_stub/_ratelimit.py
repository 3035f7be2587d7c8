"""Fixed-window rate limiting per user, or per client address where no user is known."""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from calctra_agent.server_stub._agent_tokens import AgentTokenCache
from calctra_agent.server_stub._security import TokenError, TokenSigner
from calctra_agent.wire import AGENT_TOKEN_PREFIX

_AGENT_PREFIX = AGENT_TOKEN_PREFIX.encode()


class RateLimiter:
    """Counts requests per key in fixed windows of `window_s` seconds."""

    def __init__(self, limit: int, window_s: int, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}

    def hit(self, key: str) -> tuple[bool, int, int]:
        """Count one request; returns (allowed, remaining, reset epoch seconds)."""
        now = self._clock()
        window = math.floor(now / self.window_s)
        if window != self._window:
            # A new window forgets every count at once, so memory stays bounded by the keys
            # seen within one window.
            self._window = window
            self._counts = {}
        count = self._counts.get(key, 0) + 1
        self._counts[key] = count
        reset = (window + 1) * self.window_s
        return count <= self.limit, max(self.limit - count, 0), reset


class RateLimitMiddleware:
    """ASGI middleware: adds the X-RateLimit-* headers to every response and answers 429 past
    the limit."""

    def __init__(
        self,
        app: ASGIApp,
        limiter: RateLimiter,
        signer: TokenSigner,
        agent_tokens: AgentTokenCache | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.signer = signer
        self.agent_tokens = agent_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.limiter.limit <= 0:
            await self.app(scope, receive, send)
            return
        allowed, remaining, reset = self.limiter.hit(self._key(scope))
        headers = [
            (b"x-ratelimit-limit", str(self.limiter.limit).encode()),
            (b"x-ratelimit-remaining", str(remaining).encode()),
            (b"x-ratelimit-reset", str(reset).encode()),
        ]
        if not allowed:
            await _too_many_requests(send, headers, reset)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _key(self, scope: Scope) -> str:
        for name, value in scope.get("headers", []):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                if value[7:].strip().startswith(_AGENT_PREFIX):
                    return self._agent_key(value[7:].strip()) or self._address_key(scope)
                try:
                    return "user:" + self.signer.check(value[7:].decode("latin-1")).user_id
                except TokenError:
                    break
        return self._address_key(scope)

    def _agent_key(self, token: bytes) -> str | None:
        # An agent token is keyed by its hash, with no database lookup, once this process
        # knows it for a live token; until then, and for made-up tokens, by address.
        digest = hashlib.sha256(token).hexdigest()
        if self.agent_tokens is None or not self.agent_tokens.knows(digest):
            return None
        return "agent:" + digest[:16]

    @staticmethod
    def _address_key(scope: Scope) -> str:
        client = scope.get("client")
        return "addr:" + (client[0] if client else "unknown")


async def _too_many_requests(send: Send, headers: list[tuple[bytes, bytes]], reset: int) -> None:
    body = json.dumps(
        {
            "error": {
                "code": "RATE_LIMIT_EXCEEDED",
                "message": "too many requests; retry after the time in X-RateLimit-Reset",
                "details": {"resetAt": reset},
            }
        }
    ).encode()
    retry_after = max(int(reset - time.time()), 1)
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": headers
            + [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
