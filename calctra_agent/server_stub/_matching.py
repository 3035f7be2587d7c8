"""Matching jobs to resources."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from calctra_agent.availability import window_open
from calctra_agent.server_stub._db import Job, Resource, to_micro

_CANDIDATE_BATCH = 200
_MAX_CANDIDATES = 2000
_MAX_PRICE = 2**63 - 1


def find_matches(
    session: Session, job: Job, at: datetime, limit: int, exclude: Collection[str] = ()
) -> list[str]:
    """Active resources that meet the job's requirements, whose price for the estimated hours
    fits the budget and whose window is open now: best reputation first, then lowest price.
    Resources in `exclude` (those that declined the job) are left out."""
    req = job.requirements
    hours = float(req["estimatedDurationHours"])
    # Capped to a 64-bit integer: a tiny estimate (1e-12 hours) would overflow the column.
    max_price = min(int(job.budget / hours) if hours > 0 else job.budget, _MAX_PRICE)
    query = (
        select(Resource.id, Resource.availability)
        .where(
            Resource.active.is_(True),
            Resource.cpu_cores >= req.get("minCpuCores", 1),
            Resource.memory_gb >= req.get("minMemoryGb", 0),
            Resource.storage_gb >= req.get("minStorageGb", 0),
            Resource.price_per_hour <= max_price,
        )
        .order_by(Resource.reputation.desc(), Resource.price_per_hour.asc(), Resource.id)
    )
    if req.get("needsGpu"):
        query = query.where(Resource.has_gpu.is_(True))
        if req.get("minGpuMemoryGb"):
            # A GPU whose memory its provider did not state (NULL) fits only jobs that name none.
            query = query.where(Resource.gpu_memory_gb >= req["minGpuMemoryGb"])
    if job.owner_id:
        # Nobody is matched to their own job: they would pay themselves.
        query = query.where(Resource.owner_id != job.owner_id)
    if exclude:
        query = query.where(Resource.id.not_in(list(exclude)))
    matches: list[str] = []
    offset = 0
    while len(matches) < limit:
        batch = session.execute(query.offset(offset).limit(_CANDIDATE_BATCH)).all()
        matches += [rid for rid, avail in batch if window_open(avail, at)][: limit - len(matches)]
        if len(batch) < _CANDIDATE_BATCH or offset >= _MAX_CANDIDATES:
            break
        offset += _CANDIDATE_BATCH
    return matches


def price_for(price_per_hour: float, hours: float) -> int:
    return to_micro(price_per_hour * hours)
