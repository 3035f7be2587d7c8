"""Webhooks: registration and its refusals, and signed deliveries through the durable outbox
with retries and backoff, received by a real HTTP server on a loopback port."""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime

import httpx
import pytest

from calctra_agent.server_stub import _webhooks
from tests.conftest import (
    Account,
    LiveServer,
    MakeAccount,
    free_port,
    job_body,
    new_account,
    resource_body,
)
from tests.webhook_receiver import Delivery, WebhookReceiver

SECRET = "s3cret-for-webhook-tests"


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server with the default SSRF guard: webhooks must reach public hosts."""
    live = LiveServer(data_dir=tmp_path_factory.mktemp("strict") / "data")
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def refused_owner(server: LiveServer) -> Iterator[Account]:
    """A user of the session server, shared by the validation tests, which never register."""
    owner = new_account(server, "Owner Olga")
    yield owner
    owner.http.close()


@pytest.fixture(scope="module")
def strict_owner(strict_server: LiveServer) -> Iterator[Account]:
    """A user of the strict server, shared by the refusal tests, which never register."""
    owner = new_account(strict_server, "Owner Olga")
    yield owner
    owner.http.close()


@pytest.fixture(scope="module")
def quiet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of this module's own for the timing tests, so that no other test's deliveries
    share its outbox worker."""
    live = LiveServer(
        data_dir=tmp_path_factory.mktemp("quiet") / "data",
        flags=["--dev-faucet", "--allow-private-webhooks", "--rate-limit", "0"],
    )
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def quiet_provider(quiet_server: LiveServer) -> Iterator[Account]:
    """A provider on the quiet server with a resource that every `job_body()` fits."""
    provider = new_account(quiet_server, "Provider Pat")
    created = provider.http.post("/resources", json=resource_body())
    assert created.status_code == 201, created.text
    yield provider
    provider.http.close()


def register(
    account: Account, url: str, events: list[str], secret: str = SECRET
) -> httpx.Response:
    return account.http.post("/webhooks", json={"url": url, "events": events, "secret": secret})


def registered_id(account: Account, url: str, events: list[str]) -> str:
    response = register(account, url, events)
    assert response.status_code == 201, response.text
    return str(response.json()["webhookId"])


def create_job(account: Account) -> str:
    response = account.http.post("/jobs", json=job_body())
    assert response.status_code == 201, response.text
    return str(response.json()["jobId"])


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return dict(error["details"])


def webhook_ids(account: Account) -> list[str]:
    listing = account.http.get("/webhooks")
    assert listing.status_code == 200, listing.text
    return [hook["id"] for hook in listing.json()["webhooks"]]


def deliveries(live: LiveServer, webhook_id: str) -> list[sqlite3.Row]:
    """The outbox rows of one webhook, oldest first, read straight from the server's SQLite."""
    with closing(sqlite3.connect(live.data_dir / "calctra.db")) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = ? ORDER BY created_at",
            (webhook_id,),
        ).fetchall()
    return list(rows)


def wait_for_row(
    live: LiveServer, webhook_id: str, status: str, timeout_s: float = 15.0
) -> sqlite3.Row:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = deliveries(live, webhook_id)
        if rows and rows[0]["status"] == status:
            return rows[0]
        time.sleep(0.05)
    found = [dict(row) for row in rows]
    raise AssertionError(f"delivery of {webhook_id} not {status} in {timeout_s} s: {found}")


def utc(stored: object) -> datetime:
    return datetime.fromisoformat(str(stored)).replace(tzinfo=UTC)


