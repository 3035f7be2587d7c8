"""The container engine (Docker) that runs jobs, and whether it can give them GPUs.

An engine that cannot be reached is a normal finding, reported with its reason, not raised.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

logger = logging.getLogger(__name__)

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
_CDI_GPU_KIND = "nvidia.com/gpu"
_NVIDIA_RUNTIME_BINARY = "nvidia-container-runtime"


@dataclass(frozen=True)
class GpuRuntime:
    """How the engine can hand NVIDIA GPUs to a container: the `nvidia` runtime
    (nvidia-container-toolkit), or CDI devices of kind nvidia.com/gpu, which it lists."""

    nvidia_runtime: bool = False
    cdi_devices: tuple[str, ...] = ()
    """CDI device names, such as "nvidia.com/gpu=0" or "nvidia.com/gpu=all"."""

    @property
    def usable(self) -> bool:
        return self.nvidia_runtime or bool(self.cdi_devices)


@dataclass(frozen=True)
class EngineInfo:
    host: str
    reachable: bool
    reason: str | None = None
    """Why the engine could not be reached; None when it answered."""
    server_version: str | None = None
    gpu_runtime: GpuRuntime = field(default_factory=GpuRuntime)


def detect_gpu_runtime(info: Mapping[str, Any]) -> GpuRuntime:
    """The GPU runtime that a `docker info` answer (the Engine API's SystemInfo) describes.

    CDI devices appear only in "DiscoveredDevices" (Docker 28.2 and later); an engine that
    lists "CDISpecDirs" but no devices is not counted as able to give GPUs.
    """
    runtimes = info.get("Runtimes") or {}
    nvidia = "nvidia" in runtimes or any(
        _NVIDIA_RUNTIME_BINARY in str((spec or {}).get("path", ""))
        for spec in runtimes.values()
        if isinstance(spec, Mapping)
    )
    devices = tuple(
        str(device.get("ID"))
        for device in info.get("DiscoveredDevices") or ()
        if isinstance(device, Mapping)
        and device.get("Source", "cdi") == "cdi"
        and str(device.get("ID", "")).partition("=")[0] == _CDI_GPU_KIND
    )
    return GpuRuntime(nvidia_runtime=nvidia, cdi_devices=devices)


def probe_engine(*, timeout_s: float = 2.0) -> EngineInfo:
    """Asks the engine named by DOCKER_HOST (or the default socket) for its version and
    runtimes: two round trips when it is reachable."""
    host = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    try:
        with EngineApi(host, timeout_s) as engine:
            info = engine.info()
    except EngineUnavailable as exc:
        reason = f"{exc.reason}: {exc.hint}" if exc.hint else exc.reason
        logger.info("container engine unreachable host=%s reason=%s", host, reason)
        return EngineInfo(host=host, reachable=False, reason=reason)
    return EngineInfo(
        host=host,
        reachable=True,
        server_version=info.get("ServerVersion"),
        gpu_runtime=detect_gpu_runtime(info),
    )


class EngineUnavailable(Exception):
    """The engine at `host` could not be reached, or refused a request: `reason` says why,
    in the operating system's words where it has some; `status` is the engine's answer, None
    when there was none."""

    def __init__(
        self, host: str, reason: str, *, status: int | None = None, hint: str | None = None
    ) -> None:
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason
        self.status = status
        self.hint = hint
        """What the owner may do about it, when the reason suggests something."""


class EngineApi:
    """Read-only calls to the Docker Engine API at a unix:// or tcp:// address, over httpx:
    what the probe asks, and what an agent without a job asks (its runtimes, its
    containers). Running containers is the Docker SDK's work, which the runner loads at its
    first job: the SDK and requests add about 5 MB to an idle agent.

    Like the SDK, it learns the engine's API version with GET /version first, and speaks
    that version afterwards."""

    def __init__(self, host: str, timeout_s: float) -> None:
        self.host = host
        transport, base_url = _transport(host)
        self._http = httpx.Client(
            base_url=base_url, transport=transport, timeout=timeout_s, trust_env=False
        )
        self._timeout_s = timeout_s
        self._prefix: str | None = None

    def info(self) -> dict[str, Any]:
        """`docker info`: the Engine API's SystemInfo."""
        info: dict[str, Any] = self.get("/info")
        return info

    def containers(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        """The engine's containers, running or not, that match `filters` (such as
        {"label": ["key=value"]}): the Engine API's container summaries."""
        found: list[dict[str, Any]] = self.get(
            "/containers/json", all="1", filters=json.dumps(dict(filters))
        )
        return found

    def get(self, path: str, **params: str) -> Any:
        """The decoded JSON answer to GET `path`; raises EngineUnavailable."""
        if self._prefix is None:
            version = self._request("/version").get("ApiVersion")
            self._prefix = f"/v{version}" if version else ""
        return self._request(self._prefix + path, params)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EngineApi:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _request(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        refused = _unix_socket_error(self.host, self._timeout_s)
        if refused is not None:
            raise EngineUnavailable(self.host, os_reason(refused), hint=_hint(refused))
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise EngineUnavailable(self.host, os_reason(exc), hint=_hint(exc)) from exc
        if response.status_code != 200:
            raise EngineUnavailable(
                self.host,
                f"the engine answered {response.status_code}: {_message(response)}",
                status=response.status_code,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise EngineUnavailable(self.host, "the engine's answer is not JSON") from exc


def _unix_socket_error(host: str, timeout_s: float) -> OSError | None:
    """Connects to a unix socket host by hand first: httpcore leaks the socket of a failed
    connect to one, and an engine that is not there is the common case on a machine
    without Docker."""
    if not host.startswith("unix://"):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(host.removeprefix("unix://"))
        except OSError as exc:
            return exc
    return None


def _transport(host: str) -> tuple[httpx.HTTPTransport, str]:
    """The transport and base URL for an engine address: a unix socket, or plain TCP (an
    engine with TLS or over SSH is out of the agent's reach)."""
    # No certificates are loaded: the engine is never spoken to over TLS.
    if host.startswith("unix://"):
        return httpx.HTTPTransport(uds=host.removeprefix("unix://"), verify=False), "http://docker"
    if host.startswith(("tcp://", "http://")):
        address = urlsplit(host.replace("tcp://", "http://", 1))
        netloc = address.netloc if address.port else f"{address.netloc}:2375"
        return httpx.HTTPTransport(verify=False), f"http://{netloc}"
    raise EngineUnavailable(
        host, "the agent reaches a Docker engine at a unix:// or tcp:// address only"
    )


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message") or response.reason_phrase)
    except (ValueError, AttributeError):
        return response.reason_phrase


def os_reason(exc: BaseException) -> str:
    """The operating system's words for a failure to reach the engine ("no such file or
    directory"), which HTTP clients bury a few exceptions deep; the exception's own message
    when there are none."""
    error = _os_error(exc)
    return str(error.strerror).lower() if error is not None else str(exc)


def _os_error(exc: BaseException) -> OSError | None:
    for cause in _causes(exc, depth=0):
        if isinstance(cause, OSError) and cause.strerror:
            return cause
    return None


def _causes(exc: BaseException, depth: int) -> Iterator[BaseException]:
    if depth > 8:
        return
    yield exc
    nested = [exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args]
    for inner in nested:
        if isinstance(inner, BaseException) and inner is not exc:
            yield from _causes(inner, depth + 1)


def _hint(exc: BaseException) -> str | None:
    error = _os_error(exc)
    if isinstance(error, FileNotFoundError):
        return "is the docker engine installed and running?"
    if isinstance(error, PermissionError):
        return "add the agent's user to the docker group"
    return None
