"""Agent tokens: the credential of one agent, scoped to one resource.

A token is `cat_` and 43 random URL-safe characters; the database holds only its SHA-256.
Heartbeats must be cheap, so a checked token is kept in memory and looked up in the database
again only every few seconds.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from calctra_agent.server_stub._db import AgentTokenRow, Database, utcnow
from calctra_agent.wire import AGENT_TOKEN_PREFIX

logger = logging.getLogger(__name__)

RECHECK_S = 10.0
"""How long a token checked in the database is trusted from memory. A revocation made through
this process takes effect at once; one made through another process within this time."""

LAST_USED_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class AgentPrincipal:
    """Who calls a provider endpoint: the resource an agent token is scoped to."""

    owner_id: str
    resource_id: str
    token_id: str


def new_agent_token() -> str:
    return AGENT_TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def revoke_resource_tokens(session: Session, resource_id: str) -> int:
    """Revoke every live token of a resource; returns how many."""
    result = session.execute(
        update(AgentTokenRow)
        .where(AgentTokenRow.resource_id == resource_id, AgentTokenRow.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass
class _Entry:
    principal: AgentPrincipal
    checked_at: float


class AgentTokenCache:
    """Live agent tokens by SHA-256, in memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: dict[str, _Entry] = {}
        self._clock = clock

    def principal(self, db: Database, token: str) -> AgentPrincipal | None:
        """Who `token` authenticates, or None for an unknown or revoked token."""
        digest = token_sha256(token)
        entry = self._entries.get(digest)
        now = self._clock()
        if entry is not None and now - entry.checked_at < RECHECK_S:
            return entry.principal
        principal = _load(db, digest)
        if principal is None:
            self._entries.pop(digest, None)
        else:
            self._entries[digest] = _Entry(principal, now)
        return principal

    def knows(self, digest: str) -> bool:
        """Whether a token with this SHA-256 was found live here lately (no database)."""
        return digest in self._entries

    def forget_token(self, token_id: str) -> None:
        self._forget(lambda principal: principal.token_id == token_id)

    def forget_resource(self, resource_id: str) -> None:
        self._forget(lambda principal: principal.resource_id == resource_id)

    def _forget(self, matches: Callable[[AgentPrincipal], bool]) -> None:
        for digest, entry in list(self._entries.items()):
            if matches(entry.principal):
                del self._entries[digest]


def _load(db: Database, digest: str) -> AgentPrincipal | None:
    with db.transaction() as session:
        row = session.scalar(
            select(AgentTokenRow).where(
                AgentTokenRow.token_sha256 == digest, AgentTokenRow.revoked_at.is_(None)
            )
        )
        if row is None:
            return None
        now = utcnow()
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_EVERY:
            row.last_used_at = now
        return AgentPrincipal(owner_id=row.owner_id, resource_id=row.resource_id, token_id=row.id)
