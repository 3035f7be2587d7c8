"""Agent tokens: issuing, listing and revoking them, and which endpoints take which token."""

from __future__ import annotations

import hashlib
import re

import httpx

from tests.conftest import Account, LiveServer, MakeAccount, MakeServer, new_account, resource_body
from tests.server_stub.provider_support import assert_error, heartbeat_body, sql


def register_resource(owner: Account) -> str:
    response = owner.http.post("/resources", json=resource_body())
    assert response.status_code == 201, response.text
    return str(response.json()["resourceId"])


def issue(owner: Account, resource_id: str, name: str = "calctra-agent") -> dict[str, str]:
    response = owner.http.post("/agent-tokens", json={"resourceId": resource_id, "name": name})
    assert response.status_code == 201, response.text
    issued: dict[str, str] = response.json()
    return issued


def heartbeat(live: LiveServer, token: str) -> httpx.Response:
    with live.client(token) as agent:
        return agent.post("/provider/heartbeat", json=heartbeat_body())


def test_owner_gets_an_agent_token_for_own_resource(
    server: LiveServer, accounts: MakeAccount
) -> None:
    owner = accounts("Owner Olga")
    resource_id = register_resource(owner)

    issued = issue(owner, resource_id, name="rack-7")

    assert re.fullmatch(r"cat_[A-Za-z0-9_-]{43}", issued["token"])
    assert issued["tokenId"].startswith("tok_")
    assert issued["resourceId"] == resource_id
    assert heartbeat(server, issued["token"]).status_code == 200


def test_server_keeps_only_the_tokens_hash(server: LiveServer, accounts: MakeAccount) -> None:
    owner = accounts("Owner Olga")
    issued = issue(owner, register_resource(owner))

    rows = sql(server, "SELECT * FROM agent_tokens WHERE id = ?", issued["tokenId"])

    assert len(rows) == 1
    assert issued["token"] not in [str(value) for value in rows[0]]
    assert hashlib.sha256(issued["token"].encode()).hexdigest() in rows[0]


def test_listing_shows_the_owners_tokens_without_the_token(
    server: LiveServer, accounts: MakeAccount
) -> None:
    owner, other = accounts("Owner Olga"), accounts("Other Otto")
    resource_id = register_resource(owner)
    first = issue(owner, resource_id, name="first")
    second = issue(owner, resource_id, name="second")
    issue(other, register_resource(other))
    heartbeat(server, first["token"])

    listed = owner.http.get("/agent-tokens").json()["tokens"]

    assert [(t["id"], t["name"], t["revoked"]) for t in listed] == [
        (first["tokenId"], "first", False),
        (second["tokenId"], "second", False),
    ]
    assert all(t["resourceId"] == resource_id for t in listed)
    assert listed[0]["lastUsedAt"] is not None and listed[1]["lastUsedAt"] is None
    assert first["token"] not in str(listed) and second["token"] not in str(listed)


def test_revoked_token_is_refused_at_the_next_request(
    server: LiveServer, accounts: MakeAccount
) -> None:
    owner = accounts("Owner Olga")
    issued = issue(owner, register_resource(owner))
    assert heartbeat(server, issued["token"]).status_code == 200

    revoked = owner.http.delete(f"/agent-tokens/{issued['tokenId']}")

    assert revoked.status_code == 200, revoked.text
    assert_error(heartbeat(server, issued["token"]), 401, "AUTHENTICATION_REQUIRED")
    listed = owner.http.get("/agent-tokens").json()["tokens"]
    assert [t["revoked"] for t in listed] == [True]


def test_revoking_twice_answers_ok(accounts: MakeAccount) -> None:
    owner = accounts("Owner Olga")
    issued = issue(owner, register_resource(owner))

    first = owner.http.delete(f"/agent-tokens/{issued['tokenId']}")
    second = owner.http.delete(f"/agent-tokens/{issued['tokenId']}")

    assert (first.status_code, second.status_code) == (200, 200)


def test_token_for_another_users_resource_is_denied(accounts: MakeAccount) -> None:
    owner, intruder = accounts("Owner Olga"), accounts("Intruder Ivan")
    resource_id = register_resource(owner)

    response = intruder.http.post("/agent-tokens", json={"resourceId": resource_id})

    assert assert_error(response, 403, "PERMISSION_DENIED")["resourceId"] == resource_id
    assert intruder.http.get("/agent-tokens").json()["tokens"] == []


