"""Heartbeats: cheap to answer, written in batches, and the expiry of silent resources.

A heartbeat is the most frequent request there is, one per agent every half minute, so it
touches no database. It is kept in memory and written with the others of the last second in
one transaction (each in a transaction of its own cost more than the rest of the request, and
more the larger the resources table): what the database shows of it (active, last heartbeat,
utilization) is at most SYNC_INTERVAL_S old. The cancelled jobs that it answers come from a
view in memory that this process's own commits update at once and that is read anew from the
database as often, for the changes that other server processes make.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import JSON, bindparam, select, update
from sqlalchemy.orm import Session

from calctra_agent.server_stub._db import Database, Job, Resource, UtcDateTime
from calctra_agent.wire import HeartbeatRequest, JobStatus

logger = logging.getLogger(__name__)

SYNC_INTERVAL_S = 1.0

# Built once, not per request: building a statement cost more than running it.
_RECORD = (
    update(Resource)
    .where(Resource.id == bindparam("b_resource_id"))
    .values(
        last_heartbeat_at=bindparam("b_at", type_=UtcDateTime),
        utilization=bindparam("b_utilization", type_=JSON),
        agent_version=bindparam("b_agent_version"),
    )
)
# Apart, and only where it changes anything: `active` is in the listing indexes, and setting it
# on every heartbeat rewrote them all.
_ACTIVATE = (
    update(Resource)
    .where(Resource.id == bindparam("b_resource_id"), Resource.active.is_(False))
    .values(active=True)
)
_UNACKNOWLEDGED = select(Job.assigned_resource_id, Job.id).where(
    Job.status == JobStatus.CANCELLED.value,
    Job.cancel_acknowledged.is_(False),
    Job.assigned_resource_id.is_not(None),
)
_CANCELLATIONS_KEY = "calctra_cancellations"


class HeartbeatBuffer:
    """The latest heartbeat of each resource that is not yet in the database."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[str, Any]] = {}

    def add(self, resource_id: str, body: HeartbeatRequest, at: datetime) -> None:
        self._pending[resource_id] = {
            "b_resource_id": resource_id,
            "b_at": at,
            "b_utilization": body.utilization.model_dump(by_alias=True),
            "b_agent_version": body.agent_version,
        }

    def flush(self, db: Database) -> int:
        """Write the pending heartbeats in one transaction; returns how many. Those of a
        failed write are kept for the next flush, unless a newer one replaced them."""
        pending, self._pending = self._pending, {}
        if not pending:
            return 0
        rows = list(pending.values())
        try:
            with db.write() as connection:
                connection.execute(_RECORD, rows)
                activated = connection.execute(_ACTIVATE, rows).rowcount
        except Exception:
            for resource_id, row in pending.items():
                self._pending.setdefault(resource_id, row)
            raise
        if activated:
            logger.info("resources active again count=%d", activated)
        return len(rows)


def note_cancellation(
    session: Session, resource_id: str | None, job_id: str, acknowledged: bool = False
) -> None:
    """Tell this process's CancelledJobs, once the transaction commits, that the owner
    cancelled a job that `resource_id` held, or that its agent acknowledged it."""
    if resource_id:
        notes = session.info.setdefault(_CANCELLATIONS_KEY, [])
        notes.append((resource_id, job_id, acknowledged))


class CancelledJobs:
    """The jobs whose owner cancelled them while a resource held them, and that the agent has
    not yet acknowledged, by resource."""

    def __init__(self) -> None:
        self._by_resource: dict[str, set[str]] = {}

    def of(self, resource_id: str) -> list[str]:
        return sorted(self._by_resource.get(resource_id, ()))

    def reload(self, db: Database) -> None:
        """Read them all from the database, with the changes of other server processes."""
        with db.read() as connection:
            rows = connection.execute(_UNACKNOWLEDGED).all()
        by_resource: dict[str, set[str]] = {}
        for resource_id, job_id in rows:
            by_resource.setdefault(str(resource_id), set()).add(job_id)
        self._by_resource = by_resource

    def committed(self, session: Session) -> None:
        """The database's after-commit listener: apply what the transaction noted."""
        for resource_id, job_id, acknowledged in session.info.pop(_CANCELLATIONS_KEY, ()):
            jobs = self._by_resource.setdefault(resource_id, set())
            if acknowledged:
                jobs.discard(job_id)
            else:
                jobs.add(job_id)


def expire_silent_resources(session: Session, timeout_s: float, now: datetime) -> int:
    """Turn inactive the resources whose agent sent no heartbeat for `timeout_s`; resources
    that never had an agent are left alone. Returns how many turned inactive."""
    result = session.execute(
        update(Resource)
        .where(
            # IS NOT false, not IS true: given an equality, SQLite walks an index that starts
            # with `active` (250 ms over 100,000 resources, the event loop stalled each pass)
            # instead of the heartbeat index's range.
            Resource.active.is_not(False),
            Resource.last_heartbeat_at < now - timedelta(seconds=timeout_s),
        )
        .values(active=False)
        .execution_options(synchronize_session=False)
    )
    expired = int(result.rowcount)  # type: ignore[attr-defined]
    if expired:
        logger.info("resources expired count=%d timeout_s=%g", expired, timeout_s)
    return expired
