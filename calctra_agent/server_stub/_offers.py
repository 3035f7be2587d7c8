"""Waking the agents' long polls (GET /provider/offers) when something arrives for them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator

from sqlalchemy.orm import Session

_WAKE_KEY = "calctra_wake_resources"


def wake_after_commit(session: Session, resource_ids: Iterable[str | None]) -> None:
    """Wake the long polls of these resources once the session's transaction commits; a
    rolled back transaction wakes nobody."""
    wake: set[str] = session.info.setdefault(_WAKE_KEY, set())
    wake.update(rid for rid in resource_ids if rid)


class OfferNotifier:
    """The long polls waiting in this process, by resource id.

    A wake is only a hint to look at the database again: a long poll also looks every second
    or so, so that a change committed by another server process reaches it too.
    """

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def committed(self, session: Session) -> None:
        """The database's after-commit listener: wake what the transaction asked to."""
        resource_ids = session.info.pop(_WAKE_KEY, None)
        if resource_ids:
            self.wake(resource_ids)

    def wake(self, resource_ids: Iterable[str]) -> None:
        loop = self._loop
        if loop is None:
            return
        for resource_id in resource_ids:
            for woken in list(self._waiters.get(resource_id, ())):
                # Thread-safe, for a commit made outside the event loop's thread.
                loop.call_soon_threadsafe(woken.set)

    @contextlib.contextmanager
    def listening(self, resource_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever something may have arrived for `resource_id`."""
        self._loop = asyncio.get_running_loop()
        woken = asyncio.Event()
        waiters = self._waiters.setdefault(resource_id, set())
        waiters.add(woken)
        try:
            yield woken
        finally:
            waiters.discard(woken)
            if not waiters:
                self._waiters.pop(resource_id, None)
