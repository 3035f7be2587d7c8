"""The synchronous client of the Calctra API, customer and provider side."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from calctra_agent import __version__, wire
from calctra_agent.api_client._retry import (
    RETRYABLE_STATUSES,
    RetryPolicy,
    may_retry_transport,
    rate_limit_wait_s,
)
from calctra_agent.errors import (
    ApiError,
    ApiUnavailable,
    CalctraError,
    ConfigError,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    ValidationFailed,
    api_error,
)

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=wire.RequestModel)

DEFAULT_TIMEOUT_S = 30.0
MAX_OFFER_WAIT_S = 60.0
"""The longest long poll the server holds open (docs/provider-protocol.md)."""

_SNIPPET_CHARS = 200
_CHUNK_BYTES = 64 * 1024
_RATE_LIMIT_FALLBACK_S = 1.0
"""The wait after a 429 whose headers do not say when the window resets."""
# For error answers without an envelope (a proxy's page, say): the status alone still says
# which of these it is.
_CODE_BY_STATUS = {
    401: wire.ErrorCode.AUTHENTICATION_REQUIRED.value,
    403: wire.ErrorCode.PERMISSION_DENIED.value,
    404: wire.ErrorCode.RESOURCE_NOT_FOUND.value,
    429: wire.ErrorCode.RATE_LIMIT_EXCEEDED.value,
}


@dataclass
class _Call:
    """One logical request, which the retry loop may send several times."""

    method: str
    path: str
    idempotent: bool
    json: Any = None
    params: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, Any] | None = None
    content: Any = None
    """A raw body: bytes, or an iterable of bytes that each send reads from its start."""
    headers: dict[str, str] | None = None
    stream: bool = False
    """Leave the body of a successful answer unread, for the caller to stream."""
    timeout: httpx.Timeout | None = None
    retries: int = 0
    rate_waited_s: float = 0.0

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


class CalctraClient:
    """A client of the Calctra API at `base_url` (which includes the version, such as
    `http://127.0.0.1:8080/v1`).

    Every method sends one request and answers the wire model of the response; an error answer
    raises the typed `ApiError` of its code, and a platform that cannot be reached raises
    `ApiUnavailable`. Each request has a timeout (`timeout_s`, extended for the long poll).

    Retries. A request that never reached the server (connection refused, connect timeout) is
    sent again whatever its method. A request that may have reached it (a read timeout, a
    dropped connection, a 5xx answer) is sent again only when sending it twice does no harm:
    GET, PUT and DELETE, login, heartbeats, declines, status reports, claims, log appends and
    result uploads (whose file is read again from its start); a download whose body breaks off
    is fetched again. Creating a resource, a job, a dataset, a deposit, a webhook or an agent
    token, cancelling and rating are sent once. Accepting an offer is sent once too, and a lost
    answer is settled by asking whether this resource now holds the job (see `accept_offer`).
    Retries wait with exponential backoff and full jitter, at most `max_retries` times.

    Rate limits. A 429 is never a fault of the request: the client waits until the window
    resets (X-RateLimit-Reset, else Retry-After) and sends it again, for at most
    `rate_limit_max_wait_s` in all; past that it raises `RateLimited`.

    Setting `stop` (a `threading.Event`) ends any wait between retries at once with
    `ApiUnavailable`, so that a daemon shuts down without sitting out a backoff.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        rate_limit_max_wait_s: float = 120.0,
        transport: httpx.BaseTransport | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                "the API client", [f"base URL {base_url!r} must start with http:// or https://"]
            )
        self.base_url = base_url.rstrip("/")
        self.policy = RetryPolicy(
            max_retries, backoff_base_s, backoff_max_s, rate_limit_max_wait_s
        )
        self._timeout_s = timeout_s
        self._stop = stop or threading.Event()
        self._http = httpx.Client(
            base_url=self.base_url,
            timeout=timeout_s,
            transport=transport,
            headers={"user-agent": f"calctra-agent/{__version__}"},
        )
        self.token = token

    @property
    def token(self) -> str | None:
        """The bearer token sent with every request: a user JWT or an agent token."""
        return self._token

    @token.setter
    def token(self, token: str | None) -> None:
        self._token = token
        if token:
            self._http.headers["authorization"] = f"Bearer {token}"
        else:
            self._http.headers.pop("authorization", None)

    def __repr__(self) -> str:
        return f"CalctraClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CalctraClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Auth and users

    def register(self, email: str, password: str, name: str) -> wire.RegisterResponse:
        """Create a user account. Sent once: a second registration would be a 409."""
        body = _body(wire.RegisterRequest, email=email, password=password, name=name)
        return self._post("/api/auth/register", wire.RegisterResponse, body, idempotent=False)

    def login(self, email: str, password: str) -> wire.LoginResponse:
        """Log in and use the returned user token for this client's later requests."""
        body = _body(wire.LoginRequest, email=email, password=password)
        login = self._post("/api/auth/login", wire.LoginResponse, body, idempotent=True)
        self.token = login.token
        return login

    def get_me(self) -> wire.UserProfile:
        return self._get("/api/users/me", wire.UserProfile)

    def update_me(
        self, *, name: str | None = None, wallet_address: str | None = None
    ) -> wire.Message:
        body = _body(wire.UpdateProfileRequest, name=name, wallet_address=wallet_address)
        return self._put("/api/users/me", wire.Message, body)

    # Resources

    def list_resources(
        self,
        *,
        type: wire.ResourceType | None = None,
        min_cpu: int | None = None,
        min_memory_gb: float | None = None,
        min_storage_gb: float | None = None,
        has_gpu: bool | None = None,
        max_price: float | None = None,
        page: int = 1,
        limit: int = wire.DEFAULT_PAGE_LIMIT,
    ) -> wire.ResourcePage:
        """Active resources, cheapest first, filtered as the API reference describes."""
        params = {
            "type": type,
            "minCpu": min_cpu,
            "minMemory": min_memory_gb,
            "minStorage": min_storage_gb,
            "hasGpu": has_gpu,
            "maxPrice": max_price,
            "page": page,
            "limit": limit,
        }
        return self._get("/api/resources", wire.ResourcePage, params)

    def get_resource(self, resource_id: str) -> wire.Resource:
        return self._get(f"/api/resources/{resource_id}", wire.Resource)

    def create_resource(self, resource: wire.ResourceRequest) -> wire.ResourceCreated:
        """Register a resource. Sent once, since a second attempt would register another."""
        return self._post("/api/resources", wire.ResourceCreated, resource, idempotent=False)

    def update_resource(self, resource_id: str, resource: wire.ResourceRequest) -> wire.Message:
        return self._put(f"/api/resources/{resource_id}", wire.Message, resource)

    def delete_resource(self, resource_id: str) -> wire.Message:
        """Delete a resource. Retried: should an earlier attempt have gone through unseen, the
        retry answers `NotFound`."""
        return self._delete(f"/api/resources/{resource_id}")

    # Jobs

    def list_jobs(
        self,
        *,
        status: wire.JobStatus | None = None,
        page: int = 1,
        limit: int = wire.DEFAULT_PAGE_LIMIT,
    ) -> wire.JobPage:
        params = {"status": status, "page": page, "limit": limit}
        return self._get("/api/jobs", wire.JobPage, params)

    def get_job(self, job_id: str) -> wire.JobDetail:
        return self._get(f"/api/jobs/{job_id}", wire.JobDetail)

    def create_job(self, job: wire.JobRequest) -> wire.JobCreated:
        """Create a job, moving its budget into escrow. Sent once: a retry could escrow the
        budget twice."""
        return self._post("/api/jobs", wire.JobCreated, job, idempotent=False)

    def cancel_job(self, job_id: str) -> wire.Message:
        """Cancel a job. Sent once: repeated, it would answer 409 for a job it had cancelled."""
        return self._post(f"/api/jobs/{job_id}/cancel", wire.Message, None, idempotent=False)

    def rate_job(self, job_id: str, rating: int, feedback: str = "") -> wire.Message:
        """Rate a completed job, once (a second rating is a 409)."""
        body = _body(wire.RateRequest, rating=rating, feedback=feedback)
        return self._post(f"/api/jobs/{job_id}/rate", wire.Message, body, idempotent=False)

    # Data

    def list_datasets(
        self, *, type: str | None = None, page: int = 1, limit: int = wire.DEFAULT_PAGE_LIMIT
    ) -> wire.DatasetPage:
        params = {"type": type, "page": page, "limit": limit}
        return self._get("/api/data", wire.DatasetPage, params)

    def get_dataset(self, dataset_id: str) -> wire.Dataset:
        return self._get(f"/api/data/{dataset_id}", wire.Dataset)

    def upload_dataset(
        self,
        path: Path | str,
        *,
        name: str,
        type: str,
        format: str,
        description: str = "",
        is_encrypted: bool = False,
        is_public: bool = False,
    ) -> wire.DatasetCreated:
        """Upload the file at `path` as a dataset, streamed from disk in chunks (never read
        whole). Sent once, unless the connection never opened."""
        fields = {
            "name": name,
            "description": description,
            "type": type,
            "format": format,
            "isEncrypted": _form_bool(is_encrypted),
            "isPublic": _form_bool(is_public),
        }
        source = Path(path)
        try:
            file = source.open("rb")
        except OSError as exc:
            raise CalctraError(f"cannot upload dataset {source}: {exc.strerror}") from exc
        with file:
            files = {"file": (source.name, file, "application/octet-stream")}
            call = _Call("POST", "/api/data", idempotent=False, data=fields, files=files)
            return self._call(call, wire.DatasetCreated)

    def update_dataset(
        self,
        dataset_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        type: str | None = None,
        format: str | None = None,
        is_encrypted: bool | None = None,
        is_public: bool | None = None,
    ) -> wire.Message:
        """Change a dataset's metadata; fields left as None keep their value."""
        body = _body(
            wire.DatasetUpdate,
            name=name,
            description=description,
            type=type,
            format=format,
            is_encrypted=is_encrypted,
            is_public=is_public,
        )
        return self._put(f"/api/data/{dataset_id}", wire.Message, body)

    def delete_dataset(self, dataset_id: str) -> wire.Message:
        """Delete a dataset and its file. Retried, like `delete_resource`."""
        return self._delete(f"/api/data/{dataset_id}")

    # Tokens

    def get_balance(self) -> wire.Balance:
        return self._get("/api/tokens/balance", wire.Balance)

    def list_transactions(
        self,
        *,
        type: wire.TransactionType | None = None,
        status: wire.TransactionStatus | None = None,
        page: int = 1,
        limit: int = wire.DEFAULT_PAGE_LIMIT,
    ) -> wire.TransactionPage:
        params = {"type": type, "status": status, "page": page, "limit": limit}
        return self._get("/api/tokens/transactions", wire.TransactionPage, params)

    def deposit(self, amount: float) -> wire.DepositResponse:
        """Add tokens through the development faucet. Sent once: a retry could pay twice."""
        body = _body(wire.DepositRequest, amount=amount)
        return self._post("/api/tokens/deposit", wire.DepositResponse, body, idempotent=False)

    # Webhooks

    def register_webhook(
        self, url: str, events: list[wire.WebhookEvent], secret: str
    ) -> wire.WebhookCreated:
        """Register a webhook. Sent once: a retry could register it twice."""
        body = _body(wire.WebhookRequest, url=url, events=events, secret=secret)
        return self._post("/api/webhooks", wire.WebhookCreated, body, idempotent=False)

    def list_webhooks(self) -> wire.WebhookList:
        return self._get("/api/webhooks", wire.WebhookList)

    def delete_webhook(self, webhook_id: str) -> wire.Message:
        """Remove a webhook. Retried, like `delete_resource`."""
        return self._delete(f"/api/webhooks/{webhook_id}")

    # Provider: agent tokens (with the owner's user token)

    def create_agent_token(
        self, resource_id: str, name: str = "calctra-agent"
    ) -> wire.AgentTokenCreated:
        """Issue an agent token for one of the owner's resources. Sent once: a retry would
        issue a second token."""
        body = _body(wire.AgentTokenRequest, resource_id=resource_id, name=name)
        return self._post("/api/agent-tokens", wire.AgentTokenCreated, body, idempotent=False)

    def list_agent_tokens(self) -> wire.AgentTokenList:
        return self._get("/api/agent-tokens", wire.AgentTokenList)

    def revoke_agent_token(self, token_id: str) -> wire.Message:
        """Revoke an agent token; the agent's next request gets 401. Retried: revoking a
        revoked token answers 200."""
        return self._delete(f"/api/agent-tokens/{token_id}")

    # Provider: the agent's side (with an agent token)

    def heartbeat(self, heartbeat: wire.HeartbeatRequest) -> wire.HeartbeatResponse:
        """Mark the resource active and report its utilization. Retried: a heartbeat sent
        twice only refreshes the same record."""
        return self._post(
            "/api/provider/heartbeat", wire.HeartbeatResponse, heartbeat, idempotent=True
        )

    def wait_for_offers(self, wait_s: float = 25.0) -> wire.OfferBatch:
        """Long-poll for offers and cancellations: the server answers as soon as there is
        something, or after `wait_s` seconds (at most 60) with empty lists. The read timeout
        is `wait_s` plus this client's `timeout_s`, so a quiet poll never times out."""
        wait_s = min(max(wait_s, 0.0), MAX_OFFER_WAIT_S)
        timeout = httpx.Timeout(self._timeout_s, read=wait_s + self._timeout_s)
        call = _Call(
            "GET",
            "/api/provider/offers",
            idempotent=True,
            params={"waitS": f"{wait_s:g}"},
            timeout=timeout,
        )
        return self._call(call, wire.OfferBatch)

    def accept_offer(self, job_id: str) -> wire.AcceptedJob:
        """Take the job offered to this resource; 409 `Conflict` when another provider was
        first.

        Not retried blindly: a retry after a lost answer would get 409 for a job that this
        resource took. When the request may have reached the server but no answer came (a
        read timeout, a dropped connection, a 5xx), the client asks for the job with
        `get_assigned_job`: it returns the job if this resource holds it, and otherwise raises
        the original error, so the offer can be looked at again in the next poll.
        """
        path = f"/api/provider/offers/{job_id}/accept"
        try:
            return self._post(path, wire.AcceptedJob, None, idempotent=False)
        except (ApiUnavailable, ServerError) as lost:
            held = self._held_job(job_id)
            if held is None:
                raise
            logger.info("api accept confirmed job_id=%s after=%s", job_id, type(lost).__name__)
            return held

    def decline_offer(
        self, job_id: str, reason: wire.DeclineReason, message: str = ""
    ) -> wire.Message:
        """Turn an offer down for good. Retried: declining twice leaves the same record."""
        body = _body(wire.DeclineRequest, reason=reason, message=message)
        path = f"/api/provider/offers/{job_id}/decline"
        return self._post(path, wire.Message, body, idempotent=True)

    def report_status(self, job_id: str, report: wire.StatusReport) -> wire.StatusReportResponse:
        """Report a job's progress or end. Retried: the server answers a repeated report 200
        without changing anything; one that does not fit the job's state is a 409 `Conflict`
        whose `details["status"]` is the job's real state."""
        path = f"/api/provider/jobs/{job_id}/status"
        return self._post(path, wire.StatusReportResponse, report, idempotent=True)

    def list_assigned_jobs(
        self,
        *,
        status: wire.JobStatus | None = None,
        page: int = 1,
        limit: int = wire.MAX_PAGE_LIMIT,
    ) -> wire.AcceptedJobPage:
        """The jobs that this resource holds, latest accepted first, optionally only those in
        `status`; an agent that restarts learns from it what the platform still assigns it."""
        params = {"status": status, "page": page, "limit": limit}
        return self._get("/api/provider/jobs", wire.AcceptedJobPage, params)

    def get_provider_resource(self) -> wire.ProviderResource:
        """The resource this agent token belongs to, with its last heartbeat."""
        return self._get("/api/provider/resource", wire.ProviderResource)

    def update_provider_resource(self, resource: wire.ResourceRequest) -> wire.Message:
        """Replace the resource's specs, price and availability. Retried, like any PUT."""
        return self._put("/api/provider/resource", wire.Message, resource)

    def get_assigned_job(self, job_id: str) -> wire.AcceptedJob:
        return self._get(f"/api/provider/jobs/{job_id}", wire.AcceptedJob)

    def claim_payment(self, job_id: str, claim: wire.ClaimRequest) -> wire.ClaimResponse:
        """Claim payment for a completed job. Retried: a job is paid once however many times
        it is claimed, and a repeated claim answers the same transactions."""
        path = f"/api/provider/jobs/{job_id}/claim"
        return self._post(path, wire.ClaimResponse, claim, idempotent=True)

    # A job's inputs and outputs (with an agent token; the owner reads logs and results)

    def download_dataset(self, dataset_id: str, dest: Path) -> str:
        """Stream the dataset's content into `dest` and return its sha256, checked against
        the platform's. The bytes go to a temporary file beside `dest`, renamed into place
        only once their sha256 matches; on any failure that file is removed, `dest` is left
        as it was, and a `CalctraError` says why. Retried like any GET."""
        call = _Call("GET", f"/api/data/{dataset_id}/content", idempotent=True, stream=True)
        return self._download(call, Path(dest), f"dataset {dataset_id}")

    def append_job_logs(self, job_id: str, offset: int, data: bytes) -> wire.JobLogAppend:
        """Store `data` as the job's log from byte `offset` on (at most
        `wire.MAX_LOG_APPEND_BYTES` at a time). Retried: bytes sent again are skipped, so a
        repeat changes nothing. An offset past what the platform holds is a 409 `Conflict`
        whose `details["size"]` says where to resume; once the per-job cap is reached the
        answer says `truncated` and further bytes are dropped."""
        if offset < 0:
            raise _not_sent(f"offset must be 0 or more, not {offset}", "offset")
        if len(data) > wire.MAX_LOG_APPEND_BYTES:
            raise _not_sent(
                f"{len(data)} bytes of log is more than the {wire.MAX_LOG_APPEND_BYTES} one "
                "request may carry; send it in parts",
                "body",
            )
        call = _Call(
            "POST",
            f"/api/jobs/{job_id}/logs",
            idempotent=True,
            params={"offset": offset},
            content=bytes(data),
            headers={"content-type": "application/octet-stream"},
        )
        return self._call(call, wire.JobLogAppend)

    def get_job_logs(self, job_id: str, offset: int = 0) -> bytes:
        """The job's log from byte `offset` on, as the agent sent it (the owner's token)."""
        call = _Call("GET", f"/api/jobs/{job_id}/logs", idempotent=True, params={"offset": offset})
        return self._call_raw(call).content

    def upload_results(self, job_id: str, path: Path, sha256: str) -> wire.JobResult:
        """Upload the job's result archive (tar.gz) from `path`, streamed from disk, with its
        `sha256`, which the platform checks. Retried: the file is read again from its start,
        and a repeat of the archive the platform holds answers the same record. A file that
        cannot be read raises `CalctraError`."""
        if not wire.is_sha256(sha256):
            raise _not_sent(f"sha256 must be 64 hex digits, not {sha256!r}", "sha256")
        source = Path(path)
        try:
            size = source.stat().st_size
        except OSError as exc:
            raise _unreadable(job_id, source, exc) from exc
        call = _Call(
            "POST",
            f"/api/jobs/{job_id}/results",
            idempotent=True,
            content=_FileBody(source),
            headers={
                "content-type": "application/gzip",
                "content-length": str(size),
                "x-content-sha256": sha256.lower(),
            },
        )
        try:
            return self._call(call, wire.JobResult)
        except OSError as exc:  # raised while the body was read, as it was sent
            raise _unreadable(job_id, source, exc) from exc

    def download_results(self, job_id: str, dest: Path) -> str:
        """Stream the job's result archive into `dest` (the owner's token) and return its
        sha256, checked as `download_dataset` checks a dataset's."""
        call = _Call("GET", f"/api/jobs/{job_id}/results", idempotent=True, stream=True)
        return self._download(call, Path(dest), f"the results of job {job_id}")

    # The request machinery

    def _get(self, path: str, model: type[M], params: dict[str, Any] | None = None) -> M:
        return self._call(_Call("GET", path, idempotent=True, params=params), model)

    def _put(self, path: str, model: type[M], body: wire.RequestModel) -> M:
        return self._call(_Call("PUT", path, idempotent=True, json=_dump(body)), model)

    def _delete(self, path: str) -> wire.Message:
        return self._call(_Call("DELETE", path, idempotent=True), wire.Message)

    def _post(
        self, path: str, model: type[M], body: wire.RequestModel | None, *, idempotent: bool
    ) -> M:
        json = None if body is None else _dump(body)
        return self._call(_Call("POST", path, idempotent=idempotent, json=json), model)

    def _call(self, call: _Call, model: type[M]) -> M:
        response = self._send(call)
        if not response.is_success:
            raise _error(call, response)
        try:
            return model.model_validate(response.json())
        except ValueError as exc:  # not JSON, or not the model (ValidationError is one too)
            raise ServerError(
                response.status_code,
                "INVALID_RESPONSE",
                f"{call} answered {response.status_code} with a body this client cannot "
                f"read as {model.__name__}: {_first_line(exc)}; is {self.base_url} a Calctra "
                "API of a compatible version?",
            ) from exc

    def _send(self, call: _Call) -> httpx.Response:
        """Send `call` until it gets an answer worth returning; the one place where httpx's
        exceptions become the agent's."""
        while True:
            try:
                response = self._http.send(self._request(call), stream=call.stream)
                if call.stream and not response.is_success:
                    response.read()
            except httpx.TransportError as exc:
                self._retry_after_transport_error(call, exc)
                continue
            except httpx.HTTPError as exc:
                raise self._unavailable(call, exc) from exc
            if response.status_code == 429:
                self._wait_for_rate_limit(call, response)
                continue
            if call.idempotent and response.status_code in RETRYABLE_STATUSES:
                if self._retry_after_status(call, response):
                    continue
            if call.retries:
                logger.info("api recovered method=%s path=%s retries=%d", *_where(call))
            return response

    def _request(self, call: _Call) -> httpx.Request:
        return self._http.build_request(
            call.method,
            call.path,
            json=call.json,
            params=_query(call.params),
            data=call.data,
            files=call.files,
            content=call.content,
            headers=call.headers,
            timeout=call.timeout or httpx.USE_CLIENT_DEFAULT,
        )

    def _call_raw(self, call: _Call) -> httpx.Response:
        """Send `call` and return its successful answer as it is, body and all."""
        response = self._send(call)
        if not response.is_success:
            raise _error(call, response)
        return response

    def _download(self, call: _Call, dest: Path, what: str) -> str:
        """Stream an answer's body into `dest`, checked against its X-Content-SHA256; returns
        the sha256. A body that breaks off midway is fetched again, like any failed GET."""
        while True:
            response = self._send(call)
            try:
                if not response.is_success:
                    raise _error(call, response)
                return _save(call, response, dest, what)
            except httpx.TransportError as exc:
                self._retry_after_transport_error(call, exc)
            except httpx.HTTPError as exc:
                raise self._unavailable(call, exc) from exc
            finally:
                response.close()

    def _retry_after_transport_error(self, call: _Call, exc: httpx.TransportError) -> None:
        if not may_retry_transport(exc, call.idempotent):
            raise self._unavailable(call, exc) from exc
        if call.retries >= self.policy.max_retries:
            raise self._unavailable(call, exc) from exc
        self._pause(call, _describe(exc), exc)

    def _retry_after_status(self, call: _Call, response: httpx.Response) -> bool:
        if call.retries >= self.policy.max_retries:
            return False
        self._pause(call, f"status {response.status_code}", None)
        return True

    def _pause(self, call: _Call, error: str, exc: Exception | None) -> None:
        call.retries += 1
        delay_s = self.policy.backoff_s(call.retries)
        logger.warning(
            "api retry method=%s path=%s attempt=%d of=%d in_s=%.2f error=%s",
            call.method,
            call.path,
            call.retries,
            self.policy.max_retries,
            delay_s,
            error,
        )
        self._sleep(call, delay_s, exc)

    def _wait_for_rate_limit(self, call: _Call, response: httpx.Response) -> None:
        wait_s = rate_limit_wait_s(response.headers, time.time())
        if wait_s is None:
            wait_s = _RATE_LIMIT_FALLBACK_S
        remaining_s = self.policy.rate_limit_max_wait_s - call.rate_waited_s
        if wait_s > remaining_s:
            raise _rate_limited(call, response, wait_s, self.policy.rate_limit_max_wait_s)
        logger.warning(
            "api rate limited method=%s path=%s wait_s=%.2f waited_s=%.2f max_wait_s=%.2f",
            call.method,
            call.path,
            wait_s,
            call.rate_waited_s,
            self.policy.rate_limit_max_wait_s,
        )
        call.rate_waited_s += wait_s
        self._sleep(call, wait_s, None)

    def _sleep(self, call: _Call, delay_s: float, exc: Exception | None) -> None:
        if self._stop.wait(delay_s):
            raise ApiUnavailable(f"gave up on {call}: the client is stopping") from exc

    def _unavailable(self, call: _Call, exc: httpx.HTTPError) -> ApiUnavailable:
        attempts = call.retries + 1
        return ApiUnavailable(
            f"cannot reach the Calctra API at {self.base_url}: {call} failed after "
            f"{attempts} attempt{'s' if attempts > 1 else ''} ({_describe(exc)}); check the "
            "network and that the platform is up"
        )

    def _held_job(self, job_id: str) -> wire.AcceptedJob | None:
        try:
            return self.get_assigned_job(job_id)
        except (NotFound, PermissionDenied, ApiUnavailable, ServerError):
            return None


