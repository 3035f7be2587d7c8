"""Deciding on an offer: does the job fit what is free right now, and on our terms?"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from calctra_agent.availability import window_open
from calctra_agent.probe import Capacity, to_gb
from calctra_agent.runner import Grant
from calctra_agent.wire import DeclineReason, Offer

_MIN_MEMORY_GB = 0.5
"""A job that names no memory still gets this much: a container needs some."""


@dataclass(frozen=True)
class Terms:
    """The owner's terms: price, schedule, how many jobs at once."""

    price_per_hour: float
    availability: dict[str, Any] | None
    max_concurrent_jobs: int
    gpu_runtime: bool
    permitted_images: frozenset[str] | None = None
    """The images a job may name; None: any."""


@dataclass(frozen=True)
class Accept:
    grant: Grant


@dataclass(frozen=True)
class Decline:
    reason: DeclineReason
    message: str


Decision = Accept | Decline


def decide(
    offer: Offer, capacity: Capacity, grants: list[Grant], terms: Terms, now: datetime
) -> Decision:
    """Accept the offer with a grant of the machine, or decline it with the reason."""
    req = offer.requirements
    hours = req.estimated_duration_hours
    cost = terms.price_per_hour * hours
    if cost > offer.budget + 1e-9:
        return Decline(
            DeclineReason.BUDGET_TOO_LOW,
            f"{hours:g} h at {terms.price_per_hour:g}/h costs {cost:g}, budget is "
            f"{offer.budget:g}",
        )
    if (
        offer.image is not None
        and terms.permitted_images is not None
        and offer.image not in terms.permitted_images
    ):
        return Decline(
            DeclineReason.IMAGE_NOT_ALLOWED, f"image {offer.image} is not on this machine's list"
        )
    if not window_open(terms.availability, now):
        return Decline(DeclineReason.OUTSIDE_AVAILABILITY, "the availability window is closed")
    if offer.deadline is not None and now + timedelta(hours=hours) > offer.deadline:
        return Decline(
            DeclineReason.DEADLINE_TOO_SOON,
            f"{hours:g} h from now ends after the deadline {offer.deadline.isoformat()}",
        )
    if len(grants) >= terms.max_concurrent_jobs:
        return Decline(
            DeclineReason.INSUFFICIENT_CAPACITY,
            f"already running {len(grants)} jobs, the most this machine takes at once",
        )
    return _fit(offer, capacity, grants, terms)


def _fit(offer: Offer, capacity: Capacity, grants: list[Grant], terms: Terms) -> Decision:
    req = offer.requirements
    free_cores = capacity.cpu_cores - sum(g.cpu_cores for g in grants)
    free_memory = capacity.memory_gb - sum(g.memory_gb for g in grants)
    free_storage = capacity.storage_gb - sum(g.storage_gb for g in grants)
    memory = max(req.min_memory_gb, _MIN_MEMORY_GB)
    shortfalls = []
    if req.min_cpu_cores > free_cores:
        shortfalls.append(f"needs {req.min_cpu_cores} cores, {free_cores} are free")
    if memory > free_memory + 1e-9:
        shortfalls.append(f"needs {memory:g} GB of memory, {free_memory:g} GB are free")
    if req.min_storage_gb > free_storage + 1e-9:
        shortfalls.append(
            f"needs {req.min_storage_gb:g} GB of storage, {free_storage:g} GB are free"
        )
    if shortfalls:
        return Decline(DeclineReason.INSUFFICIENT_CAPACITY, "; ".join(shortfalls))
    gpus: tuple[str, ...] = ()
    if req.needs_gpu:
        chosen = _pick_gpu(capacity, grants, req.min_gpu_memory_gb, terms.gpu_runtime)
        if isinstance(chosen, Decline):
            return chosen
        gpus = (chosen,)
    return Accept(Grant(req.min_cpu_cores, memory, req.min_storage_gb, gpus))


def _pick_gpu(
    capacity: Capacity, grants: list[Grant], min_memory_gb: float, gpu_runtime: bool
) -> str | Decline:
    no_runtime = "the container engine has no GPU runtime (nvidia runtime or CDI devices)"
    if not capacity.gpus:
        detail = "" if gpu_runtime else f": {no_runtime}"
        return Decline(DeclineReason.GPU_UNAVAILABLE, f"this machine offers no GPU{detail}")
    if not gpu_runtime:
        return Decline(DeclineReason.GPU_UNAVAILABLE, no_runtime)
    busy = {uuid for grant in grants for uuid in grant.gpu_uuids}
    sizes = {gpu.uuid: to_gb(gpu.memory_total_bytes) for gpu in capacity.gpus}
    big_enough = [uuid for uuid, size in sizes.items() if size + 1e-9 >= min_memory_gb]
    if not big_enough:
        return Decline(
            DeclineReason.GPU_UNAVAILABLE,
            f"needs a GPU with {min_memory_gb:g} GB, the largest has {max(sizes.values()):.1f} GB",
        )
    free = [uuid for uuid in big_enough if uuid not in busy]
    if not free:
        return Decline(DeclineReason.INSUFFICIENT_CAPACITY, "every suitable GPU is busy")
    # The smallest GPU that fits, so that larger ones stay free for jobs that need them.
    return min(free, key=lambda uuid: sizes[uuid])
