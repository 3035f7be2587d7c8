"""The API client against the real reference server: every customer endpoint, typed errors,
rate limits and streamed uploads; and against a scripted loopback server for what the real
one does not do on demand (refuse connections for a while, answer 503 or a proxy's 502, hang)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

import calctra_agent.api_client as api_client
from calctra_agent import wire
from calctra_agent.api_client import CalctraClient
from calctra_agent.errors import (
    ApiUnavailable,
    AuthenticationRequired,
    CalctraError,
    Conflict,
    InsufficientFunds,
    NotFound,
    RateLimited,
    ServerError,
    ValidationFailed,
)
from tests.api_client.scripted_server import Reply, ScriptedServer
from tests.conftest import PASSWORD, Account, LiveServer, MakeAccount, free_port

MiB = 1024 * 1024
BALANCE = {"balance": 5.0, "pendingTransactions": []}


@dataclass(frozen=True)
class Exchange:
    sent_at: float
    method: str
    path: str
    status: int
    reset: float | None


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, recording each request it sends and the answer's status."""

    def __init__(self) -> None:
        super().__init__()
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        sent_at = time.time()
        response = super().handle_request(request)
        reset = response.headers.get("x-ratelimit-reset")
        self.exchanges.append(
            Exchange(
                sent_at,
                request.method,
                request.url.path,
                response.status_code,
                float(reset) if reset else None,
            )
        )
        return response


class MakeClient(Protocol):
    def __call__(self, token: str | None = None) -> CalctraClient: ...


@pytest.fixture
def client_for(server: LiveServer) -> Iterator[MakeClient]:
    """Clients of the session's server (`client_for(token)`), all closed at the end."""
    made: list[CalctraClient] = []

    def make(token: str | None = None) -> CalctraClient:
        client = CalctraClient(server.url, token)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def quick_client(url: str, token: str | None = None, **options: Any) -> CalctraClient:
    """A client whose backoff between retries is a few milliseconds."""
    return CalctraClient(url, token, backoff_base_s=0.01, backoff_max_s=0.05, **options)


def resource_request(**overrides: object) -> wire.ResourceRequest:
    body: dict[str, object] = {
        "name": "Client test node",
        "specs": {"cpuCores": 8, "memoryGb": 32, "storageGb": 500},
        "pricePerHour": 2.0,
    }
    return wire.ResourceRequest.model_validate(body | overrides)


def job_request(**overrides: object) -> wire.JobRequest:
    body: dict[str, object] = {
        "name": "Client test job",
        "code": "print('hello')",
        "requirements": {"minCpuCores": 4096, "estimatedDurationHours": 1},
        "budget": 10.0,
    }
    return wire.JobRequest.model_validate(body | overrides)


def test_public_names_are_exported_and_sorted() -> None:
    assert api_client.__all__ == sorted(api_client.__all__)
    for name in api_client.__all__:
        assert getattr(api_client, name) is not None


# Every customer endpoint, through the client, against the real server


def test_register_login_and_profile_round_trip(client_for: MakeClient) -> None:
    client = client_for()
    email = f"dana-{uuid.uuid4().hex[:10]}@Example.com"
    wallet_address = "FAe4sisG95oZ42w7buUn5qEE4TAnfTTFPiguZUHmhiF"

    registered = client.register(email, PASSWORD, "Dana")
    login = client.login(email, PASSWORD)
    updated = client.update_me(name="Dana Scully", wallet_address=wallet_address)
    profile = client.get_me()

    assert login.user.id == registered.user_id == profile.id
    assert client.token == login.token and login.expires_in > 0
    assert updated.message
    assert profile.email == email.lower()
    assert (profile.name, profile.wallet_address) == ("Dana Scully", wallet_address)


def test_resource_round_trip(client_for: MakeClient, provider: Account) -> None:
    client = client_for(provider.token)

    created = client.create_resource(
        resource_request(specs={"cpuCores": 4093, "memoryGb": 64, "storageGb": 1000})
    )
    listed = client.list_resources(min_cpu=4093, has_gpu=False, max_price=2.0, limit=100)
    client.update_resource(created.resource_id, resource_request(name="Renamed", pricePerHour=3.5))
    fetched = client.get_resource(created.resource_id)
    client.delete_resource(created.resource_id)

    assert created.resource_id in [resource.id for resource in listed.resources]
    assert listed.limit == 100 and listed.total >= 1
    assert (fetched.name, fetched.price_per_hour, fetched.owner) == (
        "Renamed",
        3.5,
        provider.user_id,
    )
    assert fetched.type == wire.ResourceType.CPU
    with pytest.raises(NotFound) as caught:
        client.get_resource(created.resource_id)
    assert caught.value.status_code == 404
    assert caught.value.details == {"resourceId": created.resource_id}