def test_token_for_an_unknown_resource_is_not_found(accounts: MakeAccount) -> None:
    owner = accounts("Owner Olga")

    response = owner.http.post("/agent-tokens", json={"resourceId": "res_missing"})

    assert assert_error(response, 404, "RESOURCE_NOT_FOUND")["resourceId"] == "res_missing"


def test_another_users_token_cannot_be_revoked(server: LiveServer, accounts: MakeAccount) -> None:
    owner, intruder = accounts("Owner Olga"), accounts("Intruder Ivan")
    issued = issue(owner, register_resource(owner))

    denied = intruder.http.delete(f"/agent-tokens/{issued['tokenId']}")
    unknown = intruder.http.delete("/agent-tokens/tok_missing")

    assert_error(denied, 403, "PERMISSION_DENIED")
    assert_error(unknown, 404, "RESOURCE_NOT_FOUND")
    assert heartbeat(server, issued["token"]).status_code == 200


def test_deleting_the_resource_revokes_its_tokens(
    server: LiveServer, accounts: MakeAccount
) -> None:
    owner = accounts("Owner Olga")
    resource_id = register_resource(owner)
    issued = issue(owner, resource_id)
    assert heartbeat(server, issued["token"]).status_code == 200

    assert owner.http.delete(f"/resources/{resource_id}").status_code == 200

    assert_error(heartbeat(server, issued["token"]), 401, "AUTHENTICATION_REQUIRED")
    assert [t["revoked"] for t in owner.http.get("/agent-tokens").json()["tokens"]] == [True]


def test_user_token_is_refused_on_provider_endpoints(accounts: MakeAccount) -> None:
    owner = accounts("Owner Olga")
    register_resource(owner)

    responses = [
        owner.http.post("/provider/heartbeat", json=heartbeat_body()),
        owner.http.get("/provider/offers", params={"waitS": 0}),
        owner.http.get("/provider/jobs"),
    ]

    for response in responses:
        assert_error(response, 401, "AUTHENTICATION_REQUIRED")
        assert "agent token" in response.json()["error"]["message"]


def test_agent_token_is_refused_on_user_endpoints(
    server: LiveServer, accounts: MakeAccount
) -> None:
    owner = accounts("Owner Olga")
    issued = issue(owner, register_resource(owner))

    with server.client(issued["token"]) as agent:
        responses = [
            agent.get("/users/me"),
            agent.get("/tokens/balance"),
            agent.post("/agent-tokens", json={"resourceId": issued["resourceId"]}),
        ]

    for response in responses:
        assert_error(response, 401, "AUTHENTICATION_REQUIRED")
        assert "user token" in response.json()["error"]["message"]


def test_missing_or_made_up_agent_token_is_refused(server: LiveServer) -> None:
    with server.client() as anonymous:
        missing = anonymous.post("/provider/heartbeat", json=heartbeat_body())
    made_up = heartbeat(server, "cat_" + "A" * 43)

    assert_error(missing, 401, "AUTHENTICATION_REQUIRED")
    assert_error(made_up, 401, "AUTHENTICATION_REQUIRED")


def test_agent_tokens_are_rate_limited_per_token_and_made_up_ones_per_address(
    make_server: MakeServer,
) -> None:
    limit = 10
    live = make_server("--rate-limit", str(limit), "--rate-limit-window", "3600")
    owner = new_account(live, "Owner Olga")  # register and log in: 2 requests of the address
    first = issue(owner, register_resource(owner))
    second = issue(owner, register_resource(owner))
    owner.http.close()

    # A token's first request counts against the address, until the server knows the token;
    # every later one against the token.
    with live.client(first["token"]) as agent:
        statuses = [agent.post("/provider/heartbeat", json=heartbeat_body()).status_code
                    for _ in range(limit + 2)]  # fmt: skip
    other = [heartbeat(live, second["token"]).status_code for _ in range(2)]
    made_up = [heartbeat(live, f"cat_{n:043d}").status_code for n in range(limit)]

    assert statuses == [200] * (limit + 1) + [429]
    assert other == [200, 200]
    # Ten different made-up tokens share the address's allowance, which the registration and
    # the first requests above already drew on.
    assert 429 in made_up, made_up
    refused = made_up.index(429)
    assert set(made_up[:refused]) == {401} and set(made_up[refused:]) == {429}
