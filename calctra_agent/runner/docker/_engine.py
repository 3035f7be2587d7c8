"""The connection to the Docker engine, and the one place where its errors become ours.

What the runner asks while no job runs (is the engine there, its runtimes, this agent's
containers) goes through the probe's EngineApi, over httpx. The Docker SDK, with requests,
loads at the first job, container to take up or image to pull: an idle agent is some 5 MB
smaller without it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from calctra_agent.errors import RunnerError
from calctra_agent.probe import EngineApi, EngineUnavailable, GpuRuntime, detect_gpu_runtime

if TYPE_CHECKING:
    import docker

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
ENGINE_TIMEOUT_S = 30.0
"""How long one request to the engine may take; log streams are exempt, so a quiet job does
not end its own stream."""


class NotOnEngine(RunnerError):
    """The engine has no such container or image."""


def engine_host(docker_host: str | None) -> str:
    return docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


class Engine:
    """The engine at `docker_host` (None: DOCKER_HOST, else the local socket), checked on
    creation; raises RunnerError when it does not answer. Its methods may be called from any
    thread."""

    def __init__(self, docker_host: str | None, max_pool_size: int) -> None:
        self.host = engine_host(docker_host)
        self._max_pool_size = max_pool_size
        self._sdk: docker.DockerClient | None = None
        self._sdk_lock = threading.Lock()
        try:
            self._api = EngineApi(self.host, ENGINE_TIMEOUT_S)
        except EngineUnavailable as exc:  # an address it cannot speak to
            message = f"cannot use the Docker engine at {self.host}: {exc.reason}"
            raise RunnerError(message) from exc
        try:
            self.info()
        except RunnerError:
            self._api.close()
            raise

    def info(self) -> dict[str, Any]:
        """`docker info`."""
        with _api_errors("read the Docker engine's information"):
            return self._api.info()

    def gpu_runtime(self) -> GpuRuntime:
        """The engine's GPU runtime, as `calctra-agent probe` finds it."""
        return detect_gpu_runtime(self.info())

    def containers(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        """Summaries of the containers that match `filters`, running or not: their "Id",
        "Names", "Labels", "State" ("running", "exited", ...) and "ImageID"."""
        with _api_errors("list the engine's containers"):
            return self._api.containers(filters)

    @property
    def sdk(self) -> docker.DockerClient:
        """The Docker SDK's client of the engine, made at the first call."""
        with self._sdk_lock:
            if self._sdk is None:
                import docker

                with engine_errors("connect to the Docker engine"):
                    self._sdk = docker.DockerClient(
                        base_url=self.host,
                        timeout=ENGINE_TIMEOUT_S,
                        max_pool_size=self._max_pool_size,
                    )
            return self._sdk

    def close(self) -> None:
        self._api.close()
        with self._sdk_lock:
            if self._sdk is not None:
                self._sdk.close()


@contextmanager
def engine_errors(attempt: str) -> Iterator[None]:
    """Around calls of the Docker SDK: its exceptions become RunnerError("cannot <attempt>:
    <why>"), and NotOnEngine where the engine has no such container or image."""
    import docker
    import requests

    try:
        yield
    except docker.errors.NotFound as exc:
        raise NotOnEngine(f"cannot {attempt}: {_sdk_reason(exc)}") from exc
    except docker.errors.APIError as exc:
        raise RunnerError(f"cannot {attempt}: {_sdk_reason(exc)}") from exc
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise RunnerError(f"cannot {attempt}: the Docker engine did not answer ({exc})") from exc


@contextmanager
def _api_errors(attempt: str) -> Iterator[None]:
    try:
        yield
    except EngineUnavailable as exc:
        if exc.status is None:
            raise _unreachable(exc) from exc
        raise RunnerError(f"cannot {attempt}: {exc.reason}") from exc


def _sdk_reason(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode(errors="replace")
    return str(explanation or exc).strip()


def _unreachable(exc: EngineUnavailable) -> RunnerError:
    return RunnerError(
        f"cannot reach the Docker engine at {exc.host} ({exc.reason}): is dockerd running, "
        "and is this user in the docker group?"
    )
