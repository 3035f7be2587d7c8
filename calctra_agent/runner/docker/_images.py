"""Job images: which a job may use, pulling those the engine lacks, and removing the ones this
agent pulled when the engine's disk runs low.

The record of pulled images is a small JSON file in the state dir, {"images": {reference:
last used, epoch seconds}}, rewritten whole and atomically. An image the agent did not pull is
never in it, and so never removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from calctra_agent.config import ImageSettings
from calctra_agent.errors import RunnerError
from calctra_agent.runner._interface import JobSpec
from calctra_agent.runner.docker._engine import Engine, NotOnEngine, engine_errors

logger = logging.getLogger(__name__)

RECORD_NAME = "pulled-images.json"
GB = 1e9
_PULL_LOG_INTERVAL_S = 5.0

FreeBytes = Callable[[], int | None]
"""Free bytes on the engine's image storage; None when the agent cannot tell."""


def resolve_image(spec: JobSpec, images: ImageSettings) -> str:
    """The image the job runs in: the one it names, if the provider allows it, else the
    provider's default. Raises RunnerError for an image not on the list."""
    image = spec.image or images.default_image
    if image not in images.permitted:
        raise RunnerError(
            f"cannot run job {spec.job_id}: image {image} is not on this provider's list "
            f"(images.default_image and images.allowed_images)"
        )
    return image


class PulledImages:
    """The record of images this agent pulled, and when each was last used."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def load(self) -> dict[str, float]:
        try:
            data = json.loads(self.path.read_text())
            return {str(ref): float(used) for ref, used in data["images"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Unreadable: nothing is pruned until it is rewritten, which is the safe side.
            logger.warning("pulled image record unreadable path=%s error=%s", self.path, exc)
            return {}

    def add(self, reference: str) -> None:
        with self._lock:
            images = self.load()
            images[reference] = time.time()
            self._write(images)

    def touch(self, reference: str) -> None:
        """Note a use of `reference`, when the agent pulled it."""
        with self._lock:
            images = self.load()
            if reference in images:
                images[reference] = time.time()
                self._write(images)

    def forget(self, reference: str) -> None:
        with self._lock:
            images = self.load()
            if images.pop(reference, None) is not None:
                self._write(images)

    def _write(self, images: Mapping[str, float]) -> None:
        temporary = self.path.with_name(f".{self.path.name}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "w") as file:
                json.dump({"images": dict(images)}, file, indent=1, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            raise RunnerError(f"cannot write the pulled image record {self.path}: {exc}") from exc


class ImageStore:
    """The engine's images as jobs need them."""

    def __init__(
        self,
        engine: Engine,
        record: PulledImages,
        min_free_gb: float,
        free_bytes: FreeBytes | None = None,
    ) -> None:
        self.engine = engine
        self.record = record
        self.min_free_gb = min_free_gb
        self.free_bytes = free_bytes or (lambda: engine_free_bytes(engine))

    def ensure(self, reference: str, keep: Collection[str] = ()) -> None:
        """Make sure the engine has `reference`, pulling it when missing (after making room,
        sparing `keep`). Raises RunnerError when it cannot be had."""
        if image_id(self.engine, reference) is not None:
            self.record.touch(reference)
            return
        self.prune(keep={reference, *keep})
        pull(self.engine, reference)
        self.record.add(reference)

    def prune(self, keep: Collection[str] = ()) -> list[str]:
        """Remove pulled images, least recently used first, while free space is below
        images.min_free_gb; never one in `keep` or used by any container. Returns those
        removed."""
        free = self.free_bytes()
        if free is None or free >= self.min_free_gb * GB:
            return []
        in_use = self._images_in_use()
        removed: list[str] = []
        for reference in self._candidates(keep):
            if free is None or free >= self.min_free_gb * GB:
                break
            if image_id(self.engine, reference) in in_use:
                continue
            if self._remove(reference, free):
                removed.append(reference)
            free = self.free_bytes()
        return removed

    def _candidates(self, keep: Collection[str]) -> list[str]:
        pulled = self.record.load()
        return sorted((ref for ref in pulled if ref not in keep), key=lambda ref: pulled[ref])

    def _images_in_use(self) -> set[str]:
        return {str(container.get("ImageID")) for container in self.engine.containers({})}

    def _remove(self, reference: str, free: int) -> bool:
        try:
            with engine_errors(f"remove image {reference}"):
                self.engine.sdk.images.remove(reference)
        except NotOnEngine:
            self.record.forget(reference)
            return False
        except RunnerError as exc:
            # In use by a container created meanwhile, for instance: tried again next time.
            logger.warning("image not pruned image=%s error=%s", reference, exc)
            return False
        self.record.forget(reference)
        logger.info("image pruned image=%s free_gb=%.1f", reference, free / GB)
        return True


