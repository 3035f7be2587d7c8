"""Helpers for the provider protocol's tests: agents with their tokens, jobs, reports, SQL."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from solders.keypair import Keypair

from calctra_agent.wire import claim_message
from tests.conftest import Account, LiveServer, job_body, new_account, resource_body
from tests.webhook_receiver import WebhookReceiver

SERVER_FLAGS = ("--dev-faucet", "--allow-private-webhooks", "--rate-limit", "1000000")


def start_server(data_dir: Path, *flags: str) -> Iterator[LiveServer]:
    """A server of the test module's own, so that no other module's resources are matched to
    its jobs."""
    live = LiveServer(data_dir=data_dir, flags=[*SERVER_FLAGS, *flags])
    live.start()
    yield live
    live.stop()


def sql(live: LiveServer, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Run one statement on the server's SQLite file and commit it."""
    with closing(sqlite3.connect(live.data_dir / "calctra.db", timeout=30)) as conn, conn:
        return conn.execute(statement, params).fetchall()


def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Whether `check()` turns true within `timeout_s`, looking every 50 ms."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check the documented error envelope; returns its details."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    details: dict[str, Any] = error["details"]
    return details


def heartbeat_body(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "agentVersion": "0.1.0",
        "utilization": {
            "cpuPercent": 12.5,
            "memoryUsedGb": 7.1,
            "gpus": [
                {
                    "uuid": "GPU-1",
                    "utilizationPercent": 40,
                    "memoryUsedGb": 3.2,
                    "temperatureC": 61,
                }
            ],
        },
        "runningJobs": [],
    }
    body.update(overrides)
    return body


@dataclass
class AgentClient:
    """One resource and the agent token scoped to it."""

    owner: Account
    resource_id: str
    token_id: str
    token: str
    http: httpx.Client

    def offers(self, wait_s: float = 0) -> dict[str, Any]:
        response = self.http.get("/provider/offers", params={"waitS": wait_s})
        assert response.status_code == 200, response.text
        batch: dict[str, Any] = response.json()
        return batch

    def offered_ids(self) -> list[str]:
        return [offer["jobId"] for offer in self.offers()["offers"]]

    def accept(self, job_id: str) -> dict[str, Any]:
        response = self.http.post(f"/provider/offers/{job_id}/accept")
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    def report(self, job_id: str, status: str, **fields: object) -> httpx.Response:
        return self.http.post(f"/provider/jobs/{job_id}/status", json={"status": status, **fields})

    def heartbeat(self, **overrides: object) -> dict[str, Any]:
        response = self.http.post("/provider/heartbeat", json=heartbeat_body(**overrides))
        assert response.status_code == 200, response.text
        answer: dict[str, Any] = response.json()
        return answer


@dataclass
class Market:
    """Accounts, resources with agents and jobs on one server. At the end it cancels the jobs
    that have not ended and deletes the resources, so that the next test starts from an
    empty market."""

    live: LiveServer
    owners: list[Account] = field(default_factory=list)
    """Accounts that `agent()` registers resources for, in turn; fresh ones when empty."""
    accounts: list[Account] = field(default_factory=list)
    agents: list[AgentClient] = field(default_factory=list)
    jobs: list[tuple[Account, str]] = field(default_factory=list)

    def account(self, name: str = "Test User", deposit: float = 0) -> Account:
        acct = new_account(self.live, name, deposit)
        self.accounts.append(acct)
        return acct

    def agent(self, owner: Account | None = None, **resource: object) -> AgentClient:
        if owner is None and self.owners:
            owner = self.owners[len(self.agents) % len(self.owners)]
        owner = owner or self.account("Provider Pat")
        created = owner.http.post("/resources", json=resource_body(**resource))
        assert created.status_code == 201, created.text
        resource_id = created.json()["resourceId"]
        issued = owner.http.post("/agent-tokens", json={"resourceId": resource_id})
        assert issued.status_code == 201, issued.text
        token = issued.json()["token"]
        agent = AgentClient(
            owner, resource_id, issued.json()["tokenId"], token, self.live.client(token)
        )
        self.agents.append(agent)
        return agent

    def job(self, customer: Account, **overrides: object) -> str:
        response = customer.http.post("/jobs", json=job_body(**overrides))
        assert response.status_code == 201, response.text
        job_id = str(response.json()["jobId"])
        self.jobs.append((customer, job_id))
        return job_id

    def close(self) -> None:
        for customer, job_id in self.jobs:
            customer.http.post(f"/jobs/{job_id}/cancel")
        for agent in self.agents:
            agent.owner.http.delete(f"/resources/{agent.resource_id}")
        self.close_clients()

    def close_clients(self) -> None:
        for agent in self.agents:
            agent.http.close()
        for acct in self.accounts:
            acct.http.close()


def get_job(acct: Account, job_id: str) -> dict[str, Any]:
    response = acct.http.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


def run_to_completion(agent: AgentClient, job_id: str) -> None:
    """Accept an offered job and report it RUNNING, then COMPLETED."""
    agent.accept(job_id)
    assert agent.report(job_id, "RUNNING", progress=10).status_code == 200
    assert agent.report(job_id, "COMPLETED").status_code == 200


def set_wallet(acct: Account) -> Keypair:
    wallet = Keypair()
    response = acct.http.put("/users/me", json={"walletAddress": str(wallet.pubkey())})
    assert response.status_code == 200, response.text
    return wallet


def signed_claim(
    wallet: Keypair, job_id: str, resource_id: str, timestamp: int | None = None
) -> dict[str, object]:
    """A claim body signed by `wallet`, for its own address."""
    address = str(wallet.pubkey())
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = wallet.sign_message(claim_message(job_id, resource_id, address, timestamp))
    return {"walletAddress": address, "timestamp": timestamp, "signature": str(signature)}


def ledger_is_consistent(live: LiveServer) -> bool:
    """Every account's balance sums to zero, and none but the external one is negative."""
    ((total, lowest),) = sql(
        live, "SELECT SUM(balance), MIN(balance) FROM accounts WHERE kind != 'EXTERNAL'"
    )
    ((external,),) = sql(live, "SELECT balance FROM accounts WHERE kind = 'EXTERNAL'")
    return bool(total + external == 0 and lowest >= 0)


@contextmanager
def subscribed(events: list[str], *accounts: Account) -> Iterator[WebhookReceiver]:
    """A receiver that the accounts' webhooks for `events` post to; the webhooks are removed
    at the end, so that later tests' events are not sent to a receiver that is gone."""
    with WebhookReceiver() as receiver:
        hook = {"url": receiver.url, "events": events, "secret": "s" * 16}
        created = []
        for acct in accounts:
            response = acct.http.post("/webhooks", json=hook)
            assert response.status_code == 201, response.text
            created.append((acct, response.json()["webhookId"]))
        try:
            yield receiver
        finally:
            for acct, webhook_id in created:
                acct.http.delete(f"/webhooks/{webhook_id}")
