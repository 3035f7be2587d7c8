"""The error envelope on every failure, and the API's own description of itself."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, Account, LiveServer, new_account, resource_body


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    return body["error"]


@pytest.fixture(scope="module")
def user(server: LiveServer) -> Iterator[Account]:
    acct = new_account(server, "Errol Error")
    yield acct
    acct.http.close()


def resource_count(user: Account) -> int:
    count: int = user.http.get("/resources", params={"limit": 1}).json()["total"]
    return count


def email_is_free(server: LiveServer, email: str) -> bool:
    with server.client() as anonymous:
        response = anonymous.post(
            "/auth/register", json={"email": email, "password": PASSWORD, "name": "Later"}
        )
    return response.status_code == 201


# Unknown endpoints and methods


@pytest.mark.parametrize(
    "path",
    ["/v1/api/nope", "/v1/api/resources/res_1/extra", "/v1/api", "/", "/v2/api/auth/login",
     "/v1/api/users/you", "/v1/api/%2e%2e/%2e%2e/etc/passwd"],
)  # fmt: skip
def test_unknown_endpoint_is_not_found_in_the_envelope(
    server: LiveServer, user: Account, path: str
) -> None:
    with httpx.Client(
        base_url=f"http://127.0.0.1:{server.port}",
        headers={"authorization": f"Bearer {user.token}"},
    ) as http:
        response = http.get(path)

    assert_envelope(response, 404, "RESOURCE_NOT_FOUND")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/auth/login", "POST"),
        ("GET", "/auth/register", "POST"),
        ("PUT", "/tokens/balance", "GET"),
        ("GET", "/tokens/deposit", "POST"),
        ("PATCH", "/users/me", None),
        ("PATCH", "/resources", None),
        ("POST", "/resources/res_1", None),
    ],
)
def test_wrong_method_is_method_not_allowed_in_the_envelope(
    user: Account, method: str, path: str, allowed: str | None
) -> None:
    response = user.http.request(method, path, json={})

    assert_envelope(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers.get("allow")
    if allowed is not None:
        assert allowed in response.headers["allow"].split(", ")


# Bodies that are not what the endpoint takes


NOT_AN_OBJECT = ["[1, 2]", "[]", '"a string"', "42", "true", "null"]
NOT_JSON = ['{"email":', "{'email': 'single quotes'}", "{,}", '{"a": 1} trailing', "\x00"]


@pytest.mark.parametrize("raw", NOT_JSON)
def test_malformed_json_body_is_a_validation_error_and_creates_nothing(
    server: LiveServer, raw: str
) -> None:
    email = f"malformed-{uuid.uuid4().hex[:10]}@example.com"
    raw = raw.replace("'email'", f"'{email}'")

    with server.client() as anonymous:
        response = anonymous.post(
            "/auth/register", content=raw, headers={"content-type": "application/json"}
        )

    error = assert_envelope(response, 400, "VALIDATION_ERROR")
    assert error["details"]["fields"] == [
        {"field": "body", "problem": "the body is not valid JSON"}
    ]


@pytest.mark.parametrize("raw", NOT_AN_OBJECT)
def test_json_body_that_is_not_an_object_is_a_validation_error(user: Account, raw: str) -> None:
    before = resource_count(user)

    response = user.http.post(
        "/resources", content=raw, headers={"content-type": "application/json"}
    )

    assert_envelope(response, 400, "VALIDATION_ERROR")
    assert resource_count(user) == before


def test_empty_body_is_a_validation_error(user: Account) -> None:
    response = user.http.post("/resources", headers={"content-type": "application/json"})

    error = assert_envelope(response, 400, "VALIDATION_ERROR")
    assert error["details"]["fields"] == [{"field": "body", "problem": "is required"}]


def test_body_that_is_not_utf8_is_a_validation_error(user: Account) -> None:
    before = resource_count(user)

    response = user.http.post(
        "/resources", content=b"\xff\xfe{\x80}", headers={"content-type": "application/json"}
    )

    assert_envelope(response, 400, "VALIDATION_ERROR")
    assert resource_count(user) == before


def test_deeply_nested_json_is_a_validation_error_not_a_crash(user: Account) -> None:
    before = resource_count(user)
    deep = "[" * 100_000 + "]" * 100_000

    response = user.http.post(
        "/resources", content=deep, headers={"content-type": "application/json"}
    )

    assert_envelope(response, 400, "VALIDATION_ERROR")
    assert resource_count(user) == before
    assert user.http.get("/users/me").status_code == 200


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/xml"],
)  # fmt: skip
def test_json_sent_with_a_non_json_content_type_is_a_validation_error(
    server: LiveServer, content_type: str
) -> None:
    email = f"ctype-{uuid.uuid4().hex[:10]}@example.com"
    body = json.dumps({"email": email, "password": PASSWORD, "name": "Typed"})

    with server.client() as anonymous:
        response = anonymous.post(
            "/auth/register", content=body, headers={"content-type": content_type}
        )

    assert_envelope(response, 400, "VALIDATION_ERROR")
    assert email_is_free(server, email)


def test_form_encoded_login_is_a_validation_error(server: LiveServer) -> None:
    with server.client() as anonymous:
        response = anonymous.post(
            "/auth/login", data={"email": "someone@example.com", "password": PASSWORD}
        )

    assert_envelope(response, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("field", "value"),
    [("email", "e" * 250 + "@example.com"), ("password", "p" * 1025), ("name", "n" * 201),
     ("name", "n" * 1_000_000)],
)  # fmt: skip
def test_registration_strings_over_their_maximum_length_are_refused(
    server: LiveServer, field: str, value: str
) -> None:
    body = {"email": f"long-{uuid.uuid4().hex[:10]}@example.com", "password": PASSWORD,
            "name": "Long"}  # fmt: skip
    email = body["email"]
    body[field] = value

    with server.client() as anonymous:
        response = anonymous.post("/auth/register", json=body)

    error = assert_envelope(response, 400, "VALIDATION_ERROR")
    assert [f["field"] for f in error["details"]["fields"]] == [field]
    assert value not in response.text
    if field != "email":
        assert email_is_free(server, email)


@pytest.mark.parametrize(
    "overrides",
    [{"name": "n" * 201}, {"description": "d" * 5001},
     {"specs": {"cpuCores": 8, "memoryGb": 32, "storageGb": 500, "gpuModel": "g" * 201}},
     {"availability": {"schedule": {"days": [1], "startHour": 0, "endHour": 0},
                       "timezone": "Europe/" + "x" * 64}}],
)  # fmt: skip
def test_resource_strings_over_their_maximum_length_are_refused(
    user: Account, overrides: dict[str, object]
) -> None:
    before = resource_count(user)

    response = user.http.post("/resources", json=resource_body(**overrides))

    assert_envelope(response, 400, "VALIDATION_ERROR")
    assert resource_count(user) == before


def test_validation_error_names_each_bad_field_without_echoing_values(server: LiveServer) -> None:
    secret = f"secret-{uuid.uuid4().hex}"

    with server.client() as anonymous:
        response = anonymous.post(
            "/auth/register", json={"email": secret, "password": "short", "name": ""}
        )

    error = assert_envelope(response, 400, "VALIDATION_ERROR")
    assert {f["field"] for f in error["details"]["fields"]} == {"email", "password", "name"}
    assert all(f["problem"] for f in error["details"]["fields"])
    assert secret not in response.text
    assert '"short"' not in response.text


def test_no_error_response_contains_a_traceback(server: LiveServer, user: Account) -> None:
    with server.client() as anonymous:
        responses = [
            anonymous.get("/users/me"),
            anonymous.post(
                "/auth/login", content=b"{", headers={"content-type": "application/json"}
            ),
            anonymous.post("/auth/login", json={"email": "x@example.com", "password": "wrong"}),
            user.http.get("/resources/res_missing"),
            user.http.get("/resources", params={"page": "x"}),
            user.http.post("/resources", json=resource_body(pricePerHour=float("1e308"))),
            user.http.delete("/auth/register"),
            user.http.get("/nowhere"),
        ]

    for response in responses:
        assert response.status_code >= 400
        assert "Traceback" not in response.text
        assert set(response.json()["error"]) == {"code", "message", "details"}
    assert "Traceback" not in server.log()


# The API's description of itself


ENDPOINTS = {
    "/v1/api/auth/register": {"post"},
    "/v1/api/auth/login": {"post"},
    "/v1/api/users/me": {"get", "put"},
    "/v1/api/resources": {"get", "post"},
    "/v1/api/resources/{resource_id}": {"get", "put", "delete"},
    "/v1/api/jobs": {"get", "post"},
    "/v1/api/jobs/{job_id}": {"get"},
    "/v1/api/jobs/{job_id}/cancel": {"post"},
    "/v1/api/jobs/{job_id}/rate": {"post"},
    "/v1/api/jobs/{job_id}/logs": {"get", "post"},
    "/v1/api/jobs/{job_id}/results": {"get", "post"},
    "/v1/api/data": {"get", "post"},
    "/v1/api/data/{dataset_id}": {"get", "put", "delete"},
    "/v1/api/data/{dataset_id}/content": {"get"},
    "/v1/api/tokens/balance": {"get"},
    "/v1/api/tokens/transactions": {"get"},
    "/v1/api/tokens/deposit": {"post"},
    "/v1/api/webhooks": {"get", "post"},
    "/v1/api/webhooks/{webhook_id}": {"delete"},
    "/v1/api/agent-tokens": {"get", "post"},
    "/v1/api/agent-tokens/{token_id}": {"delete"},
    "/v1/api/provider/heartbeat": {"post"},
    "/v1/api/provider/resource": {"get", "put"},
    "/v1/api/provider/offers": {"get"},
    "/v1/api/provider/offers/{job_id}/accept": {"post"},
    "/v1/api/provider/offers/{job_id}/decline": {"post"},
    "/v1/api/provider/jobs": {"get"},
    "/v1/api/provider/jobs/{job_id}": {"get"},
    "/v1/api/provider/jobs/{job_id}/status": {"post"},
    "/v1/api/provider/jobs/{job_id}/claim": {"post"},
}


@pytest.fixture(scope="module")
def openapi(server: LiveServer) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/openapi.json", timeout=30.0)
    assert response.status_code == 200, response.text
    schema: dict[str, Any] = response.json()
    return schema


def test_openapi_lists_every_endpoint_and_method(openapi: dict[str, Any]) -> None:
    documented = {
        path: {method for method in operations if method != "parameters"}
        for path, operations in openapi["paths"].items()
    }

    assert documented == ENDPOINTS


def test_openapi_describes_the_wire_schemas(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]

    for name in ("RegisterRequest", "LoginRequest", "LoginResponse", "UserProfile",
                 "ResourceRequest", "Resource", "ResourcePage", "Specs", "Availability",
                 "JobRequest", "Job", "JobPage", "Dataset", "Balance", "Transaction",
                 "WebhookRequest", "ErrorEnvelope"):  # fmt: skip
        assert name in schemas, name
    assert set(schemas["Specs"]["properties"]) >= {"cpuCores", "memoryGb", "storageGb"}
    assert set(schemas["LoginResponse"]["properties"]) == {"token", "expiresIn", "user"}
    assert set(schemas["ErrorBody"]["properties"]) == {"code", "message", "details"}


def test_openapi_documents_the_errors_the_server_sends(openapi: dict[str, Any]) -> None:
    envelope = "#/components/schemas/ErrorEnvelope"

    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            where = f"{method.upper()} {path}"
            # Bad requests are answered 400 in the envelope; FastAPI's default 422 never is.
            assert "422" not in responses, where
            error = responses["400"]["content"]["application/json"]["schema"]
            assert error == {"$ref": envelope}, where
    assert "HTTPValidationError" not in openapi["components"]["schemas"]


def test_docs_page_is_served_as_html(server: LiveServer) -> None:
    response = httpx.get(f"{server.url}/docs", timeout=30.0)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "/v1/openapi.json" in response.text