def test_job_round_trip_escrows_and_refunds(client_for: MakeClient, accounts: MakeAccount) -> None:
    client = client_for(accounts("Erin", deposit=100).token)

    created = client.create_job(job_request(budget=25.0))
    balance_escrowed = client.get_balance()
    listed = client.list_jobs(status=wire.JobStatus.CREATED)
    job = client.get_job(created.job_id)
    client.cancel_job(created.job_id)
    cancelled = client.get_job(created.job_id)

    assert [j.id for j in listed.jobs] == [created.job_id]
    assert (job.code, job.budget, job.status) == ("print('hello')", 25.0, wire.JobStatus.CREATED)
    assert balance_escrowed.balance == 75.0
    assert [t.type for t in balance_escrowed.pending_transactions] == [wire.TransactionType.ESCROW]
    assert cancelled.status == wire.JobStatus.CANCELLED
    assert client.get_balance().balance == 100.0
    with pytest.raises(Conflict):
        client.rate_job(created.job_id, 5, "never ran")
    with pytest.raises(Conflict):
        client.cancel_job(created.job_id)


def test_dataset_round_trip(client_for: MakeClient, customer: Account, tmp_path: Path) -> None:
    client = client_for(customer.token)
    path = tmp_path / "sales.csv"
    path.write_bytes(b"id,value\n1,2.5\n")
    kind = f"tabular-{uuid.uuid4().hex[:6]}"

    created = client.upload_dataset(path, name="Sales", type=kind, format="CSV")
    listed = client.list_datasets(type=kind)
    client.update_dataset(created.dataset_id, description="one row", is_public=True)
    fetched = client.get_dataset(created.dataset_id)
    client.delete_dataset(created.dataset_id)

    assert [d.id for d in listed.datasets] == [created.dataset_id]
    assert (fetched.name, fetched.description, fetched.is_public) == ("Sales", "one row", True)
    assert fetched.size == path.stat().st_size
    with pytest.raises(NotFound) as caught:
        client.get_dataset(created.dataset_id)
    assert caught.value.details == {"datasetId": created.dataset_id}


def test_deposit_and_transaction_history(client_for: MakeClient, accounts: MakeAccount) -> None:
    client = client_for(accounts("Frank").token)

    deposit = client.deposit(12.5)
    history = client.list_transactions(type=wire.TransactionType.DEPOSIT)

    assert deposit.balance == 12.5 == client.get_balance().balance
    assert [t.id for t in history.transactions] == [deposit.transaction.id]
    assert history.transactions[0].amount == 12.5
    assert client.list_transactions(type=wire.TransactionType.PAYMENT).total == 0


def test_webhook_round_trip(client_for: MakeClient, customer: Account) -> None:
    client = client_for(customer.token)
    events = [wire.WebhookEvent.JOB_COMPLETED, wire.WebhookEvent.PAYMENT_PROCESSED]

    created = client.register_webhook("http://127.0.0.1:9/hook", events, "s" * 16)
    listed = client.list_webhooks()
    client.delete_webhook(created.webhook_id)

    hook = next(h for h in listed.webhooks if h.id == created.webhook_id)
    assert (hook.url, sorted(hook.events)) == ("http://127.0.0.1:9/hook", sorted(events))
    assert created.webhook_id not in [h.id for h in client.list_webhooks().webhooks]
    with pytest.raises(NotFound):
        client.delete_webhook(created.webhook_id)


# Typed errors


def test_duplicate_email_is_a_conflict(client_for: MakeClient, customer: Account) -> None:
    with pytest.raises(Conflict) as caught:
        client_for().register(customer.email.upper(), PASSWORD, "Carol again")

    assert caught.value.status_code == 409
    assert caught.value.code == "CONFLICT"


def test_missing_or_wrong_credentials_need_authentication(
    client_for: MakeClient, customer: Account
) -> None:
    with pytest.raises(AuthenticationRequired):
        client_for().get_me()
    with pytest.raises(AuthenticationRequired):
        client_for("not-a-token").get_balance()
    with pytest.raises(AuthenticationRequired) as caught:
        client_for().login(customer.email, "wrong password!")
    assert caught.value.status_code == 401


