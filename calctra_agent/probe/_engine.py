"""The container engine (Docker) that runs jobs, and whether it can give them GPUs.

An engine that cannot be reached is a normal finding, reported with its reason, not raised.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

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
    refused = unix_socket_error(host, timeout_s)
    if refused is not None:
        return _unreachable(host, refused)
    # Imported here, once an engine may answer: the Docker SDK costs about 200 ms and 6 MB of
    # memory, which a probe that does not ask the engine, or finds none, need not pay.
    import docker
    import requests

    try:
        client = docker.from_env(timeout=timeout_s)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        return _unreachable(host, exc)
    try:
        info = client.info()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        return _unreachable(host, exc)
    finally:
        client.close()
    return EngineInfo(
        host=host,
        reachable=True,
        server_version=info.get("ServerVersion"),
        gpu_runtime=detect_gpu_runtime(info),
    )


def unix_socket_error(host: str, timeout_s: float) -> OSError | None:
    """Connects to a unix socket host first: the SDK leaks the socket of a failed connect,
    and an unreachable engine is the common case on a machine without Docker."""
    if not host.startswith("unix://"):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            sock.connect(host.removeprefix("unix://"))
        except OSError as exc:
            return exc
    return None


def _unreachable(host: str, exc: BaseException) -> EngineInfo:
    reason = _root_reason(exc)
    logger.info("container engine unreachable host=%s reason=%s", host, reason)
    return EngineInfo(host=host, reachable=False, reason=reason)


def _root_reason(exc: BaseException) -> str:
    """The operating system's words for the failure ("No such file or directory"), which the
    SDK buries a few exceptions deep, or the SDK's message when there are none."""
    for cause in _causes(exc, depth=0):
        if isinstance(cause, OSError) and cause.strerror:
            return _with_hint(cause)
    return str(exc)


def _causes(exc: BaseException, depth: int) -> Iterator[BaseException]:
    if depth > 8:
        return
    yield exc
    nested = [exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args]
    for inner in nested:
        if isinstance(inner, BaseException) and inner is not exc:
            yield from _causes(inner, depth + 1)


def _with_hint(error: OSError) -> str:
    reason = str(error.strerror).lower()
    if isinstance(error, FileNotFoundError):
        return f"{reason}: is the docker engine installed and running?"
    if isinstance(error, PermissionError):
        return f"{reason}: add the agent's user to the docker group"
    return reason
