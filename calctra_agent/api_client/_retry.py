"""When the client sends a request again, and how long it waits first."""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx

RETRYABLE_STATUSES = frozenset({500, 502, 503, 504})

# Sent at all, these may have reached the server and been acted on.
_MAYBE_SENT = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
# The connection never opened, so the server cannot have seen the request.
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

# The window's reset is a whole second on the server's clock; a little past it, the next
# request is sure to land in the new window.
_RESET_MARGIN_S = 0.05


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is sent again.

    `max_retries` bounds the retries after transport errors and 5xx answers; waiting for a
    rate-limit window to reset does not count against it, but all such waits in one call
    together stay within `rate_limit_max_wait_s`.
    """

    max_retries: int = 4
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    rate_limit_max_wait_s: float = 120.0

    def backoff_s(self, retry: int) -> float:
        """The wait before retry number `retry` (from 1): exponential with full jitter."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** (retry - 1))
        return random.uniform(0, ceiling)


def may_retry_transport(exc: httpx.TransportError, idempotent: bool) -> bool:
    """Whether a request that failed with `exc` may be sent again."""
    if isinstance(exc, _NEVER_SENT):
        return True
    return idempotent and isinstance(exc, _MAYBE_SENT)


def rate_limit_wait_s(headers: httpx.Headers, now: float) -> float | None:
    """Seconds until the rate-limit window resets, from a 429's headers; None if they do not
    say.

    X-RateLimit-Reset (epoch seconds) is used when it lies ahead on this machine's clock, and
    Retry-After otherwise. Retry-After also caps the first (plus a second of its rounding), so
    that a clock running behind the server's does not make the client wait for nothing.
    """
    reset = _number(headers.get("x-ratelimit-reset"))
    retry_after = _retry_after_s(headers.get("retry-after"), now)
    if reset is not None and reset > now:
        wait_s = reset - now + _RESET_MARGIN_S
        return wait_s if retry_after is None else min(wait_s, retry_after + 1.0)
    return retry_after


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def _retry_after_s(value: str | None, now: float) -> float | None:
    """Retry-After is either delay seconds or an HTTP date (RFC 9110, section 10.2.3)."""
    seconds = _number(value)
    if seconds is not None:
        return max(seconds, 0.0)
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)
