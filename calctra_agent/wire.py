"""Wire schemas of the Calctra API, shared by the reference server and the API client.

Field names on the wire are camelCase, as in the API reference; Python code uses snake_case.
Request models are strict: JSON types must match (no "16" for 16), unknown fields are refused,
and every number has a bound, so that a bad request fails validation instead of reaching the
database.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

MAX_TOKENS = 1_000_000_000
"""The largest amount of tokens one request may name (a budget, a price, a deposit)."""

MAX_PAGE_LIMIT = 100
DEFAULT_PAGE_LIMIT = 10

_EMAIL = re.compile(
    r"^[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)


def _finite(le: float, ge: float = 0) -> Any:
    return Field(strict=True, allow_inf_nan=False, ge=ge, le=le)


Tokens = Annotated[float, _finite(MAX_TOKENS)]
PositiveTokens = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=1e-6, le=MAX_TOKENS)]
Cores = Annotated[int, Field(strict=True, ge=1, le=4096)]
Gigabytes = Annotated[float, _finite(1_000_000)]
Hours = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0, le=24 * 365)]
Name = Annotated[str, Field(strict=True, min_length=1, max_length=200)]
Description = Annotated[str, Field(strict=True, max_length=5000)]


def _check_email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError("must be an email address such as user@example.com")
    return value.lower()


def _check_wallet_address(value: str) -> str:
    from solders.pubkey import Pubkey

    try:
        Pubkey.from_string(value)
    except ValueError:
        raise ValueError("must be a base58 Solana public key (32 bytes)") from None
    return value


def _check_timezone(value: str) -> str:
    if value not in _timezones():
        raise ValueError(f"unknown IANA time zone {value!r}; use a name such as 'Europe/Paris'")
    return value


_TIMEZONES: frozenset[str] | None = None


def _timezones() -> frozenset[str]:
    global _TIMEZONES
    if _TIMEZONES is None:
        _TIMEZONES = frozenset(available_timezones()) | {"UTC"}
    return _TIMEZONES


# A container image reference as Docker reads it: an optional registry host (with a port), a
# lowercase repository path, then an optional tag and an optional digest.
_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = rf"(?:{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?/)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = rf"{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
_DIGEST = r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?"
_IMAGE = re.compile(f"{_REGISTRY}{_REPOSITORY}{_TAG}{_DIGEST}")
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def _check_image(value: str) -> str:
    if not _IMAGE.fullmatch(value):
        raise ValueError(
            "must be a container image reference such as 'python:3.12-slim': a lowercase "
            "repository, an optional :tag and @digest, no whitespace"
        )
    return value


def is_sha256(value: str) -> bool:
    """Whether `value` is a SHA-256 digest written as 64 hex digits."""
    return bool(_SHA256.fullmatch(value))


Email = Annotated[str, Field(strict=True, max_length=254), AfterValidator(_check_email)]
WalletAddress = Annotated[
    str, Field(strict=True, max_length=64), AfterValidator(_check_wallet_address)
]


class WireModel(BaseModel):
    """Base of every wire model: camelCase on the wire, snake_case in Python. A model's
    validator is built when first used: the agent uses a few of these models, and building
    them all would cost its idle process some MB."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, defer_build=True)


