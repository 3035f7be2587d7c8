"""The agent's settings: a TOML file, with CALCTRA_* environment variables over it.

Every setting has an environment variable: `price_per_hour` is CALCTRA_PRICE_PER_HOUR, and a
nested one joins its names with "__": `reserve.cpu_cores` is CALCTRA_RESERVE__CPU_CORES. Lists
are JSON in the environment: CALCTRA_RESERVE__GPUS='[0, "GPU-5f3c..."]'.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from contextvars import ContextVar
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from calctra_agent import wire
from calctra_agent.errors import ConfigError
from calctra_agent.probe import Reservation

__all__ = [
    "AgentSettings",
    "AvailabilitySettings",
    "ContainerSettings",
    "DEFAULT_CONFIG_PATH",
    "ImageSettings",
    "ReserveSettings",
    "ScheduleSettings",
    "load_settings",
    "redacted",
    "resource_request",
]

DEFAULT_CONFIG_PATH = Path("/etc/calctra-agent/agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/calctra-agent")
ENV_PREFIX = "CALCTRA_"

_toml_file: ContextVar[Path | None] = ContextVar("calctra_agent_toml_file", default=None)


def _check_http_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment:
        raise ValueError("must have no query string or fragment")
    return urlunsplit(parts._replace(path=parts.path.rstrip("/")))


def _check_api_url(value: str) -> str:
    url = _check_http_url(value)
    if not urlsplit(url).path.endswith("/v1"):
        raise ValueError("must end with the API version, such as https://api.calctra.io/v1")
    return url


def _check_rpc_url(value: str) -> str:
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// Solana RPC URL")
    return value.strip()


def _check_timezone(value: str) -> str:
    # The same zones as the API's Availability accepts.
    if value not in _timezones():
        raise ValueError(f"unknown IANA time zone {value!r}; use a name such as 'Europe/Paris'")
    return value


def _check_docker_host(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"unix:///\S+|tcp://[^\s/]+/?", value):
        raise ValueError(
            f"{value!r} is not an engine address the agent can use: give unix:///path/to/socket "
            "or tcp://host:port (plain TCP: the agent speaks neither TLS nor SSH to the engine)"
        )
    return value


@cache
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


def _check_image(value: str) -> str:
    if not value or any(char.isspace() for char in value):
        raise ValueError("must be an image reference such as python:3.12-slim")
    return value


def _gpu_ref(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a GPU index such as 0 or a UUID such as 'GPU-5f3c...'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must be a GPU index >= 0")
        return value
    if not value.strip():
        raise ValueError("must be a GPU index such as 0 or a UUID such as 'GPU-5f3c...'")
    return int(value) if value.strip().isdigit() else value.strip()


ApiUrl = Annotated[str, AfterValidator(_check_api_url)]
RpcUrl = Annotated[str, AfterValidator(_check_rpc_url)]
Image = Annotated[str, AfterValidator(_check_image)]
GpuRef = Annotated[int | str, PlainValidator(_gpu_ref)]
Gigabytes = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]
LogLevel = Annotated[
    Literal["DEBUG", "INFO", "WARNING", "ERROR"],
    BeforeValidator(lambda value: value.upper() if isinstance(value, str) else value),
]


def _under_state_dir(data: dict[str, Any], name: str) -> Path:
    # A state_dir that failed validation is missing here; its own error is reported.
    return Path(data.get("state_dir", DEFAULT_STATE_DIR)) / name


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScheduleSettings(_Section):
    """As the API's Schedule: ISO weekdays (1 is Monday); start_hour > end_hour wraps
    midnight; start_hour == end_hour is the whole day."""

    days: Annotated[list[Annotated[int, Field(ge=1, le=7)]], Field(min_length=1, max_length=7)]
    start_hour: Annotated[int, Field(ge=0, le=23)]
    end_hour: Annotated[int, Field(ge=0, le=23)]

    @field_validator("days")
    @classmethod
    def _unique_days(cls, days: list[int]) -> list[int]:
        return sorted(set(days))


class AvailabilitySettings(_Section):
    schedule: ScheduleSettings
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "UTC"

    def to_wire(self) -> wire.Availability:
        return wire.Availability.model_validate(
            {"schedule": self.schedule.model_dump(by_alias=False), "timezone": self.timezone}
        )


class ReserveSettings(_Section):
    """What the owner keeps for themselves; the rest of the machine is offered."""

    cpu_cores: Annotated[int, Field(ge=0, le=4096)] = 0
    memory_gb: Gigabytes = 0.0
    storage_gb: Gigabytes = 0.0
    gpus: Annotated[list[GpuRef], Field(max_length=64)] = []
    """GPUs held back, by NVML index (0) or UUID ("GPU-5f3c...")."""

    def to_reservation(self) -> Reservation:
        return Reservation(
            cpu_cores=self.cpu_cores,
            memory_gb=self.memory_gb,
            storage_gb=self.storage_gb,
            gpus=tuple(self.gpus),
        )


class ImageSettings(_Section):
    """Jobs run in `default_image`; `allowed_images` are further images the runner accepts
    when a job asks for one (IMAGE_NOT_ALLOWED otherwise)."""

    default_image: Image = "python:3.12-slim"
    allowed_images: Annotated[list[Image], Field(max_length=1000)] = []

    min_free_gb: Gigabytes = 10.0
    """Below this much free space on the engine's disk, images the agent pulled are removed,
    least recently used first; images it did not pull are never touched."""

    @property
    def permitted(self) -> frozenset[str]:
        return frozenset([self.default_image, *self.allowed_images])


class ContainerSettings(_Section):
    """How job containers are confined, beyond the grant's cores, memory and GPUs."""

    docker_host: Annotated[str | None, AfterValidator(_check_docker_host)] = None
    """The engine's address: unix:///path or tcp://host:port (plain TCP; the agent speaks
    neither TLS nor SSH to the engine); None: DOCKER_HOST, else the local socket."""
    pids_limit: Annotated[int, Field(ge=16, le=1_000_000)] = 1024
    tmp_size_mb: Annotated[int, Field(ge=1, le=1_000_000)] = 256
    """Size of the job's writable /tmp, a tmpfs counted in its memory."""
    max_output_mb: Annotated[int, Field(ge=1, le=10_000_000)] = 1024
    """A job whose output directory grows past this is stopped: OUTPUT_TOO_LARGE."""
    user: Annotated[str, Field(pattern=r"^(auto|\d+(:\d+)?)$")] = "auto"
    """The uid[:gid] jobs run as; auto: nobody (65534) when the agent runs as root, else the
    agent's own uid, so that the agent can always remove what a job wrote."""
    progress_interval_s: Annotated[float, Field(ge=0.5, le=300)] = 3.0
    """Progress goes to the platform at most this often."""


