"""Pulled images and their pruning under disk pressure, on the real engine with throwaway tags
of the busybox image."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from calctra_agent.config import ImageSettings
from calctra_agent.errors import RunnerError
from calctra_agent.runner.docker import ensure_image_present
from calctra_agent.runner.docker._engine import Engine
from calctra_agent.runner.docker._images import ImageStore, PulledImages, resolve_image
from calctra_agent.runner.docker._images import _log_pull as log_pull
from tests.docker_support import BUSYBOX_IMAGE
from tests.runner.conftest import job

PLENTY = 10**15


@pytest.fixture
def tags(client: docker.DockerClient) -> Iterator[list[str]]:
    """Four throwaway images, each of its own id (the busybox image with a label), so that no
    other test's container uses them; they and their containers go at the end."""
    repository = f"calctra-prune-test-{uuid.uuid4().hex[:8]}"
    names = [f"{repository}:{name}" for name in ("a", "b", "c", "d")]
    for name in names:
        dockerfile = f"FROM {BUSYBOX_IMAGE}\nLABEL calctra.test={name}\n"
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=name, rm=True)
    try:
        yield names
    finally:
        for name in names:
            for container in client.containers.list(all=True, filters={"ancestor": name}):
                container.remove(force=True)
            try:
                client.images.remove(name)
            except docker.errors.ImageNotFound:
                pass


def record_of(path: Path, used: dict[str, float]) -> PulledImages:
    path.write_text(json.dumps({"images": used}))
    return PulledImages(path)


def present(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        return False
    return True


def test_prune_removes_pulled_images_least_recently_used_first_until_space_is_back(
    client: docker.DockerClient, engine: Engine, tags: list[str], tmp_path: Path
) -> None:
    a, b, c, _ = tags
    record = record_of(tmp_path / "pulled.json", {b: 2000.0, a: 1000.0})
    store = ImageStore(
        engine, record, min_free_gb=10, free_bytes=lambda: 0 if present(client, a) else PLENTY
    )

    removed = store.prune()

    assert removed == [a]
    assert not present(client, a)
    assert present(client, b) and present(client, c)
    assert record.load() == {b: 2000.0}


def test_prune_spares_images_it_did_not_pull_and_images_in_use(
    client: docker.DockerClient, engine: Engine, tags: list[str], tmp_path: Path
) -> None:
    a, b, c, d = tags
    record = record_of(tmp_path / "pulled.json", {a: 1.0, b: 2.0, d: 3.0})
    client.containers.create(d, command=["sh"], network_mode="none")
    store = ImageStore(engine, record, min_free_gb=10, free_bytes=lambda: 0)

    removed = store.prune(keep={b})

    assert removed == [a]
    assert present(client, b) and present(client, c) and present(client, d)
    assert record.load() == {b: 2.0, d: 3.0}


def test_prune_does_nothing_while_space_is_enough(
    client: docker.DockerClient, engine: Engine, tags: list[str], tmp_path: Path
) -> None:
    a = tags[0]
    store = ImageStore(engine, record_of(tmp_path / "p.json", {a: 1.0}), 10, lambda: PLENTY)

    assert store.prune() == []
    assert present(client, a)


def test_prune_removes_unused_tags_of_the_record_and_never_others(
    client: docker.DockerClient, engine: Engine, tags: list[str], tmp_path: Path
) -> None:
    a, b, c, d = tags
    record = record_of(tmp_path / "pulled.json", {b: 2.0, a: 1.0})
    store = ImageStore(engine, record, min_free_gb=10, free_bytes=lambda: 0)

    removed = store.prune()

    assert removed == [a, b]
    assert not present(client, a) and not present(client, b)
    assert present(client, c) and present(client, d) and present(client, BUSYBOX_IMAGE)
    assert record.load() == {}


def test_using_an_image_updates_its_record_only_when_the_agent_pulled_it(
    client: docker.DockerClient, engine: Engine, tags: list[str], tmp_path: Path
) -> None:
    a, b, _, _ = tags
    record = record_of(tmp_path / "pulled.json", {a: 1.0})
    store = ImageStore(engine, record, min_free_gb=10, free_bytes=lambda: PLENTY)

    store.ensure(a)
    store.ensure(b)

    used = record.load()
    assert set(used) == {a} and used[a] > 1.0


def test_unreadable_record_prunes_nothing(
    client: docker.DockerClient, engine: Engine, tags: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "pulled.json"
    path.write_text('{"images": {"')
    store = ImageStore(engine, PulledImages(path), min_free_gb=10, free_bytes=lambda: 0)

    assert store.prune() == []
    assert all(present(client, name) for name in tags)


def test_record_is_written_whole(tmp_path: Path) -> None:
    record = PulledImages(tmp_path / "state" / "pulled.json")

    record.add("example/one:1")
    record.add("example/two:2")
    record.forget("example/one:1")

    assert list(record.load()) == ["example/two:2"]
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["pulled.json"]


def test_job_image_is_the_default_or_one_on_the_list() -> None:
    images = ImageSettings(default_image="python:3.12-slim", allowed_images=["pytorch/x:1"])

    assert resolve_image(job("1"), images) == "python:3.12-slim"
    assert resolve_image(job("1", image="pytorch/x:1"), images) == "pytorch/x:1"
    with pytest.raises(RunnerError, match="image pytorch/x:2 is not on this provider's list"):
        resolve_image(job("1", image="pytorch/x:2"), images)


def test_error_in_the_pull_stream_is_a_runner_error() -> None:
    events = iter([{"status": "Pulling fs layer", "id": "0a1b"}, {"error": "manifest unknown"}])

    with pytest.raises(RunnerError, match="^cannot pull image x/y:1: manifest unknown$"):
        log_pull("x/y:1", events)


def test_image_present_on_the_engine_is_not_pulled_again() -> None:
    ensure_image_present(BUSYBOX_IMAGE)  # no registry answers here: a pull would fail


def test_image_that_no_registry_has_is_a_clear_error() -> None:
    missing = "127.0.0.1:9/calctra/missing:1"

    with pytest.raises(RunnerError, match=f"^cannot pull image {missing}: .*docker load"):
        ensure_image_present(missing)
