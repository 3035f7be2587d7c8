"""Registration, login, and the bearer tokens that every other endpoint checks."""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import PASSWORD, Account, LiveServer, MakeAccount, MakeServer, new_account


def unique_email(prefix: str = "auth") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def register(live: LiveServer, **body: object) -> httpx.Response:
    with live.client() as anonymous:
        return anonymous.post("/auth/register", json=body)


def login(live: LiveServer, email: str, password: str = PASSWORD) -> httpx.Response:
    with live.client() as anonymous:
        return anonymous.post("/auth/login", json={"email": email, "password": password})


def profile_status(live: LiveServer, headers: dict[str, str]) -> httpx.Response:
    with httpx.Client(base_url=f"{live.url}/api", headers=headers, timeout=30.0) as http:
        return http.get("/users/me")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def user_claims(user_id: str, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {"sub": user_id, "iat": now, "exp": now + 3600, "typ": "user"}
    claims.update(overrides)
    return claims


def real_secret(live: LiveServer) -> bytes:
    return bytes.fromhex((live.data_dir / "jwt-secret").read_text().strip())


# Registration


def test_registration_returns_201_and_a_user_id_that_can_log_in(server: LiveServer) -> None:
    email = unique_email()

    registered = register(server, email=email, password=PASSWORD, name="Reg Ina")

    assert registered.status_code == 201, registered.text
    assert registered.json()["message"] == "User registered successfully"
    user_id = registered.json()["userId"]
    assert isinstance(user_id, str) and user_id
    assert login(server, email).json()["user"]["id"] == user_id


@pytest.mark.parametrize(
    "email",
    ["not-an-email", "no-at-sign.example.com", "user@", "@example.com", "user@localhost",
     "two@@example.com", "spaces in@example.com", ""],
)  # fmt: skip
def test_registration_with_an_invalid_email_is_a_validation_error(
    server: LiveServer, email: str
) -> None:
    response = register(server, email=email, password=PASSWORD, name="Bad Email")

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert [f["field"] for f in error["details"]["fields"]] == ["email"]


def test_registration_with_a_password_under_8_characters_creates_nothing(
    server: LiveServer,
) -> None:
    email = unique_email()

    response = register(server, email=email, password="short12", name="Short Pw")

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert [f["field"] for f in error["details"]["fields"]] == ["password"]
    assert "short12" not in response.text
    assert_error(login(server, email, "short12"), 401, "AUTHENTICATION_REQUIRED")
    assert register(server, email=email, password=PASSWORD, name="Short Pw").status_code == 201


@pytest.mark.parametrize("missing", ["email", "password", "name"])
def test_registration_without_a_required_field_names_that_field(
    server: LiveServer, missing: str
) -> None:
    body = {"email": unique_email(), "password": PASSWORD, "name": "Missing Field"}
    del body[missing]

    response = register(server, **body)

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert error["details"]["fields"] == [{"field": missing, "problem": "is required"}]


def test_registration_with_an_empty_body_lists_every_missing_field(server: LiveServer) -> None:
    error = assert_error(register(server), 400, "VALIDATION_ERROR")

    assert {f["field"] for f in error["details"]["fields"]} == {"email", "password", "name"}


@pytest.mark.parametrize(
    ("field", "value"),
    [("email", 12345), ("email", ["a@example.com"]), ("password", 123456789),
     ("password", None), ("name", {"first": "A"}), ("name", True), ("name", "")],
)  # fmt: skip
def test_registration_with_a_wrongly_typed_field_creates_nothing(
    server: LiveServer, field: str, value: object
) -> None:
    body: dict[str, object] = {"email": unique_email(), "password": PASSWORD, "name": "Typed"}
    good = dict(body)
    body[field] = value

    error = assert_error(register(server, **body), 400, "VALIDATION_ERROR")

    assert [f["field"] for f in error["details"]["fields"]] == [field]
    assert register(server, **good).status_code == 201


def test_registration_with_an_unknown_field_is_refused_and_creates_nothing(
    server: LiveServer,
) -> None:
    email = unique_email()

    response = register(server, email=email, password=PASSWORD, name="Extra", role="admin")

    error = assert_error(response, 400, "VALIDATION_ERROR")
    assert error["details"]["fields"] == [{"field": "role", "problem": "is not a known field"}]
    assert_error(login(server, email), 401, "AUTHENTICATION_REQUIRED")


def test_second_registration_with_same_email_is_a_conflict(server: LiveServer) -> None:
    email = unique_email()
    assert register(server, email=email, password=PASSWORD, name="First").status_code == 201

    response = register(server, email=email, password="another password", name="Second")

    error = assert_error(response, 409, "CONFLICT")
    assert error["details"] == {"email": email}
    first = login(server, email)
    assert first.status_code == 200
    assert first.json()["user"]["name"] == "First"
    assert_error(login(server, email, "another password"), 401, "AUTHENTICATION_REQUIRED")


def test_registration_differing_only_in_email_case_is_a_conflict(server: LiveServer) -> None:
    email = unique_email("casey")
    assert register(server, email=email, password=PASSWORD, name="Lower").status_code == 201

    response = register(server, email=email.upper(), password=PASSWORD, name="Upper")

    assert_error(response, 409, "CONFLICT")


def test_concurrent_registrations_of_one_email_create_exactly_one_account(
    server: LiveServer,
) -> None:
    email = unique_email("race")

    with ThreadPoolExecutor(max_workers=5) as pool:
        statuses = sorted(
            pool.map(
                lambda n: register(server, email=email, password=PASSWORD, name=f"R{n}"),
                range(5),
            ),
            key=lambda r: r.status_code,
        )

    assert [r.status_code for r in statuses] == [201, 409, 409, 409, 409]
    assert login(server, email).status_code == 200


def test_email_is_stored_lowercase_and_login_ignores_its_case(server: LiveServer) -> None:
    email = unique_email("MiXeD")
    assert register(server, email=email, password=PASSWORD, name="Mixed").status_code == 201

    response = login(server, email.upper())

    assert response.status_code == 200, response.text
    assert response.json()["user"]["email"] == email.lower()


# Login


def test_login_returns_a_token_its_lifetime_and_the_user(server: LiveServer) -> None:
    email = unique_email()
    user_id = register(server, email=email, password=PASSWORD, name="Log Inna").json()["userId"]

    response = login(server, email)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"token", "expiresIn", "user"}
    assert body["expiresIn"] == 86_400
    assert body["user"] == {"id": user_id, "email": email, "name": "Log Inna"}
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == user_id
    assert claims["exp"] - claims["iat"] == body["expiresIn"]
    assert profile_status(server, {"authorization": f"Bearer {body['token']}"}).status_code == 200


