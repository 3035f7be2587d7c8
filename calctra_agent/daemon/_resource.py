"""Keeping the platform's view of this machine up to date."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from calctra_agent.daemon._state import State
from calctra_agent.wire import ResourceRequest

logger = logging.getLogger(__name__)

_FINGERPRINT_KEY = "resource_fingerprint"


def fingerprint(request: ResourceRequest) -> str:
    body = request.model_dump_json(by_alias=True, exclude_none=True)
    return hashlib.sha256(body.encode()).hexdigest()


def sync_resource(client: Any, state: State, request: ResourceRequest) -> bool:
    """Update the resource on the platform when its specs, price or availability changed
    since the last sync; returns whether it sent an update."""
    wanted = fingerprint(request)
    if state.get(_FINGERPRINT_KEY) == wanted:
        return False
    client.update_provider_resource(request)
    state.put(**{_FINGERPRINT_KEY: wanted})
    specs = request.specs
    logger.info(
        "resource updated cores=%d memory_gb=%g gpu=%s price_per_hour=%g",
        specs.cpu_cores, specs.memory_gb, specs.gpu_model, request.price_per_hour,
    )  # fmt: skip
    return True


def remember_registration(state: State, request: ResourceRequest) -> None:
    """Record what `login` registered, so that the daemon's first start sends no update."""
    state.put(**{_FINGERPRINT_KEY: fingerprint(request)})