def _body(model: type[R], **values: Any) -> R:
    """A request body, checked by the same wire model the server checks it with."""
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        fields = [
            {"field": ".".join(str(part) for part in error["loc"]), "problem": error["msg"]}
            for error in exc.errors()
        ]
        problems = "; ".join(f"{item['field']}: {item['problem']}" for item in fields)
        raise ValidationFailed(
            400,
            "VALIDATION_ERROR",
            f"request not sent, it would fail validation: {problems}",
            {"fields": fields},
        ) from exc


def _not_sent(problem: str, field: str) -> ValidationFailed:
    return ValidationFailed(
        400,
        "VALIDATION_ERROR",
        f"request not sent, it would fail validation: {problem}",
        {"fields": [{"field": field, "problem": problem}]},
    )


class _FileBody:
    """A file as a request body that can be sent again: each pass reads it from its start."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __iter__(self) -> Iterator[bytes]:
        with self.path.open("rb") as file:
            while chunk := file.read(_CHUNK_BYTES):
                yield chunk


def _unreadable(job_id: str, path: Path, exc: OSError) -> CalctraError:
    return CalctraError(
        f"cannot upload the results of job {job_id} from {path}: {exc.strerror or exc}"
    )


def _save(call: _Call, response: httpx.Response, dest: Path, what: str) -> str:
    """Write a streamed answer into `dest` through a temporary file beside it."""
    expected = response.headers.get("x-content-sha256", "").strip().lower()
    if not wire.is_sha256(expected):
        raise ServerError(
            response.status_code,
            "INVALID_RESPONSE",
            f"{call} answered without a valid X-Content-SHA256 header, so {what} cannot be "
            "checked; is the base URL a Calctra API of a compatible version?",
        )
    try:
        fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise CalctraError(f"cannot download {what} to {dest}: {exc.strerror or exc}") from exc
    temp = Path(name)
    try:
        actual = _write_hashed(fd, response)
        if actual != expected:
            raise ServerError(
                response.status_code,
                "INVALID_RESPONSE",
                f"{what} arrived with sha256 {actual}, not the {expected} that the platform "
                "recorded; nothing was kept",
            )
        os.replace(temp, dest)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise CalctraError(f"cannot download {what} to {dest}: {exc.strerror or exc}") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return actual


def _write_hashed(fd: int, response: httpx.Response) -> str:
    digest = hashlib.sha256()
    with open(fd, "wb") as file:
        for chunk in response.iter_bytes(_CHUNK_BYTES):
            digest.update(chunk)
            file.write(chunk)
    return digest.hexdigest()


def _dump(body: wire.RequestModel) -> Any:
    return body.model_dump(by_alias=True, exclude_none=True, mode="json")


def _query(params: dict[str, Any] | None) -> dict[str, str] | None:
    if params is None:
        return None
    return {name: _query_value(value) for name, value in params.items() if value is not None}


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return _form_bool(value)
    return str(value.value if isinstance(value, Enum) else value)


def _form_bool(value: bool) -> str:
    return "true" if value else "false"


def _error(call: _Call, response: httpx.Response) -> ApiError:
    """The typed exception for an error answer, enveloped or not."""
    status = response.status_code
    try:
        envelope = wire.ErrorEnvelope.model_validate(response.json())
    except ValueError:
        code = _CODE_BY_STATUS.get(status, f"HTTP_{status}")
        message = (
            f"{call} answered {status} {response.reason_phrase} without a Calctra error "
            f"envelope: {_snippet(response)}"
        )
        return api_error(status, code, message)
    error = envelope.error
    return api_error(status, error.code, error.message, error.details)


def _rate_limited(
    call: _Call, response: httpx.Response, wait_s: float, max_wait_s: float
) -> RateLimited:
    error = _error(call, response)
    return RateLimited(
        429,
        "RATE_LIMIT_EXCEEDED",
        f"{call} is rate limited: {error.message}; the window resets in {wait_s:.1f} s, past "
        f"this client's {max_wait_s:.1f} s limit on waiting",
        error.details,
    )


def _snippet(response: httpx.Response) -> str:
    text = " ".join(response.text.split())
    if not text:
        return "(empty body)"
    return repr(text[:_SNIPPET_CHARS] + ("…" if len(text) > _SNIPPET_CHARS else ""))


def _describe(exc: Exception) -> str:
    detail = str(exc).strip()
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _where(call: _Call) -> tuple[str, str, int]:
    return call.method, call.path, call.retries