def test_login_with_a_wrong_password_is_refused(server: LiveServer) -> None:
    email = unique_email()
    register(server, email=email, password=PASSWORD, name="Wrong Pw")

    response = login(server, email, PASSWORD + "x")

    error = assert_error(response, 401, "AUTHENTICATION_REQUIRED")
    assert "token" not in response.json()
    assert error["message"] == "wrong email or password"


def test_login_with_an_unknown_email_gets_the_same_answer_as_a_wrong_password(
    server: LiveServer,
) -> None:
    response = login(server, unique_email("nobody"))

    error = assert_error(response, 401, "AUTHENTICATION_REQUIRED")
    assert error["message"] == "wrong email or password"


@pytest.mark.parametrize(
    "body",
    [{}, {"email": "a@example.com"}, {"password": PASSWORD},
     {"email": 1, "password": PASSWORD}, {"email": "a@example.com", "password": 12345678},
     {"email": "a@example.com", "password": PASSWORD, "remember": True}],
)  # fmt: skip
def test_login_with_a_malformed_body_is_a_validation_error(
    server: LiveServer, body: dict[str, object]
) -> None:
    with server.client() as anonymous:
        response = anonymous.post("/auth/login", json=body)

    assert_error(response, 400, "VALIDATION_ERROR")


# Secrets at rest and in logs


def test_password_appears_neither_in_the_server_log_nor_in_the_database(
    server: LiveServer,
) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    email = unique_email()
    assert register(server, email=email, password=password, name="Secret").status_code == 201
    token = login(server, email, password).json()["token"]
    login(server, email, password + "-wrong")

    assert password not in server.log()
    assert token not in server.log()
    stored = [p for p in server.data_dir.iterdir() if p.name.startswith("calctra.db")]
    assert server.data_dir / "calctra.db" in stored
    for path in stored:
        content = path.read_bytes()
        assert password.encode() not in content, path.name
        assert password.encode("utf-16-le") not in content, path.name
    assert any(email.encode() in p.read_bytes() for p in stored), "the user was not stored"


# Tokens


