"""The Docker engine the job tests run on, and the local images they use.

`scripts/test` starts an engine where none answers and builds both images where missing
(`scripts/build-images`), since no image registry can be reached. A test that needs the
engine fails, never skips, without one: a suite that passes without running its job tests
would say nothing about them.
"""

from __future__ import annotations

import warnings

import docker
import pytest
import requests
from docker.errors import DockerException, ImageNotFound

PYTHON_IMAGE = "calctra-local/python3:bookworm"
BUSYBOX_IMAGE = "calctra-local/busybox:latest"
IMAGES = (BUSYBOX_IMAGE, PYTHON_IMAGE)


def docker_client() -> docker.DockerClient:
    """A client of the engine DOCKER_HOST names (the local socket by default), once it has
    answered a ping; fails the test otherwise."""
    client, error = _connect()
    if client is None:
        pytest.fail(f"no Docker engine: run scripts/test, which starts one ({error})")
    return client


def _connect() -> tuple[docker.DockerClient | None, str]:
    # docker-py leaves the socket of a refused connection open until the exception is freed;
    # freeing it here, with its ResourceWarning silenced, keeps it out of the test's result.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            client = docker.from_env()
        except DockerException as exc:
            return None, str(exc)
        try:
            client.ping()
        except (DockerException, requests.RequestException) as exc:
            client.close()
            return None, str(exc)
    return client, ""


def require_images(client: docker.DockerClient, *names: str) -> None:
    """Fails the test unless the engine holds every image named, both local ones by default."""
    missing = []
    for name in names or IMAGES:
        try:
            client.images.get(name)
        except ImageNotFound:
            missing.append(name)
    if missing:
        pytest.fail(f"no image {', '.join(missing)}: run scripts/build-images")
