"""The agent's local state: a SQLite file in the state dir.

It holds the credentials, every accepted job with its state, and an outbox of reports and
claims that the platform has not yet acknowledged. Rows leave the outbox only once the server
answered them, so a crash or an outage loses nothing; the server treats repeated reports and
claims as no-ops, so sending one again doubles nothing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calctra_agent.errors import StateError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT '',
    accepted_at REAL NOT NULL,
    finished_at REAL,
    failure TEXT,
    payment REAL,
    claimed INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ix_outbox_job ON outbox (job_id, seq);
"""

OPEN_STATUSES = ("ACCEPTED", "RUNNING")

PRICE_OVERRIDE_KEY = "price_per_hour"
"""The meta key of the price `calctra-agent pricing set` gave, which wins over the setting."""


@dataclass(frozen=True)
class Credentials:
    resource_id: str
    agent_token: str
    token_id: str


@dataclass(frozen=True)
class LocalJob:
    job_id: str
    status: str
    spec: dict[str, Any]
    progress: int
    message: str
    accepted_at: float
    finished_at: float | None
    failure: dict[str, Any] | None
    payment: float | None
    claimed: bool


@dataclass(frozen=True)
class OutboxItem:
    seq: int
    job_id: str
    kind: str
    payload: dict[str, Any]
    attempts: int


class State:
    """Thread-safe access to agent.db; every method is one transaction."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "agent.db"
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created 0600 before SQLite opens it: the file holds the agent token.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(
                f"cannot open the agent's state at {self.path}: {exc}; check that the state "
                "dir exists and belongs to the agent's user"
            ) from exc
        self._lock = threading.Lock()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # meta

    def get(self, key: str) -> str | None:
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, **values: str | None) -> None:
        with self._tx() as db:
            for key, value in values.items():
                if value is None:
                    db.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
                    )

    def instance_id(self) -> str:
        """This agent's id, made once per state dir: its containers carry it as a label, and
        it touches no container without it."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'instance_id'").fetchone()
            if row is not None:
                return str(row[0])
            value = uuid.uuid4().hex
            db.execute("INSERT INTO meta (key, value) VALUES ('instance_id', ?)", (value,))
            return value

    def price_override(self) -> float | None:
        value = self.get(PRICE_OVERRIDE_KEY)
        return None if value is None else float(value)

    def credentials(self) -> Credentials | None:
        resource_id, token, token_id = (
            self.get(k) for k in ("resource_id", "agent_token", "token_id")
        )
        if not (resource_id and token and token_id):
            return None
        return Credentials(resource_id, token, token_id)

    # jobs

    def add_job(self, job_id: str, spec: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO jobs (job_id, status, spec, accepted_at) "
                "VALUES (?, 'ACCEPTED', ?, ?)",
                (job_id, json.dumps(spec), time.time()),
            )

    def jobs(self, statuses: tuple[str, ...] | None = None) -> list[LocalJob]:
        query = "SELECT * FROM jobs"
        args: tuple[str, ...] = ()
        if statuses:
            query += f" WHERE status IN ({','.join('?' * len(statuses))})"
            args = statuses
        with self._tx() as db:
            rows = db.execute(query + " ORDER BY accepted_at", args).fetchall()
        return [_local_job(row) for row in rows]

    def job(self, job_id: str) -> LocalJob | None:
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _local_job(row)

    def update_job(self, job_id: str, **fields: Any) -> None:
        with self._tx() as db:
            _set_job(db, job_id, fields)

    # outbox

    def enqueue(self, job_id: str, kind: str, payload: dict[str, Any], **job_fields: Any) -> None:
        """Queue a report; with `job_fields`, update the job in the same transaction."""
        with self._tx() as db:
            if kind == "progress":
                # Only the newest progress matters: older unsent ones are dropped.
                db.execute("DELETE FROM outbox WHERE job_id = ? AND kind = 'progress'", (job_id,))
            db.execute(
                "INSERT INTO outbox (job_id, kind, payload) VALUES (?, ?, ?)",
                (job_id, kind, json.dumps(payload)),
            )
            if job_fields:
                _set_job(db, job_id, job_fields)

    def due(self, now: float) -> list[OutboxItem]:
        """The first pending item of each job, when it is due: reports go out in order."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT seq, job_id, kind, payload, attempts, next_attempt_at FROM outbox "
                "WHERE seq IN (SELECT MIN(seq) FROM outbox GROUP BY job_id) ORDER BY seq"
            ).fetchall()
        return [OutboxItem(r[0], r[1], r[2], json.loads(r[3]), r[4]) for r in rows if r[5] <= now]

    def done(self, seq: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))

    def drop_job_reports(self, job_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM outbox WHERE job_id = ?", (job_id,))

    def retry_later(self, seq: int, delay_s: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ? WHERE seq = ?",
                (time.time() + delay_s, seq),
            )

    def pending_count(self) -> int:
        with self._tx() as db:
            return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


_JOB_FIELDS = frozenset(
    {"status", "progress", "message", "finished_at", "failure", "payment", "claimed"}
)


def _set_job(db: sqlite3.Connection, job_id: str, fields: dict[str, Any]) -> None:
    unknown = set(fields) - _JOB_FIELDS
    if unknown:
        raise ValueError(f"unknown job fields: {sorted(unknown)}")
    values = {
        k: json.dumps(v) if k == "failure" and v is not None else v for k, v in fields.items()
    }
    assignments = ", ".join(f"{name} = ?" for name in values)
    db.execute(f"UPDATE jobs SET {assignments} WHERE job_id = ?", (*values.values(), job_id))


def _local_job(row: tuple[Any, ...]) -> LocalJob:
    job_id, status, spec, progress, message, accepted, finished, failure, payment, claimed = row
    return LocalJob(
        job_id=job_id,
        status=status,
        spec=json.loads(spec),
        progress=progress,
        message=message,
        accepted_at=accepted,
        finished_at=finished,
        failure=json.loads(failure) if failure else None,
        payment=payment,
        claimed=bool(claimed),
    )
