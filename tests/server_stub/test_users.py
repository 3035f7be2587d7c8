"""The current user's profile: reading it and changing the name and the wallet address."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from solders.keypair import Keypair

from tests.conftest import Account, LiveServer, MakeAccount, new_account


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    return body["error"]


def wallet() -> str:
    return str(Keypair().pubkey())


@pytest.fixture
def user(accounts: MakeAccount) -> Account:
    return accounts("Profile Paula")


@pytest.fixture(scope="module")
def shared_user(server: LiveServer) -> Iterator[Account]:
    """One user for the tests that change nothing, so that they need not pay for argon2."""
    acct = new_account(server, "Shared Sam")
    yield acct
    acct.http.close()


def test_profile_of_a_new_user_has_every_documented_field(user: Account) -> None:
    response = user.http.get("/users/me")

    assert response.status_code == 200, response.text
    profile = response.json()
    assert set(profile) == {"id", "email", "name", "walletAddress", "createdAt", "reputation"}
    assert profile["id"] == user.user_id
    assert profile["email"] == user.email
    assert profile["name"] == "Profile Paula"
    assert profile["walletAddress"] is None
    assert profile["reputation"] == 0
    created = datetime.fromisoformat(profile["createdAt"].replace("Z", "+00:00"))
    assert created.tzinfo is not None
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)


def test_profile_needs_a_token(server: LiveServer) -> None:
    with server.client() as anonymous:
        assert_error(anonymous.get("/users/me"), 401, "AUTHENTICATION_REQUIRED")
        assert_error(
            anonymous.put("/users/me", json={"name": "X"}), 401, "AUTHENTICATION_REQUIRED"
        )


def test_each_user_sees_only_their_own_profile(accounts: MakeAccount) -> None:
    alice, bob = accounts("Alice"), accounts("Bob")

    assert alice.http.get("/users/me").json()["id"] == alice.user_id
    assert bob.http.get("/users/me").json()["id"] == bob.user_id


def test_updating_name_and_wallet_address_is_visible_in_the_profile(user: Account) -> None:
    address = wallet()

    response = user.http.put("/users/me", json={"name": "Paula Smith", "walletAddress": address})

    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Profile updated successfully"}
    profile = user.http.get("/users/me").json()
    assert profile["name"] == "Paula Smith"
    assert profile["walletAddress"] == address
    assert profile["email"] == user.email


def test_updating_only_the_name_keeps_the_wallet_address(user: Account) -> None:
    address = wallet()
    user.http.put("/users/me", json={"walletAddress": address})

    assert user.http.put("/users/me", json={"name": "Renamed"}).status_code == 200

    profile = user.http.get("/users/me").json()
    assert (profile["name"], profile["walletAddress"]) == ("Renamed", address)


def test_wallet_address_can_be_replaced(user: Account) -> None:
    first, second = wallet(), wallet()
    user.http.put("/users/me", json={"walletAddress": first})

    assert user.http.put("/users/me", json={"walletAddress": second}).status_code == 200

    assert user.http.get("/users/me").json()["walletAddress"] == second


@pytest.mark.parametrize(
    "address",
    [
        "soL1abc...",
        "0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl0OIl",  # characters outside base58
        "1" * 31,  # decodes to fewer than 32 bytes
        "1" * 45,  # decodes to more than 32 bytes
        "abc",
        "",
        "9" * 65,  # over the field's maximum length
        " " + str(Keypair().pubkey()),
        str(Keypair().pubkey()) + "\n",
        12345,
        ["11111111111111111111111111111111"],
    ],
)
def test_invalid_wallet_address_is_refused_and_profile_unchanged(
    shared_user: Account, address: object
) -> None:
    user = shared_user
    good = wallet()
    user.http.put("/users/me", json={"name": "Before", "walletAddress": good})
    before = user.http.get("/users/me").json()

    response = user.http.put("/users/me", json={"name": "After", "walletAddress": address})

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert [f["field"] for f in error["details"]["fields"]] == ["walletAddress"]
    assert user.http.get("/users/me").json() == before


@pytest.mark.parametrize(
    "body",
    [
        {"name": ""},
        {"name": "x" * 201},
        {"name": 7},
        {"email": "new@example.com"},
        {"reputation": 5.0},
        {"id": "usr_someoneelse"},
    ],
)
def test_invalid_profile_update_is_refused_and_profile_unchanged(
    shared_user: Account, body: dict[str, object]
) -> None:
    user = shared_user
    before = user.http.get("/users/me").json()

    response = user.http.put("/users/me", json=body)

    assert_error(response, 400, "VALIDATION_ERROR")
    assert user.http.get("/users/me").json() == before


def test_empty_profile_update_changes_nothing(user: Account) -> None:
    before = user.http.get("/users/me").json()

    response = user.http.put("/users/me", json={})

    assert response.status_code == 200, response.text
    assert user.http.get("/users/me").json() == before