def test_job_over_the_balance_is_insufficient_funds(
    client_for: MakeClient, accounts: MakeAccount
) -> None:
    client = client_for(accounts("Gina", deposit=5).token)

    with pytest.raises(InsufficientFunds) as caught:
        client.create_job(job_request(budget=50.0))

    assert caught.value.status_code == 402
    assert caught.value.details["required"] == 50
    assert caught.value.details["available"] == 5
    assert client.get_balance().balance == 5.0


def test_server_side_validation_is_validation_failed(
    client_for: MakeClient, customer: Account
) -> None:
    past = datetime.now(UTC) - timedelta(days=1)

    with pytest.raises(ValidationFailed) as caught:
        client_for(customer.token).create_job(job_request(deadline=past.isoformat()))

    assert caught.value.status_code == 400
    assert caught.value.details["field"] == "deadline"
    assert "future" in caught.value.message


def test_invalid_body_is_refused_before_sending(server: LiveServer) -> None:
    transport = CountingTransport()
    with CalctraClient(server.url, transport=transport) as client:
        with pytest.raises(ValidationFailed) as caught:
            client.register("hal@example.com", "short", "Hal")

    assert caught.value.details["fields"][0]["field"] == "password"
    assert "not sent" in caught.value.message
    assert transport.exchanges == []


# Transport errors and 5xx: retried where safe, then ApiUnavailable / ServerError


def test_get_waits_for_a_server_that_comes_up(caplog: pytest.LogCaptureFixture) -> None:
    ok = Reply(200, BALANCE)
    started = time.monotonic()
    with ScriptedServer({("GET", "/v1/api/tokens/balance"): [ok]}, start_after_s=1.0) as live:
        with CalctraClient(live.url, max_retries=30, backoff_base_s=0.05, backoff_max_s=0.2) as c:
            with caplog.at_level(logging.INFO, "calctra_agent.api_client"):
                balance = c.get_balance()

    assert balance.balance == 5.0
    assert time.monotonic() - started >= 1.0
    retries = [r.getMessage() for r in caplog.records if "api retry" in r.getMessage()]
    assert retries and "ConnectError" in retries[0] and "of=30" in retries[0]
    assert "path=/api/tokens/balance" in retries[0]
    assert any("api recovered" in r.getMessage() for r in caplog.records)


def test_a_post_that_was_never_delivered_is_sent_again() -> None:
    answer = {"message": "ok", "transaction": _transaction(), "balance": 7.0}
    script = {("POST", "/v1/api/tokens/deposit"): [Reply(201, answer)]}
    with ScriptedServer(script, start_after_s=0.5) as live:
        with CalctraClient(
            live.url, "t", max_retries=30, backoff_base_s=0.05, backoff_max_s=0.2
        ) as client:
            deposit = client.deposit(7.0)

    assert deposit.balance == 7.0
    assert len(live.requests) == 1


