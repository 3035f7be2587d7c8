"""A restart on the same data dir keeps every user, token, job, resource, balance and queued
webhook delivery."""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from calctra_agent.server_stub._webhooks import verify
from tests.conftest import (
    PASSWORD,
    Account,
    LiveServer,
    MakeAccount,
    MakeServer,
    free_port,
    job_body,
    resource_body,
)

UNMATCHABLE = {
    "minCpuCores": 4096,
    "minMemoryGb": 1_000_000,
    "minStorageGb": 1_000_000,
    "estimatedDurationHours": 1,
}
SECRET = "restart-test-secret-0123456789"


def deliveries(live: LiveServer) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(live.data_dir / "calctra.db", timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute(
            "SELECT id, event, status, attempts, last_error FROM webhook_deliveries ORDER BY id"
        ).fetchall()
    return [dict(row) for row in found]


def wait_until(condition: Any, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval_s)
    return True


def create_job(acct: Account, **overrides: object) -> str:
    response = acct.http.post("/jobs", json=job_body(**overrides))
    assert response.status_code == 201, response.text
    return str(response.json()["jobId"])


def snapshot(live: LiveServer, acct: Account) -> dict[str, Any]:
    """Everything the account can see of its own state, through the API."""
    with live.client(acct.token) as http:
        jobs = http.get("/jobs", params={"limit": 100}).json()
        resources = http.get("/resources", params={"limit": 100}).json()["resources"]
        return {
            "me": http.get("/users/me").json(),
            "balance": http.get("/tokens/balance").json(),
            "transactions": http.get("/tokens/transactions", params={"limit": 100}).json(),
            "jobs": jobs,
            "job details": [http.get(f"/jobs/{job['id']}").json() for job in jobs["jobs"]],
            "own resources": [r for r in resources if r["owner"] == acct.user_id],
        }


def test_users_jobs_resources_and_balances_survive_a_restart(
    make_server: MakeServer, accounts: MakeAccount
) -> None:
    live = make_server("--dev-faucet", "--allow-private-webhooks")
    provider = accounts("Provider Pol", live=live)
    customer = accounts("Customer Cam", deposit=500, live=live)
    provider.http.post("/resources", json=resource_body(name="survivor")).raise_for_status()
    matched = create_job(customer, budget=50)
    create_job(customer, budget=25, requirements=UNMATCHABLE)
    cancelled = create_job(customer, budget=10, requirements=UNMATCHABLE)
    customer.http.post(f"/jobs/{cancelled}/cancel").raise_for_status()
    before = {acct.email: snapshot(live, acct) for acct in (provider, customer)}
    assert before[customer.email]["balance"]["balance"] == 425
    assert [job["status"] for job in before[customer.email]["jobs"]["jobs"]] == [
        "CANCELLED",
        "CREATED",
        "MATCHED",
    ]

    assert live.stop(signal.SIGTERM) == 0
    live.start()

    after = {acct.email: snapshot(live, acct) for acct in (provider, customer)}
    assert after == before
    assert after[customer.email]["job details"][2]["id"] == matched
    with live.client() as anonymous:
        for acct in (provider, customer):
            login = anonymous.post("/auth/login", json={"email": acct.email, "password": PASSWORD})
            assert login.status_code == 200, login.text
            assert login.json()["user"]["id"] == acct.user_id
        again = anonymous.post(
            "/auth/register", json={"email": customer.email, "password": PASSWORD, "name": "Dup"}
        )
        assert again.status_code == 409, again.text
        assert again.json()["error"]["code"] == "CONFLICT"


class _Recorder(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def receiver_on(port: int) -> Iterator[list[tuple[dict[str, str], bytes]]]:
    """An HTTP receiver on a given loopback port that answers 200 and records each POST."""
    handler = type("Recorder", (_Recorder,), {"received": []})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler.received
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_pending_webhook_deliveries_survive_a_restart_and_are_then_delivered(
    make_server: MakeServer, accounts: MakeAccount
) -> None:
    live = make_server("--dev-faucet", "--allow-private-webhooks")
    dead_port = free_port()  # nothing listens here until the receiver starts below
    provider = accounts("Provider Poe", live=live)
    customer = accounts("Customer Cleo", deposit=100, live=live)
    hook = customer.http.post(
        "/webhooks",
        json={
            "url": f"http://127.0.0.1:{dead_port}/hook",
            "events": ["job.matched", "job.cancelled"],
            "secret": SECRET,
        },
    )
    assert hook.status_code == 201, hook.text
    provider.http.post("/resources", json=resource_body()).raise_for_status()
    matched = create_job(customer)  # job.matched
    waiting = create_job(customer, requirements=UNMATCHABLE)
    customer.http.post(f"/jobs/{waiting}/cancel").raise_for_status()  # job.cancelled

    # Let every delivery fail once against the closed port, so each has a retry scheduled.
    assert wait_until(lambda: all(d["attempts"] >= 1 for d in deliveries(live)), 10)
    assert live.stop(signal.SIGTERM) == 0

    queued = deliveries(live)
    assert sorted(d["event"] for d in queued) == ["job.cancelled", "job.matched"]
    assert [d["status"] for d in queued] == ["PENDING", "PENDING"]
    assert all(d["last_error"] for d in queued)

    live.start()
    assert [(d["id"], d["status"]) for d in deliveries(live)] == [
        (d["id"], "PENDING") for d in queued
    ]

    with receiver_on(dead_port) as received:
        # Retries back off from 1 s, doubling per attempt: a few attempts in, the next one is
        # due within about 10 s.
        delivered = wait_until(
            lambda: all(d["status"] == "DELIVERED" for d in deliveries(live)), 30
        )
        assert delivered, deliveries(live)
        requests = list(received)

    payloads = [json.loads(body) for _headers, body in requests]
    assert {payload["id"] for payload in payloads} == {d["id"] for d in queued}
    by_event = {payload["event"]: payload["data"] for payload in payloads}
    assert by_event["job.matched"]["jobId"] == matched
    assert by_event["job.cancelled"]["jobId"] == waiting
    for headers, body in requests:
        assert verify(SECRET, headers["x-calctra-signature"], body)