def signature_valid(secret: str, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """The receiver's check, written from the documented scheme and not from the server's."""
    fields = dict(item.split("=", 1) for item in header.split(","))
    timestamp = fields["t"]
    expected = hmac.new(
        secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
    ).hexdigest()
    fresh = abs(time.time() - int(timestamp)) <= tolerance_s
    return fresh and hmac.compare_digest(expected, fields["v1"])


# Registering, listing and deleting


def test_registered_webhook_is_listed_without_its_secret(accounts: MakeAccount) -> None:
    owner, other = accounts("Owner Olga"), accounts("Other Otto")

    response = register(owner, "http://127.0.0.1:9/hook", ["job.matched", "job.failed"])

    assert response.status_code == 201, response.text
    assert response.json()["message"] == "Webhook registered successfully"
    webhook_id = response.json()["webhookId"]
    listing = owner.http.get("/webhooks")
    assert SECRET not in listing.text
    (hook,) = listing.json()["webhooks"]
    assert hook["id"] == webhook_id
    assert hook["url"] == "http://127.0.0.1:9/hook"
    assert sorted(hook["events"]) == ["job.failed", "job.matched"]
    assert hook["createdAt"]
    assert "secret" not in hook
    assert webhook_ids(other) == []


def test_owner_deletes_a_webhook_and_another_user_may_not(accounts: MakeAccount) -> None:
    owner, other = accounts("Owner Olga"), accounts("Other Otto")
    webhook_id = registered_id(owner, "http://127.0.0.1:9/hook", ["job.matched"])

    refused = other.http.delete(f"/webhooks/{webhook_id}")
    assert assert_error(refused, 403, "PERMISSION_DENIED")["webhookId"] == webhook_id
    assert webhook_ids(owner) == [webhook_id]

    deleted = owner.http.delete(f"/webhooks/{webhook_id}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["message"] == "Webhook deleted successfully"
    assert webhook_ids(owner) == []
    again = owner.http.delete(f"/webhooks/{webhook_id}")
    assert assert_error(again, 404, "RESOURCE_NOT_FOUND")["webhookId"] == webhook_id


def test_deleting_an_unknown_webhook_is_not_found(customer: Account) -> None:
    response = customer.http.delete("/webhooks/hook_0000000000000000")

    details = assert_error(response, 404, "RESOURCE_NOT_FOUND")
    assert details["webhookId"] == "hook_0000000000000000"


def test_a_user_may_register_at_most_twenty_webhooks(accounts: MakeAccount) -> None:
    owner = accounts()
    for n in range(20):
        registered_id(owner, f"http://127.0.0.1:9/hook/{n}", ["job.matched"])

    response = register(owner, "http://127.0.0.1:9/hook/extra", ["job.matched"])

    assert_error(response, 409, "CONFLICT")
    assert len(webhook_ids(owner)) == 20


_VALID = {"url": "http://127.0.0.1:9/hook", "events": ["job.matched"], "secret": SECRET}


@pytest.mark.parametrize(
    "body",
    [
        _VALID | {"url": "ftp://127.0.0.1/hook"},
        _VALID | {"url": "file:///etc/passwd"},
        _VALID | {"url": "not a url"},
        _VALID | {"url": "http://"},
        _VALID | {"url": "http://user:pass@127.0.0.1/hook"},
        _VALID | {"url": "http://127.0.0.1:99999/hook"},
        _VALID | {"events": ["job.exploded"]},
        _VALID | {"events": []},
        _VALID | {"events": "job.matched"},
        _VALID | {"secret": "fifteen-chars.."},
        _VALID | {"secret": 1234567890123456789},
        {key: value for key, value in _VALID.items() if key != "url"},
        {key: value for key, value in _VALID.items() if key != "events"},
        {key: value for key, value in _VALID.items() if key != "secret"},
        _VALID | {"active": True},
    ],
    ids=["ftp", "file", "not-a-url", "no-host", "credentials", "bad-port", "unknown-event",
         "no-events", "events-not-a-list", "short-secret", "secret-not-a-string", "no-url",
         "no-events-field", "no-secret", "unknown-field"],
)  # fmt: skip
def test_invalid_registration_is_refused_and_registers_nothing(
    refused_owner: Account, body: dict[str, object]
) -> None:
    response = refused_owner.http.post("/webhooks", json=body)

    assert_error(response, 400, "VALIDATION_ERROR")
    assert webhook_ids(refused_owner) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.1:8080/hook",
        "https://127.1.2.3/hook",
        "http://localhost/",
        "http://LOCALHOST:8000/hook",
        "http://0.0.0.0/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://2130706433/",
    ],
)
def test_webhook_to_a_private_address_is_refused(strict_owner: Account, url: str) -> None:
    response = register(strict_owner, url, ["job.matched"])

    details = assert_error(response, 400, "VALIDATION_ERROR")
    assert details["field"] == "url"
    assert details["url"] == url
    assert webhook_ids(strict_owner) == []


# Deliveries