def test_unreachable_server_gives_api_unavailable_after_the_retries(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"

    with quick_client(url, max_retries=2) as client:
        with caplog.at_level(logging.WARNING, "calctra_agent.api_client"):
            with pytest.raises(ApiUnavailable) as caught:
                client.get_me()

    assert url in str(caught.value) and "after 3 attempts" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    attempts = [r.getMessage() for r in caplog.records if "api retry" in r.getMessage()]
    assert len(attempts) == 2 and "attempt=2 of=2" in attempts[1]


def test_503_is_retried_until_the_server_answers() -> None:
    unavailable = Reply(503, {"error": {"code": "UNAVAILABLE", "message": "busy"}})
    script = {("GET", "/v1/api/tokens/balance"): [unavailable, unavailable, Reply(200, BALANCE)]}
    with ScriptedServer(script) as live:
        with quick_client(live.url, max_retries=3) as client:
            balance = client.get_balance()

    assert balance.balance == 5.0
    assert len(live.requests) == 3


def test_503_past_the_retries_is_a_server_error() -> None:
    unavailable = Reply(503, {"error": {"code": "UNAVAILABLE", "message": "busy"}})
    with ScriptedServer({("GET", "/v1/api/users/me"): [unavailable]}) as live:
        with quick_client(live.url, max_retries=1) as client:
            with pytest.raises(ServerError) as caught:
                client.get_me()

    assert caught.value.status_code == 503
    assert len(live.requests) == 2


def test_a_job_is_not_created_twice_after_a_503() -> None:
    unavailable = Reply(503, {"error": {"code": "INTERNAL_ERROR", "message": "oops"}})
    with ScriptedServer({("POST", "/v1/api/jobs"): [unavailable]}) as live:
        with quick_client(live.url, max_retries=5) as client:
            with pytest.raises(ServerError):
                client.create_job(job_request())

    assert len(live.requests) == 1


def test_a_proxy_502_page_is_a_clear_server_error() -> None:
    html = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    page = Reply(502, html, {"content-type": "text/html"})
    with ScriptedServer({("GET", "/v1/api/jobs"): [page]}) as live:
        with CalctraClient(live.url, max_retries=0) as client:
            with pytest.raises(ServerError) as caught:
                client.list_jobs()

    assert caught.value.status_code == 502
    assert "GET /api/jobs answered 502 Bad Gateway without a Calctra error envelope" in str(
        caught.value
    )
    assert "<h1>502 Bad Gateway</h1>" in caught.value.message


def test_an_answer_that_is_not_the_model_is_a_server_error() -> None:
    with ScriptedServer({("GET", "/v1/api/users/me"): [Reply(200, {"hello": 1})]}) as live:
        with CalctraClient(live.url) as client:
            with pytest.raises(ServerError, match="cannot read as UserProfile"):
                client.get_me()


def test_a_hanging_server_times_out() -> None:
    slow = Reply(200, BALANCE, delay_s=1.0)
    with ScriptedServer({("POST", "/v1/api/resources"): [slow]}) as live:
        with quick_client(live.url, timeout_s=0.3, max_retries=3) as client:
            started = time.monotonic()
            with pytest.raises(ApiUnavailable, match="ReadTimeout") as caught:
                client.create_resource(resource_request())
            elapsed_s = time.monotonic() - started

    assert elapsed_s < 1.0
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    assert len(live.requests) == 1  # not idempotent: sent once


def test_stopping_ends_a_backoff_at_once() -> None:
    stop = threading.Event()
    stop.set()
    url = f"http://127.0.0.1:{free_port()}/v1"
    with CalctraClient(url, max_retries=5, backoff_base_s=30, backoff_max_s=30, stop=stop) as c:
        started = time.monotonic()
        with pytest.raises(ApiUnavailable, match="stopping"):
            c.get_me()

    assert time.monotonic() - started < 1.0


def test_tokens_and_passwords_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    token, password = "cat_" + "S" * 43, "hunter2-but-longer"
    unavailable = Reply(503, b"")
    login = {"token": token, "expiresIn": 60, "user": {"id": "u", "email": "e", "name": "n"}}
    script = {
        ("POST", "/v1/api/auth/login"): [unavailable, Reply(200, login)],
        ("GET", "/v1/api/users/me"): [unavailable, Reply(401, b"")],
    }
    with ScriptedServer(script) as live, quick_client(live.url, max_retries=2) as client:
        with caplog.at_level(logging.DEBUG):
            client.login("e@example.com", password)
            with pytest.raises(AuthenticationRequired):
                client.get_me()

    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "api retry" in logged
    assert token not in logged and "SSSS" not in logged and password not in logged


# Rate limits


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server allowing 3 requests per user in windows of 2 s."""
    live = LiveServer(
        data_dir=tmp_path_factory.mktemp("client-ratelimit") / "data",
        flags=["--rate-limit", "3", "--rate-limit-window", "2"],
    )
    live.start()
    yield live
    live.stop()


def _user_token(live: LiveServer) -> str:
    with CalctraClient(live.url) as client:
        email = f"ivy-{uuid.uuid4().hex[:10]}@example.com"
        client.register(email, PASSWORD, "Ivy")
        return client.login(email, PASSWORD).token


def test_rate_limited_client_waits_for_the_reset(
    limited: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    transport = CountingTransport()
    with CalctraClient(limited.url, _user_token(limited), transport=transport) as client:
        with caplog.at_level(logging.WARNING, "calctra_agent.api_client"):
            started = time.time()
            profiles = [client.get_me() for _ in range(7)]
            elapsed_s = time.time() - started

    exchanges = transport.exchanges
    refused = [i for i, e in enumerate(exchanges) if e.status == 429]
    assert len(profiles) == 7
    assert 1 <= len(refused) <= 3  # at most one refusal per window: no hammering
    assert len(exchanges) == 7 + len(refused)
    for index in refused:
        reset = exchanges[index].reset
        assert reset is not None
        assert exchanges[index + 1].sent_at >= reset  # waited for the window to end
        assert exchanges[index + 1].sent_at - reset < 1.0  # and not much longer
    first_reset = exchanges[refused[0]].reset
    assert first_reset is not None and elapsed_s >= first_reset - started
    assert any("api rate limited" in r.getMessage() for r in caplog.records)


def test_rate_limit_past_the_max_wait_raises_rate_limited(limited: LiveServer) -> None:
    transport = CountingTransport()
    token = _user_token(limited)
    with CalctraClient(limited.url, token, rate_limit_max_wait_s=0, transport=transport) as c:
        with pytest.raises(RateLimited) as caught:
            for _ in range(10):
                c.get_balance()

    assert caught.value.status_code == 429
    assert "resetAt" in caught.value.details
    assert "past this client's 0.0 s limit" in caught.value.message
    assert transport.exchanges[-1].status == 429  # raised at once, not sent again
    assert sum(e.status == 429 for e in transport.exchanges) == 1


# Uploads


def test_upload_streams_a_large_file_and_the_sha256_matches(
    client_for: MakeClient, customer: Account, tmp_path: Path
) -> None:
    path = tmp_path / "big.bin"
    content = os.urandom(12 * MiB)
    path.write_bytes(content)
    client = client_for(customer.token)
    del content

    tracemalloc.start()
    try:
        created = client.upload_dataset(path, name="Big", type="binary", format="BIN")
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dataset = client.get_dataset(created.dataset_id)

    assert dataset.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert dataset.size == 12 * MiB
    assert peak_bytes < 2 * MiB  # streamed in chunks, never held whole


def test_upload_of_a_missing_file_says_which(client_for: MakeClient, tmp_path: Path) -> None:
    with pytest.raises(CalctraError, match="cannot upload dataset .*missing.csv"):
        client_for("t").upload_dataset(tmp_path / "missing.csv", name="x", type="t", format="f")


# Provider: behaviour of the client that needs no server support


def test_long_poll_outlasts_the_client_timeout() -> None:
    quiet = Reply(200, {"offers": [], "cancelledJobs": []}, delay_s=1.0)
    with ScriptedServer({("GET", "/v1/api/provider/offers"): [quiet]}) as live:
        with CalctraClient(live.url, "cat_x", timeout_s=0.3, max_retries=0) as client:
            batch = client.wait_for_offers(wait_s=1)

    assert batch.offers == [] and batch.cancelled_jobs == []
    assert live.requests[0].query == {"waitS": ["1"]}


def _accepted_job() -> dict[str, object]:
    return {
        "jobId": "job_1",
        "name": "Test job",
        "type": "custom_code",
        "code": "print(1)",
        "requirements": {"estimatedDurationHours": 1},
        "datasets": [],
        "budget": 10,
        "deadline": None,
        "pricePerHour": 2.0,
        "status": "ACCEPTED",
        "acceptedAt": "2030-01-01T00:00:00Z",
    }


def test_accept_with_a_lost_answer_finds_the_job_it_took() -> None:
    script = {
        ("POST", "/v1/api/provider/offers/job_1/accept"): [Reply(503, b"")],
        ("GET", "/v1/api/provider/jobs/job_1"): [Reply(200, _accepted_job())],
    }
    with ScriptedServer(script) as live:
        with quick_client(live.url, "cat_x", max_retries=3) as client:
            job = client.accept_offer("job_1")

    assert (job.job_id, job.code, job.price_per_hour) == ("job_1", "print(1)", 2.0)
    assert [r.method for r in live.requests] == ["POST", "GET"]  # accept sent once


def test_accept_with_a_lost_answer_for_a_job_not_held_raises() -> None:
    script = {("POST", "/v1/api/provider/offers/job_1/accept"): [Reply(503, b"")]}
    with ScriptedServer(script) as live:
        with quick_client(live.url, "cat_x", max_retries=3) as client:
            with pytest.raises(ServerError) as caught:
                client.accept_offer("job_1")

    assert caught.value.status_code == 503
    assert [r.method for r in live.requests] == ["POST", "GET"]


def _transaction() -> dict[str, object]:
    return {
        "id": "tx_1",
        "type": "DEPOSIT",
        "amount": 7.0,
        "status": "COMPLETED",
        "createdAt": "2030-01-01T00:00:00Z",
    }