@pytest.fixture
def user(accounts: MakeAccount) -> Account:
    return accounts("Token Tess")


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": ""}, {"authorization": "Bearer"}, {"authorization": "Bearer  x"},
     {"authorization": "Basic dXNlcjpwYXNz"}, {"authorization": "Token abc"},
     {"authorization": "Bearer not-a-jwt"}, {"authorization": "Bearer a.b.c"},
     {"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.e30."}],
)  # fmt: skip
def test_missing_or_malformed_bearer_token_is_refused(
    server: LiveServer, headers: dict[str, str]
) -> None:
    assert_error(profile_status(server, headers), 401, "AUTHENTICATION_REQUIRED")


def test_token_signed_with_another_key_is_refused(server: LiveServer, user: Account) -> None:
    forged = jwt.encode(user_claims(user.user_id), secrets.token_bytes(32), algorithm="HS256")

    response = profile_status(server, {"authorization": f"Bearer {forged}"})

    assert_error(response, 401, "AUTHENTICATION_REQUIRED")


def test_token_with_alg_none_is_refused(server: LiveServer, user: Account) -> None:
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(user_claims(user.user_id)).encode())

    for unsigned in (f"{header}.{payload}.", f"{header}.{payload}"):
        response = profile_status(server, {"authorization": f"Bearer {unsigned}"})
        assert_error(response, 401, "AUTHENTICATION_REQUIRED")


def test_token_with_its_payload_swapped_for_another_user_is_refused(
    server: LiveServer, accounts: MakeAccount
) -> None:
    alice, bob = accounts("Alice"), accounts("Bob")
    header, _, signature = alice.token.split(".")
    payload = b64url(json.dumps(user_claims(bob.user_id)).encode())

    response = profile_status(server, {"authorization": f"Bearer {header}.{payload}.{signature}"})

    assert_error(response, 401, "AUTHENTICATION_REQUIRED")


@pytest.fixture(scope="module")
def private_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server of this module's own, whose signing key the tests read to mint tokens."""
    live = LiveServer(data_dir=tmp_path_factory.mktemp("auth") / "data")
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def private_user_id(private_server: LiveServer) -> str:
    acct = new_account(private_server, "Private Pia")
    acct.http.close()
    return acct.user_id


def test_expired_token_is_refused(private_server: LiveServer, private_user_id: str) -> None:
    past = int(time.time()) - 3600
    claims = user_claims(private_user_id, iat=past - 60, exp=past)
    expired = jwt.encode(claims, real_secret(private_server), algorithm="HS256")
    fresh = jwt.encode(
        user_claims(private_user_id), real_secret(private_server), algorithm="HS256"
    )

    response = profile_status(private_server, {"authorization": f"Bearer {expired}"})

    error = assert_error(response, 401, "AUTHENTICATION_REQUIRED")
    assert "expired" in error["message"]
    # The same key and claims with a future expiry are accepted: the refusal is the expiry's.
    assert profile_status(private_server, {"authorization": f"Bearer {fresh}"}).status_code == 200


@pytest.mark.parametrize(
    "claims",
    [{"typ": "refresh"}, {"typ": None}, {"sub": 42}, {"exp": None}, {"iat": None}],
)
def test_validly_signed_token_with_wrong_claims_is_refused(
    private_server: LiveServer, private_user_id: str, claims: dict[str, object]
) -> None:
    body = {k: v for k, v in user_claims(private_user_id, **claims).items() if v is not None}
    token = jwt.encode(body, real_secret(private_server), algorithm="HS256")

    response = profile_status(private_server, {"authorization": f"Bearer {token}"})

    assert_error(response, 401, "AUTHENTICATION_REQUIRED")


def test_token_for_a_user_that_does_not_exist_is_refused(private_server: LiveServer) -> None:
    secret = real_secret(private_server)
    token = jwt.encode(user_claims("usr_0000000000000000"), secret, algorithm="HS256")

    response = profile_status(private_server, {"authorization": f"Bearer {token}"})

    assert_error(response, 401, "AUTHENTICATION_REQUIRED")


def test_jwt_secret_is_private_and_survives_a_restart(make_server: MakeServer) -> None:
    live = make_server()
    secret_path: Path = live.data_dir / "jwt-secret"
    assert os.stat(secret_path).st_mode & 0o777 == 0o600
    secret_before = secret_path.read_text()
    acct = new_account(live, "Restart Rita")
    acct.http.close()
    assert live.stop() == 0

    live.start()

    assert secret_path.read_text() == secret_before
    assert os.stat(secret_path).st_mode & 0o777 == 0o600
    response = profile_status(live, {"authorization": f"Bearer {acct.token}"})
    assert response.status_code == 200, response.text
    assert response.json()["id"] == acct.user_id