class RequestModel(WireModel):
    """Base of request bodies: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


class ResponseModel(WireModel):
    """Base of response bodies: clients ignore fields that a newer server adds."""

    model_config = ConfigDict(extra="ignore")


class Message(ResponseModel):
    message: str


# Errors


class ErrorCode(StrEnum):
    AUTHENTICATION_REQUIRED = "AUTHENTICATION_REQUIRED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    VALIDATION_ERROR = "VALIDATION_ERROR"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    RATE_LIMIT_EXCEEDED = "RATE_LIMIT_EXCEEDED"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    CONFLICT = "CONFLICT"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"


class ErrorBody(ResponseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class ErrorEnvelope(ResponseModel):
    error: ErrorBody


# Auth and users


class RegisterRequest(RequestModel):
    email: Email
    password: Annotated[str, Field(strict=True, min_length=8, max_length=1024)]
    name: Name


class RegisterResponse(ResponseModel):
    message: str
    user_id: str


class LoginRequest(RequestModel):
    email: Annotated[str, Field(strict=True, max_length=254)]
    password: Annotated[str, Field(strict=True, max_length=1024)]


class UserSummary(ResponseModel):
    id: str
    email: str
    name: str


class LoginResponse(ResponseModel):
    token: str
    expires_in: int
    user: UserSummary


class UserProfile(ResponseModel):
    id: str
    email: str
    name: str
    wallet_address: str | None
    created_at: datetime
    reputation: float


class UpdateProfileRequest(RequestModel):
    name: Name | None = None
    wallet_address: WalletAddress | None = None


# Resources


class ResourceType(StrEnum):
    CPU = "CPU"
    GPU = "GPU"
    STORAGE = "Storage"


class Specs(WireModel):
    model_config = ConfigDict(extra="forbid")

    cpu_cores: Cores
    memory_gb: Gigabytes
    storage_gb: Gigabytes
    gpu_model: Annotated[str, Field(strict=True, min_length=1, max_length=200)] | None = None
    gpu_memory_gb: Gigabytes | None = None


class Schedule(WireModel):
    """Days are ISO weekdays (1 is Monday). A window with startHour > endHour wraps midnight;
    startHour == endHour means the whole day."""

    model_config = ConfigDict(extra="forbid")

    days: Annotated[
        list[Annotated[int, Field(strict=True, ge=1, le=7)]], Field(min_length=1, max_length=7)
    ]
    start_hour: Annotated[int, Field(strict=True, ge=0, le=23)]
    end_hour: Annotated[int, Field(strict=True, ge=0, le=23)]

    @field_validator("days")
    @classmethod
    def _unique_days(cls, days: list[int]) -> list[int]:
        return sorted(set(days))


class Availability(WireModel):
    model_config = ConfigDict(extra="forbid")

    schedule: Schedule
    timezone: Annotated[
        str, Field(strict=True, max_length=64), AfterValidator(_check_timezone)
    ] = "UTC"


class ResourceRequest(RequestModel):
    name: Name
    description: Description = ""
    type: ResourceType | None = None
    specs: Specs
    price_per_hour: Tokens
    availability: Availability | None = None


class ResourceCreated(ResponseModel):
    message: str
    resource_id: str


class Resource(ResponseModel):
    id: str
    name: str
    description: str
    type: ResourceType
    owner: str
    specs: Specs
    price_per_hour: float
    availability: Availability | None
    reputation: float
    active: bool


class ResourcePage(ResponseModel):
    total: int
    page: int
    limit: int
    resources: list[Resource]


# Jobs


class JobStatus(StrEnum):
    CREATED = "CREATED"
    MATCHED = "MATCHED"
    ACCEPTED = "ACCEPTED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINAL_JOB_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobType(StrEnum):
    CUSTOM_CODE = "custom_code"


class Requirements(WireModel):
    model_config = ConfigDict(extra="forbid")

    min_cpu_cores: Cores = 1
    min_memory_gb: Gigabytes = 0
    min_storage_gb: Gigabytes = 0
    needs_gpu: Annotated[bool, Field(strict=True)] = False
    min_gpu_memory_gb: Gigabytes = 0
    estimated_duration_hours: Hours


MAX_CODE_BYTES = 1024 * 1024
MAX_IMAGE_CHARS = 255

ImageRef = Annotated[
    str,
    Field(strict=True, min_length=1, max_length=MAX_IMAGE_CHARS),
    AfterValidator(_check_image),
]
"""A container image reference, such as `python:3.12-slim` or `ghcr.io/org/tool@sha256:...`."""


class JobRequest(RequestModel):
    name: Name
    description: Description = ""
    type: JobType = JobType.CUSTOM_CODE
    code: Annotated[str, Field(strict=True, min_length=1, max_length=MAX_CODE_BYTES)]
    datasets: Annotated[
        list[Annotated[str, Field(strict=True, max_length=64)]], Field(max_length=100)
    ] = []
    requirements: Requirements
    budget: PositiveTokens
    deadline: datetime | None = None
    image: ImageRef | None = None
    """The container image to run the code in; None: the provider's default image."""

    @field_validator("deadline")
    @classmethod
    def _aware_deadline(cls, deadline: datetime | None) -> datetime | None:
        if deadline is None:
            return None
        if deadline.tzinfo is None:
            raise ValueError("must carry a time zone, e.g. 2030-03-01T00:00:00Z")
        try:
            # Stored in UTC: 9999-12-31T23:00:00-05:00 is past the last representable year.
            deadline.astimezone(UTC)
        except OverflowError:
            raise ValueError("is out of range once converted to UTC") from None
        return deadline


class JobResult(ResponseModel):
    """A job's uploaded result archive (tar.gz)."""

    size: int
    sha256: str
    uploaded_at: datetime


class JobCreated(ResponseModel):
    message: str
    job_id: str
    estimated_matching: datetime


