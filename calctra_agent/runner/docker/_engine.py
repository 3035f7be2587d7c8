"""The connection to the Docker engine, and the one place where its errors become ours."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import docker
import requests

from calctra_agent.errors import RunnerError
from calctra_agent.probe import GpuRuntime, detect_gpu_runtime, unix_socket_error

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
ENGINE_TIMEOUT_S = 30.0
"""How long one request to the engine may take; log streams are exempt (the SDK lifts the
timeout on them), so a quiet job does not end its own stream."""


def engine_host(docker_host: str | None) -> str:
    return docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def connect(docker_host: str | None, max_pool_size: int) -> docker.DockerClient:
    """A client of the engine at `docker_host` (None: DOCKER_HOST, else the local socket),
    checked with a ping; raises RunnerError when the engine does not answer."""
    host = engine_host(docker_host)
    # Connected to first: the SDK leaks the socket of a failed connect to a unix socket.
    refused = unix_socket_error(host, ENGINE_TIMEOUT_S)
    if refused is not None:
        raise _unreachable(host, refused)
    try:
        client = docker.DockerClient(
            base_url=host, timeout=ENGINE_TIMEOUT_S, max_pool_size=max_pool_size
        )
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise _unreachable(host, exc) from exc
    try:
        client.ping()
    except (docker.errors.DockerException, requests.RequestException) as exc:
        client.close()
        raise _unreachable(host, exc) from exc
    return client


def gpu_runtime(client: docker.DockerClient) -> GpuRuntime:
    """The engine's GPU runtime, as `calctra-agent probe` finds it."""
    with engine_errors("read the Docker engine's runtimes"):
        return detect_gpu_runtime(client.info())


@contextmanager
def engine_errors(attempt: str) -> Iterator[None]:
    """Turn the Docker SDK's exceptions into RunnerError("cannot <attempt>: <why>")."""
    try:
        yield
    except docker.errors.APIError as exc:
        raise RunnerError(f"cannot {attempt}: {_api_reason(exc)}") from exc
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise RunnerError(f"cannot {attempt}: the Docker engine did not answer ({exc})") from exc


def _api_reason(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc).strip()


def _unreachable(host: str, exc: BaseException) -> RunnerError:
    return RunnerError(
        f"cannot reach the Docker engine at {host} ({_os_reason(exc)}): is dockerd running, "
        "and is this user in the docker group?"
    )


def _os_reason(exc: BaseException) -> str:
    """The operating system's words ("Connection refused"), which the SDK nests a few
    exceptions deep, or the SDK's message."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return str(current.strerror).lower()
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        pending.extend(
            item for item in [*nested, *current.args] if isinstance(item, BaseException)
        )
    return str(exc)