class AgentSettings(BaseSettings):
    """Every setting of the agent; see systemd/agent.toml for each one's meaning."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    api_url: ApiUrl = "http://127.0.0.1:8080/v1"
    state_dir: Path = DEFAULT_STATE_DIR
    work_dir: Path = Field(default_factory=lambda data: _under_state_dir(data, "jobs"))
    resource_name: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        default_factory=socket.gethostname
    )
    resource_description: Annotated[str, Field(max_length=5000)] = ""
    price_per_hour: (
        Annotated[float, Field(ge=0, le=wire.MAX_TOKENS, allow_inf_nan=False)] | None
    ) = None
    """Tokens per hour; None until the owner sets it, and the machine cannot be registered."""
    availability: AvailabilitySettings | None = None
    """None: available at all hours."""
    reserve: ReserveSettings = ReserveSettings()
    heartbeat_interval_s: Annotated[float, Field(ge=1, le=60)] = 10.0
    offer_wait_s: Annotated[float, Field(ge=1, le=60)] = 25.0
    outbox_interval_s: Annotated[float, Field(ge=0.1, le=300)] = 5.0
    max_concurrent_jobs: Annotated[int, Field(ge=1, le=1024)] = 1
    drain_on_stop: bool = False
    job_timeout_factor: Annotated[float, Field(ge=1, le=100)] = 2.0
    images: ImageSettings = ImageSettings()
    containers: ContainerSettings = ContainerSettings()
    log_level: LogLevel = "INFO"
    wallet_path: Path = Field(default_factory=lambda data: _under_state_dir(data, "wallet.json"))
    rpc_url: RpcUrl | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=_toml_file.get())
        return init_settings, env_settings, toml


def load_settings(config_path: Path | None = None) -> AgentSettings:
    """The settings from `config_path` (or DEFAULT_CONFIG_PATH, which may be absent) with the
    CALCTRA_* environment over it. Raises ConfigError with one line per bad setting."""
    path = config_path or DEFAULT_CONFIG_PATH
    present = _config_file_present(path, explicit=config_path is not None)
    source = str(path) if present else "the environment"
    token = _toml_file.set(path if present else None)
    try:
        return AgentSettings()
    except ValidationError as exc:
        raise ConfigError(source, _problems(exc)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"not valid TOML: {exc}"]) from exc
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror or exc}"]) from exc
    except SettingsError as exc:
        raise ConfigError(source, [_settings_problem(exc)]) from exc
    finally:
        _toml_file.reset(token)


def _config_file_present(path: Path, *, explicit: bool) -> bool:
    if path.is_file():
        return True
    if path.exists():
        raise ConfigError(str(path), ["is not a file; give the path of an agent.toml"])
    if explicit:
        raise ConfigError(str(path), ["no such file; give the path of an existing agent.toml"])
    return False


def resource_request(settings: AgentSettings, specs: wire.Specs) -> wire.ResourceRequest:
    """The registration of this machine as a resource; raises ConfigError while
    price_per_hour is not set."""
    if settings.price_per_hour is None:
        raise ConfigError(
            "the settings",
            [
                "price_per_hour: is not set; add price_per_hour = 1.5 to agent.toml or set "
                f"{ENV_PREFIX}PRICE_PER_HOUR"
            ],
        )
    availability = settings.availability
    return wire.ResourceRequest(
        name=settings.resource_name,
        description=settings.resource_description,
        specs=specs,
        price_per_hour=float(settings.price_per_hour),
        availability=None if availability is None else availability.to_wire(),
    )


def redacted(settings: AgentSettings) -> dict[str, Any]:
    """The settings as JSON values for `config show`, with credentials in URLs (user info and
    query parameters, where RPC providers put API keys) replaced by ***."""
    data = settings.model_dump(mode="json")
    for key in ("api_url", "rpc_url"):
        if data.get(key):
            data[key] = _redact_url(data[key])
    return data


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = urlencode([(key, "***") for key, _ in parse_qsl(parts.query, True)], safe="*")
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def _problems(exc: ValidationError) -> list[str]:
    # A path defaulting under state_dir is not computed when another setting is bad: that is
    # no problem of its own.
    errors = [error for error in exc.errors() if error["type"] != "default_factory_not_called"]
    return [_problem(error) for error in errors]


def _problem(error: ErrorDetails) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "settings"
    message = _message(error)
    line = f"{location}: {message}"
    if error["type"] not in ("missing", "extra_forbidden") and _shown(error["input"], message):
        line += f" (got {error['input']!r})"
    env_var = _env_var(error["loc"])
    return f"{line} [from {env_var}]" if env_var else line


def _message(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}
    bounds["less_than"] = "<"
    if kind in bounds:
        limit = next(iter(ctx.values()))
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {bounds[kind]} {limit}"
    if kind == "extra_forbidden":
        return "unknown setting; check its spelling against systemd/agent.toml"
    if kind == "missing":
        return "is required"
    if kind == "path_type":
        return "must be a path, as a string"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    message = error["msg"]
    if message.startswith("Input should be"):
        return "must be" + message.removeprefix("Input should be")
    return message[:1].lower() + message[1:]


def _shown(value: Any, message: str) -> bool:
    """Whether to quote the bad value: not when the message already does, nor a whole table."""
    text = repr(value)
    return not isinstance(value, dict) and len(text) <= 200 and text not in message


def _env_var(loc: tuple[int | str, ...]) -> str | None:
    """The CALCTRA_* variable that set the value at `loc`, if one did."""
    environ = {key.upper() for key in os.environ}
    names = [str(part).upper() for part in loc]
    for depth in range(len(names), 0, -1):
        name = ENV_PREFIX + "__".join(names[:depth])
        if name in environ:
            return name
    return None


def _settings_problem(exc: SettingsError) -> str:
    # pydantic-settings says: error parsing value for field "reserve" from source "...".
    match = re.search(r'field "([^"]+)"', str(exc))
    if match is None:
        return str(exc)
    field = match.group(1)
    prefix = f"{ENV_PREFIX}{field}".upper()
    names = sorted(key for key in os.environ if key.upper().startswith(prefix))
    return (
        f"{field}: cannot parse {', '.join(names) or 'its value'}; lists and tables in the "
        "environment are JSON, such as '[0, \"GPU-5f3c...\"]'"
    )