def ensure_image_present(reference: str, docker_host: str | None = None) -> None:
    """Make sure the engine at `docker_host` has `reference`, pulling it when missing, for
    callers outside a runner (the demo): the image is not recorded as pulled by the agent.
    Raises RunnerError when the engine does not answer or the image cannot be had."""
    engine = Engine(docker_host, max_pool_size=2)
    try:
        if image_id(engine, reference) is None:
            pull(engine, reference)
    finally:
        engine.close()


def image_id(engine: Engine, reference: str) -> str | None:
    """The id of the engine's image `reference`; None when it has none."""
    try:
        with engine_errors(f"look up image {reference}"):
            return str(engine.sdk.images.get(reference).id)
    except NotOnEngine:
        return None


def pull(engine: Engine, reference: str) -> None:
    """Pull `reference` (its tag, or latest), its progress in the log; raises RunnerError
    with what to do when no registry has it (or none answers)."""
    logger.info("image pull starting image=%s", reference)
    started = time.monotonic()
    try:
        with engine_errors(f"pull image {reference}"):
            events = engine.sdk.api.pull(reference, stream=True, decode=True)
            _log_pull(reference, events)
    except RunnerError as exc:
        raise RunnerError(
            f"{exc}; make the image available to the engine (docker pull or docker load), "
            "or set images.default_image to an image it has"
        ) from exc
    if image_id(engine, reference) is None:
        raise RunnerError(f"cannot pull image {reference}: the engine does not have it after")
    logger.info(
        "image pull complete image=%s elapsed_s=%.1f", reference, time.monotonic() - started
    )


def _log_pull(reference: str, events: Iterator[dict[str, Any]]) -> None:
    """Log the pull's progress every few seconds: layers done and bytes fetched."""
    layers: dict[str, tuple[int, int]] = {}
    done: set[str] = set()
    logged_at = time.monotonic()
    for event in events:
        if "error" in event:
            raise RunnerError(f"cannot pull image {reference}: {event['error']}")
        layer, status = event.get("id"), str(event.get("status", ""))
        if layer and status in ("Pull complete", "Already exists"):
            done.add(layer)
        detail = event.get("progressDetail") or {}
        if layer and status == "Downloading" and detail.get("total"):
            layers[layer] = (int(detail.get("current", 0)), int(detail["total"]))
        if time.monotonic() - logged_at >= _PULL_LOG_INTERVAL_S:
            logged_at = time.monotonic()
            fetched = sum(current for current, _ in layers.values()) / 1e6
            seen = len(done | set(layers))
            logger.info(
                "image pull progress image=%s layers_done=%d/%d fetched_mb=%.1f",
                reference, len(done), seen, fetched,
            )  # fmt: skip


def engine_free_bytes(engine: Engine) -> int | None:
    """Free bytes where the engine keeps its images (`docker info` DockerRootDir); None when
    that directory is not on this machine (a remote engine)."""
    root = engine.info().get("DockerRootDir")
    if not root:
        return None
    try:
        return shutil.disk_usage(root).free
    except OSError:
        return None