def test_subscribed_events_arrive_signed_with_the_documented_payload(
    server: LiveServer, provider: Account, customer: Account
) -> None:
    assert provider.http.post("/resources", json=resource_body()).status_code == 201
    with WebhookReceiver() as receiver:
        webhook_id = registered_id(customer, receiver.url, ["job.matched", "job.cancelled"])
        job_id = create_job(customer)
        matched = receiver.wait_for(1)[0]
        assert customer.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        cancelled = receiver.wait_for(2)[1]

    expected = [(matched, "job.matched", "MATCHED"), (cancelled, "job.cancelled", "CANCELLED")]
    for delivery, event, status in expected:
        assert delivery.headers["x-calctra-event"] == event
        assert delivery.headers["content-type"] == "application/json"
        payload = json.loads(delivery.body)
        assert payload["event"] == event
        assert payload["id"]
        assert datetime.fromisoformat(payload["createdAt"]) <= datetime.now(UTC)
        assert payload["data"]["jobId"] == job_id
        assert payload["data"]["status"] == status
    assert json.loads(cancelled.body)["id"] != json.loads(matched.body)["id"]
    outbox_ids = [row["id"] for row in deliveries(server, webhook_id)]
    assert outbox_ids == [json.loads(matched.body)["id"], json.loads(cancelled.body)["id"]]


def assert_signed(delivery: Delivery) -> None:
    header = delivery.headers["x-calctra-signature"]
    assert signature_valid(SECRET, header, delivery.body)
    assert not signature_valid("another-secret-entirely", header, delivery.body)
    assert not signature_valid(SECRET, header, delivery.body + b" ")


def test_delivery_signature_verifies_and_fails_on_tampering_or_age(
    provider: Account, customer: Account
) -> None:
    assert provider.http.post("/resources", json=resource_body()).status_code == 201
    with WebhookReceiver() as receiver:
        registered_id(customer, receiver.url, ["job.matched"])
        create_job(customer)
        delivery = receiver.wait_for(1)[0]

    header = delivery.headers["x-calctra-signature"]
    assert_signed(delivery)
    assert _webhooks.verify(SECRET, header, delivery.body)
    assert not _webhooks.verify(SECRET, header, delivery.body.replace(b"MATCHED", b"MATCHEX"))
    assert not _webhooks.verify("another-secret-entirely", header, delivery.body)
    old = int(time.time()) - 3600
    mac = hmac.new(SECRET.encode(), f"{old}.".encode() + delivery.body, hashlib.sha256)
    old_header = f"t={old},v1={mac.hexdigest()}"
    assert not _webhooks.verify(SECRET, old_header, delivery.body)
    assert _webhooks.verify(SECRET, old_header, delivery.body, tolerance_s=7200)


def test_only_subscribed_events_of_the_owners_jobs_are_delivered(
    server: LiveServer, accounts: MakeAccount, provider: Account, customer: Account
) -> None:
    stranger = accounts("Stranger Sam")
    assert provider.http.post("/resources", json=resource_body()).status_code == 201
    with WebhookReceiver() as receiver:
        cancelled_only = registered_id(customer, receiver.url, ["job.cancelled"])
        completed_only = registered_id(customer, receiver.url, ["job.completed"])
        strangers = registered_id(stranger, receiver.url, ["job.matched", "job.cancelled"])
        job_id = create_job(customer)
        assert customer.http.get(f"/jobs/{job_id}").json()["status"] == "MATCHED"
        assert customer.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        (delivery,) = receiver.wait_for(1)
        wait_for_row(server, cancelled_only, "DELIVERED")
        time.sleep(0.3)  # room for any wrongly queued delivery to arrive
        arrived = list(receiver.deliveries)

    assert [json.loads(d.body)["event"] for d in arrived] == ["job.cancelled"]
    assert delivery.headers["x-calctra-event"] == "job.cancelled"
    assert deliveries(server, completed_only) == []
    assert deliveries(server, strangers) == []


def test_deleted_webhook_gets_no_more_deliveries(
    server: LiveServer, provider: Account, customer: Account
) -> None:
    assert provider.http.post("/resources", json=resource_body()).status_code == 201
    with WebhookReceiver() as receiver:
        webhook_id = registered_id(customer, receiver.url, ["job.matched", "job.cancelled"])
        assert customer.http.delete(f"/webhooks/{webhook_id}").status_code == 200
        job_id = create_job(customer)
        assert customer.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        time.sleep(0.5)
        assert receiver.deliveries == []
    # Events are queued in the transaction that causes them, so no row means no delivery ever.
    assert deliveries(server, webhook_id) == []


