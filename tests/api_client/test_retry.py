"""How long the client waits: backoff with full jitter, and the rate-limit window's reset."""

from __future__ import annotations

import httpx

from calctra_agent.api_client import RetryPolicy
from calctra_agent.api_client._retry import may_retry_transport, rate_limit_wait_s

NOW = 1_800_000_000.0


def test_backoff_grows_exponentially_within_its_cap_with_full_jitter() -> None:
    policy = RetryPolicy(backoff_base_s=0.5, backoff_max_s=4.0)

    delays = {retry: [policy.backoff_s(retry) for _ in range(500)] for retry in (1, 2, 3, 8)}

    assert all(0 <= d <= 0.5 for d in delays[1])
    assert all(0 <= d <= 1.0 for d in delays[2]) and max(delays[2]) > 0.5
    assert all(0 <= d <= 2.0 for d in delays[3]) and max(delays[3]) > 1.0
    assert all(0 <= d <= 4.0 for d in delays[8]) and max(delays[8]) > 2.0
    assert min(delays[8]) < 1.0  # jittered over the whole range, not bunched at the top


def test_rate_limit_waits_until_the_reset() -> None:
    headers = httpx.Headers({"x-ratelimit-reset": str(int(NOW) + 2), "retry-after": "2"})

    wait_s = rate_limit_wait_s(headers, NOW + 0.5)

    assert wait_s is not None and 1.5 <= wait_s <= 1.6


def test_rate_limit_falls_back_on_retry_after_when_the_reset_has_passed_here() -> None:
    headers = httpx.Headers({"x-ratelimit-reset": str(int(NOW) - 5), "retry-after": "3"})

    assert rate_limit_wait_s(headers, NOW) == 3.0


def test_retry_after_bounds_a_reset_far_ahead_of_a_slow_clock() -> None:
    headers = httpx.Headers({"x-ratelimit-reset": str(int(NOW) + 3600), "retry-after": "2"})

    assert rate_limit_wait_s(headers, NOW) == 3.0


def test_retry_after_as_an_http_date() -> None:
    headers = httpx.Headers({"retry-after": "Fri, 15 Jan 2027 08:00:10 GMT"})

    wait_s = rate_limit_wait_s(headers, NOW)  # NOW is 2027-01-15 08:00:00 UTC

    assert wait_s == 10.0


def test_no_rate_limit_headers_say_nothing() -> None:
    assert rate_limit_wait_s(httpx.Headers({"retry-after": "soon"}), NOW) is None


def test_only_undelivered_requests_are_retried_whatever_their_method() -> None:
    refused = httpx.ConnectError("connection refused")
    lost = httpx.ReadTimeout("timed out")

    assert may_retry_transport(refused, idempotent=False)
    assert may_retry_transport(lost, idempotent=True)
    assert not may_retry_transport(lost, idempotent=False)
    assert not may_retry_transport(httpx.UnsupportedProtocol("ftp"), idempotent=True)
