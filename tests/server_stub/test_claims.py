"""Claims: a provider's signed request to be paid for a COMPLETED job.

The metered time is what the server observed between the RUNNING and COMPLETED reports, which
a test sends milliseconds apart; `completed_job` therefore writes both instants into the job's
row, so that the payment the test expects is exact.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from solders.keypair import Keypair

from tests.conftest import Account, LiveServer, balance, new_account, resource_body
from tests.server_stub.provider_support import (
    AgentClient,
    Market,
    assert_error,
    ledger_is_consistent,
    run_to_completion,
    set_wallet,
    signed_claim,
    sql,
    start_server,
)
from tests.webhook_receiver import WebhookReceiver

STARTED = "2030-01-01 00:00:00.000000"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from start_server(tmp_path_factory.mktemp("claims") / "data")


@pytest.fixture(scope="module")
def people(live: LiveServer) -> Iterator[tuple[Account, list[Account]]]:
    """A customer and two providers, shared by the module's tests: registering a user costs
    more than most tests. Tests compare balances with those before their own job."""
    buyer = new_account(live, "Customer Carol", deposit=10_000)
    owners = [new_account(live, f"Provider {name}") for name in ("Pat", "Quinn")]
    yield buyer, owners
    for acct in [buyer, *owners]:
        acct.http.close()


@pytest.fixture
def market(live: LiveServer, people: tuple[Account, list[Account]]) -> Iterator[Market]:
    market = Market(live, owners=people[1])
    yield market
    market.close()


@pytest.fixture
def buyer(people: tuple[Account, list[Account]]) -> Account:
    return people[0]


@dataclass
class Sale:
    """A job that the agent ran to COMPLETED for the buyer, and the two balances before it."""

    buyer: Account
    agent: AgentClient
    wallet: Keypair
    job_id: str
    buyer_before: float
    owner_before: float

    def assert_paid(self, payment: float) -> None:
        assert balance(self.agent.owner) == pytest.approx(self.owner_before + payment)
        assert balance(self.buyer) == pytest.approx(self.buyer_before - payment)

    def assert_unpaid(self, live: LiveServer, budget: float = 10) -> None:
        assert balance(self.agent.owner) == pytest.approx(self.owner_before)
        assert balance(self.buyer) == pytest.approx(self.buyer_before - budget)
        rows = sql(live, "SELECT type FROM transactions WHERE related_id = ?", self.job_id)
        assert rows == [("ESCROW",)]


def completed_job(
    market: Market,
    buyer: Account,
    hours: float = 1.5,
    price: float = 2.0,
    budget: float = 10,
) -> Sale:
    """A job run to COMPLETED, metered at `hours`."""
    agent = market.agent(pricePerHour=price)
    wallet = set_wallet(agent.owner)
    before = balance(buyer), balance(agent.owner)
    job_id = market.job(buyer, budget=budget)
    run_to_completion(agent, job_id)
    meter(market.live, job_id, hours)
    return Sale(buyer, agent, wallet, job_id, *before)


def meter(live: LiveServer, job_id: str, hours: float) -> None:
    sql(
        live,
        "UPDATE jobs SET started_at = ?, completed_at = datetime(?, ?) WHERE id = ?",
        STARTED,
        STARTED,
        f"+{hours * 3600:.0f} seconds",
        job_id,
    )


def claim(sale: Sale, body: dict[str, object] | None = None) -> Any:
    body = body or signed_claim(sale.wallet, sale.job_id, sale.agent.resource_id)
    return sale.agent.http.post(f"/provider/jobs/{sale.job_id}/claim", json=body)


def job_transactions(acct: Account, job_id: str) -> list[tuple[str, float, str]]:
    page = acct.http.get("/tokens/transactions", params={"limit": 100}).json()
    return sorted(
        (t["type"], t["amount"], t["status"])
        for t in page["transactions"]
        if t["relatedEntity"] == {"type": "JOB", "id": job_id}
    )


def test_claim_pays_price_times_metered_hours_and_refunds_the_rest(
    market: Market, buyer: Account, live: LiveServer
) -> None:
    sale = completed_job(market, buyer, hours=1.5, price=2.0, budget=10)

    response = claim(sale)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["jobId"] == sale.job_id and answer["meteredHours"] == 1.5
    assert (answer["payment"]["type"], answer["payment"]["amount"]) == ("PAYMENT", 3.0)
    assert (answer["refund"]["type"], answer["refund"]["amount"]) == ("REFUND", 7.0)
    sale.assert_paid(3.0)
    assert job_transactions(sale.agent.owner, sale.job_id) == [("PAYMENT", 3.0, "COMPLETED")]
    assert job_transactions(buyer, sale.job_id) == [
        ("ESCROW", 10.0, "COMPLETED"),
        ("REFUND", 7.0, "COMPLETED"),
    ]
    assert ledger_is_consistent(live)


def test_payment_is_capped_at_the_budget(market: Market, buyer: Account, live: LiveServer) -> None:
    sale = completed_job(market, buyer, hours=10, price=2.0, budget=10)

    answer = claim(sale).json()

    assert answer["payment"]["amount"] == 10.0 and answer["refund"] is None
    sale.assert_paid(10.0)
    assert job_transactions(buyer, sale.job_id) == [("ESCROW", 10.0, "COMPLETED")]
    assert ledger_is_consistent(live)


def test_repeated_claim_answers_the_same_transactions_and_pays_once(
    market: Market, buyer: Account, live: LiveServer
) -> None:
    sale = completed_job(market, buyer)
    first = claim(sale).json()

    again = [claim(sale) for _ in range(2)]

    assert [r.status_code for r in again] == [200, 200]
    assert all(r.json() == first for r in again)
    sale.assert_paid(3.0)
    rows = sql(live, "SELECT type FROM transactions WHERE related_id = ?", sale.job_id)
    assert sorted(rows) == [("ESCROW",), ("PAYMENT",), ("REFUND",)]


def test_both_sides_hear_of_the_payment(market: Market) -> None:
    buyer = market.account("Customer Carol", deposit=100)  # no webhooks from other tests
    sale = completed_job(market, buyer, hours=1)
    with WebhookReceiver() as receiver:
        hook = {"url": receiver.url, "events": ["payment.processed"], "secret": "s" * 16}
        for acct in (buyer, sale.agent.owner):
            assert acct.http.post("/webhooks", json=hook).status_code == 201

        paid = claim(sale).json()
        deliveries = receiver.wait_for(2)
        for acct in (buyer, sale.agent.owner):
            for webhook in acct.http.get("/webhooks").json()["webhooks"]:
                acct.http.delete(f"/webhooks/{webhook['id']}")

    bodies = [json.loads(delivery.body) for delivery in deliveries]
    assert [body["event"] for body in bodies] == ["payment.processed"] * 2
    assert all(body["data"]["jobId"] == sale.job_id for body in bodies)
    assert all(body["data"]["paymentTransactionId"] == paid["payment"]["id"] for body in bodies)
    assert all(body["data"]["amount"] == 2.0 for body in bodies)


def test_claim_signed_by_another_key_is_denied_and_pays_nothing(
    market: Market, buyer: Account, live: LiveServer
) -> None:
    sale = completed_job(market, buyer)
    forged = signed_claim(Keypair(), sale.job_id, sale.agent.resource_id)
    forged["walletAddress"] = str(sale.wallet.pubkey())

    response = claim(sale, forged)

    assert assert_error(response, 403, "PERMISSION_DENIED")["jobId"] == sale.job_id
    sale.assert_unpaid(live)
    assert claim(sale).status_code == 200, "a proper claim still pays"


def test_claim_signed_for_another_job_is_denied(
    market: Market, buyer: Account, live: LiveServer
) -> None:
    sale = completed_job(market, buyer)
    body = signed_claim(sale.wallet, "job_other", sale.agent.resource_id)

    assert_error(claim(sale, body), 403, "PERMISSION_DENIED")
    sale.assert_unpaid(live)


def test_claim_with_a_malformed_signature_is_denied(
    market: Market, buyer: Account, live: LiveServer
) -> None:
    sale = completed_job(market, buyer)
    body = signed_claim(sale.wallet, sale.job_id, sale.agent.resource_id)
    body["signature"] = "not-base58!"

    assert_error(claim(sale, body), 403, "PERMISSION_DENIED")
    sale.assert_unpaid(live)


def test_claim_for_a_wallet_other_than_the_owners_is_denied(
    market: Market, buyer: Account, live: LiveServer
) -> None:
    sale = completed_job(market, buyer)
    body = signed_claim(Keypair(), sale.job_id, sale.agent.resource_id)  # signed by itself

    response = claim(sale, body)

    assert_error(response, 403, "PERMISSION_DENIED")
    assert "walletAddress" in response.json()["error"]["message"]
    sale.assert_unpaid(live)


def test_claim_when_the_owner_has_no_wallet_is_a_conflict(market: Market, buyer: Account) -> None:
    agent = market.agent(owner=market.account("Provider Walletless"))
    job_id = market.job(buyer)
    run_to_completion(agent, job_id)
    body = signed_claim(Keypair(), job_id, agent.resource_id)

    response = agent.http.post(f"/provider/jobs/{job_id}/claim", json=body)

    assert assert_error(response, 409, "CONFLICT")["jobId"] == job_id
    assert "walletAddress" in response.json()["error"]["message"]
    assert balance(agent.owner) == 0


@pytest.mark.parametrize("skew_s", [-601, 601])
def test_claim_with_a_stale_or_future_timestamp_is_denied(
    market: Market, buyer: Account, live: LiveServer, skew_s: int
) -> None:
    sale = completed_job(market, buyer)
    timestamp = int(time.time()) + skew_s
    body = signed_claim(sale.wallet, sale.job_id, sale.agent.resource_id, timestamp)

    response = claim(sale, body)

    details = assert_error(response, 403, "PERMISSION_DENIED")
    assert abs(details["serverTime"] - time.time()) < 5
    sale.assert_unpaid(live)


def test_claim_within_the_allowed_skew_pays(market: Market, buyer: Account) -> None:
    sale = completed_job(market, buyer)
    timestamp = int(time.time()) - 500
    body = signed_claim(sale.wallet, sale.job_id, sale.agent.resource_id, timestamp)

    assert claim(sale, body).status_code == 200
    sale.assert_paid(3.0)


@pytest.mark.parametrize("status", ["ACCEPTED", "RUNNING", "FAILED"])
def test_claim_before_completion_is_a_conflict(
    market: Market, buyer: Account, status: str
) -> None:
    agent = market.agent()
    wallet = set_wallet(agent.owner)
    earned = balance(agent.owner)
    job_id = market.job(buyer)
    agent.accept(job_id)
    if status == "RUNNING":
        agent.report(job_id, "RUNNING")
    if status == "FAILED":
        agent.report(job_id, "FAILED", failure={"reason": "TIMEOUT"})
    body = signed_claim(wallet, job_id, agent.resource_id)

    response = agent.http.post(f"/provider/jobs/{job_id}/claim", json=body)

    assert assert_error(response, 409, "CONFLICT")["status"] == status
    assert balance(agent.owner) == earned


def test_only_the_resource_that_ran_the_job_may_claim_it(
    market: Market, buyer: Account, live: LiveServer
) -> None:
    sale = completed_job(market, buyer)
    other = market.agent(owner=sale.agent.owner)  # the same owner, another machine
    body = signed_claim(sale.wallet, sale.job_id, other.resource_id)

    response = other.http.post(f"/provider/jobs/{sale.job_id}/claim", json=body)

    assert_error(response, 403, "PERMISSION_DENIED")
    sale.assert_unpaid(live)


def test_payment_uses_the_price_fixed_at_accept(market: Market, buyer: Account) -> None:
    agent = market.agent(pricePerHour=2.0)
    wallet = set_wallet(agent.owner)
    before = balance(buyer), balance(agent.owner)
    job_id = market.job(buyer)
    agent.accept(job_id)
    repriced = agent.owner.http.put(
        f"/resources/{agent.resource_id}", json=resource_body(pricePerHour=4.0)
    )
    assert repriced.status_code == 200
    agent.report(job_id, "RUNNING")
    agent.report(job_id, "COMPLETED")
    meter(market.live, job_id, 1)
    sale = Sale(buyer, agent, wallet, job_id, *before)

    assert claim(sale).json()["payment"]["amount"] == 2.0
    sale.assert_paid(2.0)


def test_ledger_stays_consistent_over_many_claims(
    market: Market, buyer: Account, live: LiveServer
) -> None:
    # One after the other: each sale sets its owner's wallet anew, so an older sale's
    # signature would no longer be the owner's.
    amounts = [
        claim(completed_job(market, buyer, hours=0.25 * n)).json()["payment"]["amount"]
        for n in range(1, 4)
    ]

    assert amounts == [0.5, 1.0, 1.5]
    assert ledger_is_consistent(live)


def test_claim_body_must_carry_a_valid_wallet_address(market: Market, buyer: Account) -> None:
    sale = completed_job(market, buyer)
    body = signed_claim(sale.wallet, sale.job_id, sale.agent.resource_id)
    body["walletAddress"] = "not a key"

    assert_error(claim(sale, body), 400, "VALIDATION_ERROR")