# Retries and backoff


def test_failed_delivery_is_retried_until_the_receiver_accepts_it(
    quiet_server: LiveServer, quiet_provider: Account, accounts: MakeAccount
) -> None:
    customer = accounts(deposit=100, live=quiet_server)
    with WebhookReceiver(fail_first=2) as receiver:
        webhook_id = registered_id(customer, receiver.url, ["job.matched"])
        create_job(customer)
        attempts = receiver.wait_for(3)
        row = wait_for_row(quiet_server, webhook_id, "DELIVERED")

    assert row["attempts"] == 3
    assert row["delivered_at"] is not None
    assert row["last_error"] is None
    assert len({delivery.body for delivery in attempts}) == 1, "each retry sends the same event"
    for delivery in attempts:
        assert_signed(delivery)
    first_wait = attempts[1].received_at - attempts[0].received_at
    second_wait = attempts[2].received_at - attempts[1].received_at
    assert first_wait >= 0.8 - 0.05  # 1 s, less 20 % jitter
    assert second_wait >= 1.6 - 0.05  # 2 s, less 20 % jitter


def test_slow_receiver_does_not_slow_the_api(
    quiet_server: LiveServer, quiet_provider: Account, accounts: MakeAccount
) -> None:
    customer = accounts(deposit=100, live=quiet_server)
    with WebhookReceiver(delay_s=3.0) as receiver:
        webhook_id = registered_id(customer, receiver.url, ["job.matched", "job.cancelled"])
        job_id = create_job(customer)
        receiver.wait_for(1)  # the job.matched delivery is now waiting on the receiver

        started = time.monotonic()
        me = customer.http.get("/users/me")
        me_s = time.monotonic() - started
        started = time.monotonic()
        cancelled = customer.http.post(f"/jobs/{job_id}/cancel")
        cancel_s = time.monotonic() - started

        assert deliveries(quiet_server, webhook_id)[0]["status"] == "PENDING", "still in flight"
        assert me.status_code == 200 and cancelled.status_code == 200
        assert me_s < 0.75 and cancel_s < 0.75, f"/users/me {me_s:.2f} s, cancel {cancel_s:.2f} s"
        row = wait_for_row(quiet_server, webhook_id, "DELIVERED", timeout_s=10)
        assert row["attempts"] == 1


def test_unreachable_receiver_is_retried_with_growing_backoff(
    quiet_server: LiveServer, quiet_provider: Account, accounts: MakeAccount
) -> None:
    customer = accounts(deposit=100, live=quiet_server)
    webhook_id = registered_id(customer, f"http://127.0.0.1:{free_port()}/hook", ["job.matched"])
    create_job(customer)

    # For each attempt: when it was recorded, and when the worker scheduled the next one.
    seen: dict[int, tuple[datetime, datetime]] = {}
    deadline = time.monotonic() + 15
    while len(seen) < 3 and time.monotonic() < deadline:
        rows = deliveries(quiet_server, webhook_id)
        if rows and 1 <= rows[0]["attempts"] <= 3:
            observed = (datetime.now(UTC), utc(rows[0]["next_attempt_at"]))
            seen.setdefault(rows[0]["attempts"], observed)
        time.sleep(0.02)

    assert sorted(seen) == [1, 2, 3], f"saw attempts {sorted(seen)} of the first 3"
    row = deliveries(quiet_server, webhook_id)[0]
    assert row["status"] == "PENDING"
    assert "ConnectError" in str(row["last_error"])
    backoff_s = [(seen[n][1] - seen[n][0]).total_seconds() for n in (1, 2, 3)]
    # 1 s, 2 s and 4 s, each ± 20 %; the lower bounds leave room for a slow poll.
    assert 0.5 <= backoff_s[0] <= 1.25, backoff_s
    assert 1.3 <= backoff_s[1] <= 2.45, backoff_s
    assert 2.9 <= backoff_s[2] <= 4.85, backoff_s
    assert seen[1][1] < seen[2][1] < seen[3][1]