class Job(ResponseModel):
    id: str
    name: str
    description: str
    type: JobType
    requirements: Requirements
    datasets: list[str]
    budget: float
    deadline: datetime | None
    status: JobStatus
    progress: int
    created_at: datetime
    started_at: datetime | None
    estimated_completion: datetime | None
    completed_at: datetime | None
    matched_resources: list[str]
    assigned_resource: str | None
    status_message: str | None
    rating: int | None
    image: str | None = None
    result: JobResult | None = None
    """The result archive the provider uploaded; None until it did."""


class JobDetail(Job):
    code: str


class JobPage(ResponseModel):
    total: int
    page: int
    limit: int
    jobs: list[Job]


class RateRequest(RequestModel):
    rating: Annotated[int, Field(strict=True, ge=1, le=5)]
    feedback: Annotated[str, Field(strict=True, max_length=5000)] = ""


# Data


class Dataset(ResponseModel):
    id: str
    name: str
    description: str
    type: str
    size: int
    format: str
    sha256: str
    is_encrypted: bool
    is_public: bool
    created_at: datetime
    access_count: int


class DatasetPage(ResponseModel):
    total: int
    page: int
    limit: int
    datasets: list[Dataset]


class DatasetCreated(ResponseModel):
    message: str
    dataset_id: str


class DatasetUpdate(RequestModel):
    name: Name | None = None
    description: Description | None = None
    type: Annotated[str, Field(strict=True, min_length=1, max_length=100)] | None = None
    format: Annotated[str, Field(strict=True, min_length=1, max_length=100)] | None = None
    is_encrypted: Annotated[bool, Field(strict=True)] | None = None
    is_public: Annotated[bool, Field(strict=True)] | None = None


# Tokens


class TransactionType(StrEnum):
    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"
    ESCROW = "ESCROW"
    PAYMENT = "PAYMENT"
    REFUND = "REFUND"
    REWARD = "REWARD"


class TransactionStatus(StrEnum):
    PENDING = "PENDING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class RelatedEntity(ResponseModel):
    type: str
    id: str


class Transaction(ResponseModel):
    id: str
    type: TransactionType
    amount: float
    status: TransactionStatus
    created_at: datetime
    completed_at: datetime | None = None
    related_entity: RelatedEntity | None = None
    transaction_hash: str | None = None


class Balance(ResponseModel):
    balance: float
    pending_transactions: list[Transaction]


class TransactionPage(ResponseModel):
    total: int
    page: int
    limit: int
    transactions: list[Transaction]


class DepositRequest(RequestModel):
    amount: PositiveTokens


class DepositResponse(ResponseModel):
    message: str
    transaction: Transaction
    balance: float


# Webhooks


class WebhookEvent(StrEnum):
    JOB_MATCHED = "job.matched"
    JOB_ACCEPTED = "job.accepted"
    JOB_STARTED = "job.started"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    PAYMENT_PROCESSED = "payment.processed"


class WebhookRequest(RequestModel):
    url: Annotated[str, Field(strict=True, min_length=1, max_length=2048)]
    events: Annotated[list[WebhookEvent], Field(min_length=1, max_length=len(WebhookEvent))]
    secret: Annotated[str, Field(strict=True, min_length=16, max_length=256)]


class WebhookCreated(ResponseModel):
    webhook_id: str
    message: str


class Webhook(ResponseModel):
    id: str
    url: str
    events: list[WebhookEvent]
    created_at: datetime


class WebhookList(ResponseModel):
    webhooks: list[Webhook]


# The provider's side: agent tokens, heartbeats, offers, reports and claims


AGENT_TOKEN_PREFIX = "cat_"
"""Agent tokens start with this, so the server tells them from user JWTs at a glance."""


class AgentTokenRequest(RequestModel):
    resource_id: Annotated[str, Field(strict=True, min_length=1, max_length=64)]
    name: Annotated[str, Field(strict=True, min_length=1, max_length=200)] = "calctra-agent"


class AgentTokenCreated(ResponseModel):
    token_id: str
    token: str
    resource_id: str
    created_at: datetime


class AgentToken(ResponseModel):
    id: str
    resource_id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


class AgentTokenList(ResponseModel):
    tokens: list[AgentToken]


Percent = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0, le=100)]


class GpuUtilization(WireModel):
    model_config = ConfigDict(extra="forbid")

    uuid: Annotated[str, Field(strict=True, max_length=128)]
    utilization_percent: Percent | None = None
    memory_used_gb: Gigabytes | None = None
    temperature_c: (
        Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-50, le=200)] | None
    ) = None
    """None where the GPU does not report it."""


class Utilization(WireModel):
    model_config = ConfigDict(extra="forbid")

    cpu_percent: Percent
    memory_used_gb: Gigabytes
    gpus: Annotated[list[GpuUtilization], Field(max_length=64)] = []


