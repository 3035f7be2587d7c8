"""Rate limiting: the X-RateLimit-* headers, 429 past the limit, and what a limit is kept per.

The tests share one server with a limit of 5 requests; each test connects from loopback
addresses of its own (127.0.0.2, 127.0.0.3, ...) and makes its own users, so that no test
spends another's allowance. The windows are fixed and aligned to the epoch; they are an hour
long here so that no window ends in the middle of a test and resets the counts it checks.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, Account, LiveServer, MakeServer, resource_body

LIMIT = 5
WINDOW_S = 3600
_hosts = itertools.count(2)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(
        data_dir=tmp_path_factory.mktemp("ratelimit") / "data",
        flags=["--rate-limit", str(LIMIT), "--rate-limit-window", str(WINDOW_S)],
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def address() -> Iterator[str]:
    """A loopback address that no other test connects from (127.0.0.1 is the harness's)."""
    yield f"127.0.0.{next(_hosts)}"


def client(live: LiveServer, source: str, token: str | None = None) -> httpx.Client:
    """A client that connects from the loopback address `source`."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    transport = httpx.HTTPTransport(local_address=source)
    return httpx.Client(
        base_url=f"{live.url}/api", headers=headers, transport=transport, timeout=30.0
    )


def account(live: LiveServer, source: str, name: str) -> Account:
    """Register and log in from `source`: two of that address's requests."""
    email = f"{name.lower()}-{time.monotonic_ns()}@example.com"
    with client(live, source) as http:
        registered = http.post(
            "/auth/register", json={"email": email, "password": PASSWORD, "name": name}
        )
        assert registered.status_code == 201, registered.text
        login = http.post("/auth/login", json={"email": email, "password": PASSWORD})
        assert login.status_code == 200, login.text
    token = login.json()["token"]
    return Account(registered.json()["userId"], email, token, client(live, source, token))


def rate_headers(response: httpx.Response) -> tuple[int, int, int]:
    headers = response.headers
    return (
        int(headers["x-ratelimit-limit"]),
        int(headers["x-ratelimit-remaining"]),
        int(headers["x-ratelimit-reset"]),
    )


def assert_too_many(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 429, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    limit, remaining, reset = rate_headers(response)
    assert (limit, remaining) == (LIMIT, 0)
    assert body["error"]["details"]["resetAt"] == reset
    assert 1 <= int(response.headers["retry-after"]) <= WINDOW_S
    return body["error"]


def exhaust(http: httpx.Client, path: str) -> httpx.Response:
    """Send requests until one is refused; fail if more than LIMIT get through."""
    for _ in range(LIMIT + 1):
        response = http.get(path)
        if response.status_code == 429:
            return response
    raise AssertionError(f"{LIMIT + 1} requests to {path} got through a limit of {LIMIT}")


def test_every_response_carries_the_rate_limit_headers(live: LiveServer, address: str) -> None:
    with client(live, address) as http:
        responses = [
            http.get("/users/me"),  # 401
            http.get("/no-such-endpoint"),  # 404
            http.post("/auth/login", json={"email": "x@example.com"}),  # 400
            http.get("/openapi.json"),  # 404: the schema lives at /v1, not /v1/api
            http.get(f"{live.url}/openapi.json"),  # 200
        ]

    assert [r.status_code for r in responses] == [401, 404, 400, 404, 200]
    limits, remainings, resets = zip(*(rate_headers(r) for r in responses), strict=True)
    assert set(limits) == {LIMIT}
    assert list(remainings) == [4, 3, 2, 1, 0]
    now = time.time()
    assert len(set(resets)) == 1
    assert now < resets[0] <= now + WINDOW_S


def test_requests_past_the_limit_are_refused_with_429(live: LiveServer, address: str) -> None:
    with client(live, address) as http:
        allowed = [http.get("/users/me") for _ in range(LIMIT)]
        refused = http.get("/users/me")
        register = http.post(
            "/auth/register", json={"email": "late@example.com", "password": PASSWORD, "name": "L"}
        )

    assert {r.status_code for r in allowed} == {401}
    assert_too_many(refused)
    assert_too_many(register)


def test_refused_request_does_nothing(live: LiveServer, address: str) -> None:
    greedy = account(live, address, "Greedy")
    witness = account(live, address, "Witness")
    with greedy.http, witness.http:
        before = witness.http.get("/resources").json()["total"]
        assert_too_many(exhaust(greedy.http, "/users/me"))

        created = greedy.http.post("/resources", json=resource_body())

        assert_too_many(created)
        assert witness.http.get("/resources").json()["total"] == before


def test_limits_are_kept_per_user(live: LiveServer, address: str) -> None:
    alice, bob = account(live, address, "Alice"), account(live, address, "Bob")
    with alice.http, bob.http:
        assert_too_many(exhaust(alice.http, "/users/me"))

        bobs = bob.http.get("/users/me")

        assert bobs.status_code == 200, bobs.text
        assert rate_headers(bobs)[1] == LIMIT - 1
        # Another endpoint does not open a new allowance either.
        assert_too_many(alice.http.get("/tokens/balance"))


def test_auth_endpoints_are_limited_per_client_address(live: LiveServer) -> None:
    first_address, second_address = f"127.0.0.{next(_hosts)}", f"127.0.0.{next(_hosts)}"
    credentials = {"email": "guesser@example.com", "password": "not the password"}

    with client(live, first_address) as first, client(live, second_address) as second:
        guesses = [first.post("/auth/login", json=credentials) for _ in range(LIMIT + 1)]
        other = second.post("/auth/login", json=credentials)

    assert [r.status_code for r in guesses] == [401] * LIMIT + [429]
    assert_too_many(guesses[-1])
    assert other.status_code == 401, other.text
    assert rate_headers(other)[1] == LIMIT - 1


def test_a_signed_in_user_is_not_limited_by_their_address(live: LiveServer, address: str) -> None:
    user = account(live, address, "Busy")
    with user.http, client(live, address) as anonymous:
        assert_too_many(exhaust(anonymous, "/users/me"))

        mine = user.http.get("/users/me")

    assert mine.status_code == 200, mine.text
    assert rate_headers(mine)[1] == LIMIT - 1


def test_made_up_tokens_count_against_the_address(live: LiveServer, address: str) -> None:
    with client(live, address) as http:
        responses = [
            http.get("/users/me", headers={"authorization": f"Bearer forged-{n}"})
            for n in range(LIMIT + 1)
        ]

    # Each new made-up token must not open an allowance of its own.
    assert [r.status_code for r in responses] == [401] * LIMIT + [429]
    assert_too_many(responses[-1])


def test_rate_limit_zero_turns_limiting_off(make_server: MakeServer) -> None:
    server = make_server("--rate-limit", "0")

    with server.client() as http:
        statuses = {http.get("/users/me").status_code for _ in range(30)}
        response = http.get("/users/me")

    assert statuses == {401}
    assert "x-ratelimit-limit" not in response.headers
