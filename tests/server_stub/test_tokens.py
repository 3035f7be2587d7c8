"""Token balances, transaction history, the development faucet and the ledger's invariants."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest

from tests.conftest import (
    Account,
    LiveServer,
    MakeAccount,
    MakeServer,
    assert_error,
    balance,
    job_body,
    new_account,
    resource_body,
)

# Requirements that no resource on the shared server can meet, so that jobs stay CREATED.
UNMATCHABLE = {
    "minCpuCores": 4096,
    "minMemoryGb": 1_000_000,
    "minStorageGb": 1_000_000,
    "estimatedDurationHours": 1,
}


def history(acct: Account, **params: object) -> dict[str, Any]:
    response = acct.http.get("/tokens/transactions", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def deposit(acct: Account, amount: float) -> dict[str, Any]:
    response = acct.http.post("/tokens/deposit", json={"amount": amount})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def create_job(acct: Account, **overrides: object) -> str:
    response = acct.http.post("/jobs", json=job_body(**overrides))
    assert response.status_code == 201, response.text
    return str(response.json()["jobId"])


def rows(live: LiveServer, query: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(live.data_dir / "calctra.db", timeout=30)) as conn:
        return conn.execute(query).fetchall()


# Balance


def test_a_new_account_has_nothing(accounts: MakeAccount) -> None:
    acct = accounts("Newcomer Nia")
    assert acct.http.get("/tokens/balance").json() == {"balance": 0, "pendingTransactions": []}
    assert history(acct) == {"total": 0, "page": 1, "limit": 10, "transactions": []}


def test_balance_shows_what_is_held_in_escrow_as_pending(accounts: MakeAccount) -> None:
    acct = accounts("Holder Hal", deposit=100)
    job_id = create_job(acct, budget=30, requirements=UNMATCHABLE)

    body = acct.http.get("/tokens/balance").json()
    assert body["balance"] == 70
    assert [(tx["type"], tx["status"], tx["amount"]) for tx in body["pendingTransactions"]] == [
        ("ESCROW", "PENDING", 30)
    ]
    assert body["pendingTransactions"][0]["relatedEntity"] == {"type": "JOB", "id": job_id}


def test_balance_needs_a_token(server: LiveServer) -> None:
    with server.client() as anonymous:
        assert_error(anonymous.get("/tokens/balance"), 401, "AUTHENTICATION_REQUIRED")
        assert_error(anonymous.get("/tokens/transactions"), 401, "AUTHENTICATION_REQUIRED")
        response = anonymous.post("/tokens/deposit", json={"amount": 5})
        assert_error(response, 401, "AUTHENTICATION_REQUIRED")


# Transaction history


@pytest.fixture(scope="module")
def trader(server: LiveServer) -> Iterator[tuple[Account, str, str]]:
    """An account with a known history, oldest first: DEPOSIT 100, DEPOSIT 50, ESCROW 10 for
    job A (still open), ESCROW 20 for job B, REFUND 20 when B was cancelled."""
    acct = new_account(server, "Trader Tess")
    deposit(acct, 100)
    deposit(acct, 50)
    job_a = create_job(acct, budget=10, requirements=UNMATCHABLE)
    job_b = create_job(acct, budget=20, requirements=UNMATCHABLE)
    acct.http.post(f"/jobs/{job_b}/cancel").raise_for_status()
    yield acct, job_a, job_b
    acct.http.close()


def summary(page: dict[str, Any]) -> list[tuple[str, float, str]]:
    return [(tx["type"], tx["amount"], tx["status"]) for tx in page["transactions"]]


def test_history_lists_every_movement_newest_first(trader: tuple[Account, str, str]) -> None:
    acct, job_a, job_b = trader
    page = history(acct)

    assert page["total"] == 5
    assert summary(page) == [
        ("REFUND", 20, "COMPLETED"),
        ("ESCROW", 20, "COMPLETED"),
        ("ESCROW", 10, "PENDING"),
        ("DEPOSIT", 50, "COMPLETED"),
        ("DEPOSIT", 100, "COMPLETED"),
    ]
    related = [tx["relatedEntity"] for tx in page["transactions"]]
    assert related[:3] == [{"type": "JOB", "id": job} for job in (job_b, job_b, job_a)]
    assert related[3:] == [None, None]
    assert balance(acct) == 140


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"type": "DEPOSIT"}, [("DEPOSIT", 50, "COMPLETED"), ("DEPOSIT", 100, "COMPLETED")]),
        ({"type": "ESCROW"}, [("ESCROW", 20, "COMPLETED"), ("ESCROW", 10, "PENDING")]),
        ({"type": "REFUND"}, [("REFUND", 20, "COMPLETED")]),
        ({"type": "PAYMENT"}, []),
        ({"status": "PENDING"}, [("ESCROW", 10, "PENDING")]),
        ({"status": "FAILED"}, []),
        ({"type": "ESCROW", "status": "COMPLETED"}, [("ESCROW", 20, "COMPLETED")]),
    ],
)
def test_history_filters_by_type_and_status(
    trader: tuple[Account, str, str],
    params: dict[str, str],
    expected: list[tuple[str, float, str]],
) -> None:
    page = history(trader[0], **params)
    assert summary(page) == expected
    assert page["total"] == len(expected)


def test_history_completed_filter_counts_the_settled_escrow(
    trader: tuple[Account, str, str],
) -> None:
    page = history(trader[0], status="COMPLETED")
    assert page["total"] == 4
    types = [tx["type"] for tx in page["transactions"]]
    assert types == ["REFUND", "ESCROW", "DEPOSIT", "DEPOSIT"]
    assert all(tx["completedAt"] for tx in page["transactions"])


def test_history_pages_keep_the_total_and_cover_everything_once(
    trader: tuple[Account, str, str],
) -> None:
    acct = trader[0]
    everything = [tx["id"] for tx in history(acct)["transactions"]]
    pages = [history(acct, page=page, limit=2) for page in (1, 2, 3, 4)]

    assert [page["total"] for page in pages] == [5, 5, 5, 5]
    assert [(page["page"], page["limit"]) for page in pages] == [(1, 2), (2, 2), (3, 2), (4, 2)]
    assert [len(page["transactions"]) for page in pages] == [2, 2, 1, 0]
    assert [tx["id"] for page in pages for tx in page["transactions"]] == everything


def test_history_limit_is_capped_at_100(trader: tuple[Account, str, str]) -> None:
    page = history(trader[0], limit=5000)
    assert page["limit"] == 100
    assert len(page["transactions"]) == 5


@pytest.mark.parametrize(
    "params",
    [
        {"type": "BONUS"},
        {"type": "deposit"},
        {"status": "DONE"},
        {"page": 0},
        {"page": "first"},
        {"limit": 0},
        {"limit": -1},
    ],
)
def test_history_with_bad_query_is_a_validation_error(
    trader: tuple[Account, str, str], params: dict[str, object]
) -> None:
    response = trader[0].http.get("/tokens/transactions", params=params)
    assert_error(response, 400, "VALIDATION_ERROR")


def test_history_shows_only_the_callers_movements(
    trader: tuple[Account, str, str], accounts: MakeAccount
) -> None:
    other = accounts("Other Ola", deposit=7)
    assert summary(history(other)) == [("DEPOSIT", 7, "COMPLETED")]
    assert history(trader[0])["total"] == 5


# Deposits through the faucet


def test_deposit_answers_201_with_the_transaction_and_new_balance(accounts: MakeAccount) -> None:
    acct = accounts("Saver Sue", deposit=10)
    body = deposit(acct, 12.345678)

    assert body["balance"] == pytest.approx(22.345678, abs=1e-9)
    transaction = body["transaction"]
    assert transaction["type"] == "DEPOSIT"
    assert transaction["status"] == "COMPLETED"
    assert transaction["amount"] == 12.345678
    assert transaction["completedAt"]
    assert balance(acct) == pytest.approx(22.345678, abs=1e-9)
    newest = history(acct, type="DEPOSIT")["transactions"][0]
    assert newest["id"] == transaction["id"]


def test_deposits_of_one_micro_token_and_of_the_maximum_are_accepted(
    accounts: MakeAccount,
) -> None:
    acct = accounts("Edge Eve")
    assert deposit(acct, 0.000001)["balance"] == 0.000001
    assert deposit(acct, 1_000_000_000)["balance"] == 1_000_000_000.000001


@pytest.fixture(scope="module")
def saver(server: LiveServer) -> Iterator[Account]:
    """One account with 250 tokens for all the bad deposits; none may change it."""
    acct = new_account(server, "Saver Sam", deposit=250)
    yield acct
    acct.http.close()


BAD_DEPOSITS: dict[str, bytes] = {
    "zero": b'{"amount": 0}',
    "negative": b'{"amount": -5}',
    "above 1e9": b'{"amount": 1000000001}',
    "below one micro-token": b'{"amount": 0.0000001}',
    "a string": b'{"amount": "10"}',
    "a boolean": b'{"amount": true}',
    "a list": b'{"amount": [10]}',
    "null": b'{"amount": null}',
    "NaN": b'{"amount": NaN}',
    "Infinity": b'{"amount": Infinity}',
    "minus Infinity": b'{"amount": -Infinity}',
    "a 400-digit integer": b'{"amount": 1' + b"0" * 400 + b"}",
    "missing": b"{}",
    "an unknown field": b'{"amount": 5, "currency": "SOL"}',
    "not JSON": b"amount=5",
    "a JSON list": b"[5]",
}


@pytest.mark.parametrize(
    "raw", BAD_DEPOSITS.values(), ids=[name.replace(" ", "-") for name in BAD_DEPOSITS]
)
def test_bad_deposit_is_a_validation_error_and_changes_nothing(saver: Account, raw: bytes) -> None:
    response = saver.http.post(
        "/tokens/deposit", content=raw, headers={"content-type": "application/json"}
    )

    assert_error(response, 400, "VALIDATION_ERROR")
    assert balance(saver) == 250
    assert history(saver)["total"] == 1


def test_deposit_without_the_faucet_is_permission_denied(
    make_server: MakeServer, accounts: MakeAccount
) -> None:
    live = make_server()
    acct = accounts("Hopeful Hugo", live=live)

    response = acct.http.post("/tokens/deposit", json={"amount": 100})
    details = assert_error(response, 403, "PERMISSION_DENIED")
    assert details == {}
    assert balance(acct) == 0
    assert history(acct)["total"] == 0


# The ledger


def test_ledger_balances_sum_to_zero_and_follow_from_the_transactions(
    make_server: MakeServer, accounts: MakeAccount
) -> None:
    live = make_server("--dev-faucet")
    alice = accounts("Alice A", live=live)
    bob = accounts("Bob B", live=live)
    provider = accounts("Provider P", live=live)
    provider.http.post("/resources", json=resource_body()).raise_for_status()

    deposited = 0.0
    for acct, amount in [(alice, 300), (bob, 75.5), (alice, 0.25), (bob, 24.5)]:
        deposit(acct, amount)
        deposited += amount
    matched = create_job(alice, budget=120)
    waiting = create_job(alice, budget=80.25, requirements=UNMATCHABLE)
    bobs = create_job(bob, budget=100)
    assert_error(bob.http.post("/jobs", json=job_body(budget=0.5)), 402, "INSUFFICIENT_FUNDS")
    for acct, job_id in [(alice, matched), (bob, bobs)]:
        acct.http.post(f"/jobs/{job_id}/cancel").raise_for_status()

    accounts_table = dict(rows(live, "SELECT id, balance FROM accounts"))
    kinds = dict(rows(live, "SELECT id, kind FROM accounts"))
    assert sum(accounts_table.values()) == 0
    assert accounts_table["external"] == -round(deposited * 1_000_000)
    negative = [aid for aid, bal in accounts_table.items() if kinds[aid] != "EXTERNAL" and bal < 0]
    assert negative == []

    # Every balance is exactly what its transactions moved in and out.
    moved = {account: 0 for account in accounts_table}
    for debit, credit, amount in rows(
        live, "SELECT debit_account, credit_account, amount FROM transactions"
    ):
        moved[debit] -= amount
        moved[credit] += amount
    assert moved == accounts_table

    assert accounts_table[f"escrow:{waiting}"] == 80_250_000
    assert accounts_table[f"escrow:{matched}"] == 0
    assert accounts_table[f"escrow:{bobs}"] == 0
    assert balance(alice) == pytest.approx(300.25 - 80.25)
    assert balance(bob) == 100
    assert accounts_table[f"user:{alice.user_id}"] == round(balance(alice) * 1_000_000)