class HeartbeatRequest(RequestModel):
    agent_version: Annotated[str, Field(strict=True, min_length=1, max_length=64)]
    utilization: Utilization
    running_jobs: Annotated[
        list[Annotated[str, Field(strict=True, max_length=64)]], Field(max_length=1024)
    ] = []


class HeartbeatResponse(ResponseModel):
    next_heartbeat_in_s: float
    server_time: datetime
    active: bool
    cancelled_jobs: list[str]
    """Jobs assigned to this resource that their owner cancelled: stop them and report
    CANCELLED."""


class Offer(ResponseModel):
    job_id: str
    name: str
    type: JobType
    requirements: Requirements
    datasets: list[str]
    budget: float
    deadline: datetime | None
    created_at: datetime
    image: str | None = None
    """The container image the job asks for; None: the provider's default."""


class OfferBatch(ResponseModel):
    offers: list[Offer]
    cancelled_jobs: list[str]


class DeclineReason(StrEnum):
    INSUFFICIENT_CAPACITY = "INSUFFICIENT_CAPACITY"
    BUDGET_TOO_LOW = "BUDGET_TOO_LOW"
    OUTSIDE_AVAILABILITY = "OUTSIDE_AVAILABILITY"
    GPU_UNAVAILABLE = "GPU_UNAVAILABLE"
    IMAGE_NOT_ALLOWED = "IMAGE_NOT_ALLOWED"
    DEADLINE_TOO_SOON = "DEADLINE_TOO_SOON"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    OTHER = "OTHER"


class DeclineRequest(RequestModel):
    reason: DeclineReason
    message: Annotated[str, Field(strict=True, max_length=1000)] = ""


class AcceptedJob(ResponseModel):
    """What the provider gets once it holds the job: everything needed to run it."""

    job_id: str
    name: str
    type: JobType
    code: str
    requirements: Requirements
    datasets: list[str]
    budget: float
    deadline: datetime | None
    price_per_hour: float
    """The resource's price when the job was accepted; the payment uses it."""
    status: JobStatus
    accepted_at: datetime
    image: str | None = None
    """The container image the job asks for; None: the provider's default."""


class AcceptedJobPage(ResponseModel):
    total: int
    page: int
    limit: int
    jobs: list[AcceptedJob]


class FailureReason(StrEnum):
    EXIT_CODE = "EXIT_CODE"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    CANCELLED_BY_AGENT = "CANCELLED_BY_AGENT"
    OUTPUT_TOO_LARGE = "OUTPUT_TOO_LARGE"
    ERROR = "ERROR"


class Failure(WireModel):
    model_config = ConfigDict(extra="forbid")

    reason: FailureReason
    exit_code: Annotated[int, Field(strict=True, ge=-(2**31), le=2**32)] | None = None


class ReportableStatus(StrEnum):
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class StatusReport(RequestModel):
    status: ReportableStatus
    progress: Annotated[int, Field(strict=True, ge=0, le=100)] | None = None
    message: Annotated[str, Field(strict=True, max_length=4000)] = ""
    failure: Failure | None = None


class StatusReportResponse(ResponseModel):
    job_id: str
    status: JobStatus
    progress: int


MAX_LOG_APPEND_BYTES = 1024 * 1024
"""The most bytes of log one `POST /api/jobs/{id}/logs` may carry."""


class JobLogAppend(ResponseModel):
    """The answer to `POST /api/jobs/{id}/logs`."""

    size: int
    """Bytes of log the platform holds for the job."""
    truncated: bool
    """The per-job cap was reached: further bytes are dropped."""


CLAIM_DOMAIN = "calctra-claim-v1"


def claim_message(job_id: str, resource_id: str, wallet_address: str, timestamp: int) -> bytes:
    """The bytes a provider's wallet signs to claim payment for a job."""
    return f"{CLAIM_DOMAIN}\n{job_id}\n{resource_id}\n{wallet_address}\n{timestamp}".encode()


class ClaimRequest(RequestModel):
    wallet_address: WalletAddress
    timestamp: Annotated[int, Field(strict=True, ge=0, le=2**40)]
    signature: Annotated[str, Field(strict=True, min_length=1, max_length=128)]
    """base58 ed25519 signature of `claim_message(...)` by the wallet."""


class ClaimResponse(ResponseModel):
    job_id: str
    payment: Transaction
    refund: Transaction | None
    metered_hours: float


class ProviderResource(Resource):
    """The agent's own resource, as `GET /api/provider/resource` shows it."""

    last_heartbeat_at: datetime | None
    agent_version: str | None
