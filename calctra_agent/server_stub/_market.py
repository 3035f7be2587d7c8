"""The market index: GET /resources answered from memory, exactly as the database would.

The listing filters the active resources on a few columns and pages them in price order.
SQLite finds a page in well under a millisecond, but its exact total has to decode every
matching index entry: 2 to 30 ms over 100,000 resources, on every request. The index holds
those columns of every active resource in numpy arrays sorted by (price_per_hour, id), so a
filter is a vectorised mask, the total is the mask's count and a page is a slice of its
positions, already in order. The resources on a page are shown as JSON rendered once and
kept, so that a page costs no database read and no serialization of its own: only a resource
shown for the first time, or changed since, is read from the database, by primary key.

It stays exact with every other writer, other server processes on the same database
included, through change logs kept by the database itself: triggers on `resources` append
the id of each resource inserted, deleted, or changed in a listed column or in `active` to
`market_changes`, and of each resource changed in a column that the listing only shows (its
name, say) to `market_shown_changes`. Each search first reloads the resources of the first
log and forgets the JSON of those of both logged since the last change it applied, in the
same read snapshot as the page. The triggers keep the newest `KEPT_CHANGES` entries of each
log; a process that fell further behind reloads everything.

The triggers are SQLite's. On any other database the listing is the plain SQL query
(`sql_search`), exact but with SQL's count: PostgreSQL would need a trigger function and,
because its sequences are not handed out in commit order, a lock that keeps a change from
committing after a newer one; neither is written, as the project's tests run no PostgreSQL.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from sqlalchemy import (
    DDL,
    ColumnElement,
    Connection,
    Integer,
    String,
    bindparam,
    event,
    func,
    select,
    type_coerce,
)
from sqlalchemy.orm import Mapped, mapped_column

from calctra_agent.server_stub._db import Base, Resource, from_micro
from calctra_agent.wire import Resource as WireResource

__all__ = [
    "KEPT_CHANGES",
    "Filters",
    "MarketChange",
    "MarketIndex",
    "PageRow",
    "ShownChange",
    "page_rows",
    "resource_fields",
    "resource_json",
    "sql_search",
]

logger = logging.getLogger(__name__)

KEPT_CHANGES = 10_000
"""Entries the change log keeps; a process further behind than this reloads the index."""
_RELOAD_OVER_CHANGES = 5_000
"""Past this many changes to catch up on, one full reload is cheaper than applying each."""
_KEPT_JSON = 20_000
"""Resources whose listed JSON is kept; past this, all is forgotten and rendered anew."""
_IDS_PER_QUERY = 500


class MarketChange(Base):
    """A resource that was inserted, deleted or changed in a listed column, logged by the
    triggers below. AUTOINCREMENT, so that a sequence number is never handed out twice."""

    __tablename__ = "market_changes"
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(32))


class ShownChange(Base):
    """A resource changed in a column that the listing shows but neither filters nor orders
    on, logged by the triggers below: its listed JSON is stale, its place in the index is not."""

    __tablename__ = "market_shown_changes"
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(32))


_LISTED = ("type", "cpu_cores", "memory_gb", "storage_gb", "has_gpu", "price_per_hour", "active")
_SHOWN = ("owner_id", "name", "description", "gpu_model", "gpu_memory_gb", "availability",
          "reputation")  # fmt: skip


def _prune(table: str) -> str:
    return f"DELETE FROM {table} WHERE seq <= (SELECT max(seq) FROM {table}) - {KEPT_CHANGES};"


def _changed(columns: Sequence[str]) -> str:
    # SQLite fires UPDATE OF for every named column in the SET clause, changed or not: this
    # WHEN logs a change only, so that an update which sets a column as it was (a heartbeat's
    # `active`, the price of a rename through the API) stays out of that column's log.
    return " OR ".join(f"OLD.{column} IS NOT NEW.{column}" for column in columns)


_TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS market_resource_inserted AFTER INSERT ON resources BEGIN "
    "INSERT INTO market_changes (resource_id) VALUES (NEW.id); "
    f"{_prune('market_changes')} END",
    "CREATE TRIGGER IF NOT EXISTS market_resource_deleted AFTER DELETE ON resources BEGIN "
    "INSERT INTO market_changes (resource_id) VALUES (OLD.id); "
    f"{_prune('market_changes')} END",
    "CREATE TRIGGER IF NOT EXISTS market_resource_updated "
    f"AFTER UPDATE OF id, {', '.join(_LISTED)} ON resources "
    f"WHEN {_changed(('id', *_LISTED))} BEGIN "
    "INSERT INTO market_changes (resource_id) VALUES (OLD.id); "
    "INSERT INTO market_changes (resource_id) SELECT NEW.id WHERE NEW.id IS NOT OLD.id; "
    f"{_prune('market_changes')} END",
    # A change of id is in the first log, which forgets the JSON of both ids.
    "CREATE TRIGGER IF NOT EXISTS market_resource_shown_updated "
    f"AFTER UPDATE OF {', '.join(_SHOWN)} ON resources WHEN {_changed(_SHOWN)} BEGIN "
    "INSERT INTO market_shown_changes (resource_id) VALUES (NEW.id); "
    f"{_prune('market_shown_changes')} END",
)
for _trigger in _TRIGGERS:
    event.listen(Base.metadata, "after_create", DDL(_trigger).execute_if(dialect="sqlite"))


@dataclass(frozen=True)
class Filters:
    """What GET /resources filters on, None for no filter; `max_price` is in micro-tokens."""

    type: str | None = None
    min_cpu: int | None = None
    min_memory: float | None = None
    min_storage: float | None = None
    has_gpu: bool | None = None
    max_price: int | None = None

    def conditions(self) -> list[ColumnElement[bool]]:
        """The listing's WHERE clause: active resources that pass every filter."""
        conditions: list[ColumnElement[bool]] = [Resource.active.is_(True)]
        if self.type is not None:
            conditions.append(Resource.type == self.type)
        if self.min_cpu is not None:
            conditions.append(Resource.cpu_cores >= self.min_cpu)
        if self.min_memory is not None:
            conditions.append(Resource.memory_gb >= self.min_memory)
        if self.min_storage is not None:
            conditions.append(Resource.storage_gb >= self.min_storage)
        if self.has_gpu is not None:
            conditions.append(Resource.has_gpu.is_(self.has_gpu))
        if self.max_price is not None:
            conditions.append(Resource.price_per_hour <= self.max_price)
        return conditions


_ORDER = (Resource.price_per_hour, Resource.id)


def sql_search(
    connection: Connection, filters: Filters, offset: int, limit: int
) -> tuple[int, list[str]]:
    """The listing as SQL: (total, ids on the page). The reference the index agrees with, and
    the listing on databases other than SQLite."""
    conditions = filters.conditions()
    # count(*), not count(id): SQLite may then count the narrowest index that covers the
    # filters, half the time of the widest over 100,000 resources.
    total = connection.scalar(select(func.count()).select_from(Resource).where(*conditions))
    page = select(Resource.id).where(*conditions).order_by(*_ORDER).offset(offset).limit(limit)
    return total or 0, list(connection.scalars(page))


class PageRow(NamedTuple):
    """What a listed resource shows, as read from the database."""

    id: str
    name: str
    description: str
    type: str
    owner_id: str
    cpu_cores: int
    memory_gb: float
    storage_gb: float
    gpu_model: str | None
    gpu_memory_gb: float | None
    price_per_hour: int
    availability: dict[str, Any] | None
    reputation: float
    active: bool


_PAGE = select(*(Resource.__table__.c[name] for name in PageRow._fields)).where(
    Resource.id.in_(bindparam("ids", expanding=True))
)
_SQLITE_PAGE = f"SELECT {', '.join(PageRow._fields)} FROM resources WHERE id IN ({{}})"


def page_rows(connection: Connection, ids: Sequence[str]) -> list[PageRow]:
    """The resources with these ids, in the order of `ids`; an id with no row is left out."""
    if not ids:
        return []
    if connection.dialect.name == "sqlite":
        rows = [_page_row(*values) for values in _sqlite_page(connection, ids)]
    else:
        rows = [PageRow(*row) for row in connection.execute(_PAGE, {"ids": ids})]
    by_id = {row.id: row for row in rows}
    return [by_id[resource_id] for resource_id in ids if resource_id in by_id]


def _sqlite_page(connection: Connection, ids: Sequence[str]) -> list[tuple[Any, ...]]:
    # Straight through the driver, on the connection's own transaction: SQLAlchemy's
    # statement and result machinery cost five times the query.
    return _sqlite_rows(connection, _SQLITE_PAGE.format(", ".join("?" * len(ids))), ids)


def _sqlite_rows(
    connection: Connection, sql: str, parameters: Sequence[Any] = ()
) -> list[tuple[Any, ...]]:
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql, parameters)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _page_row(*values: Any) -> PageRow:
    # What SQLAlchemy's JSON and Boolean types make of SQLite's values.
    *plain, availability, reputation, active = values
    loaded = None if availability is None else json.loads(availability)
    return PageRow._make([*plain, loaded, reputation, bool(active)])


def resource_fields(row: Resource | PageRow) -> dict[str, Any]:
    """A resource as the fields of the wire's Resource, to validate in one go."""
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "type": row.type,
        "owner": row.owner_id,
        "specs": {
            "cpu_cores": row.cpu_cores,
            "memory_gb": row.memory_gb,
            "storage_gb": row.storage_gb,
            "gpu_model": row.gpu_model,
            "gpu_memory_gb": row.gpu_memory_gb,
        },
        "price_per_hour": from_micro(row.price_per_hour),
        "availability": row.availability or None,
        "reputation": round(row.reputation, 2),
        "active": row.active,
    }


def resource_json(row: PageRow) -> bytes:
    """A resource as the listing shows it: the wire's Resource as JSON, by its aliases."""
    return (
        WireResource.model_validate(resource_fields(row)).model_dump_json(by_alias=True).encode()
    )


_LISTED_ROWS = select(
    Resource.id,
    Resource.type,
    Resource.cpu_cores,
    Resource.memory_gb,
    Resource.storage_gb,
    # As stored, not as a bool: the filter is `has_gpu IS 1` (or 0), which a 2 passes as
    # neither.
    type_coerce(Resource.has_gpu, Integer).label("has_gpu"),
    Resource.price_per_hour,
).where(Resource.active.is_(True))
_ALL_LISTED = _LISTED_ROWS.order_by(*_ORDER)
# One subquery per bound, not min() and max() in one: SQLite answers each from the primary
# key's b-tree only when it is alone in its SELECT.
_SEQ_RANGES = "SELECT " + ", ".join(
    f"(SELECT {bound}(seq) FROM {table})"
    for table in ("market_changes", "market_shown_changes")
    for bound in ("max", "min")
)


def _first_hits(mask: np.ndarray, wanted: int, total: int) -> np.ndarray:
    """The positions of the first `wanted` of the `total` true values in `mask`: from a prefix
    of the mask where they are spread evenly enough, which a first page's are, or else all."""
    if wanted <= 0:
        return np.empty(0, dtype=np.intp)
    prefix = len(mask) * wanted * 2 // total + 64
    if prefix < len(mask):
        hits = np.flatnonzero(mask[:prefix])
        if len(hits) >= wanted:
            return hits[:wanted]
    return np.flatnonzero(mask)[:wanted]


class _Columns:
    """The listed columns of the active resources, as arrays sorted by (price, id)."""

    def __init__(self, rows: Sequence[Any], type_codes: dict[str, int]) -> None:
        self._type_codes = type_codes
        columns = list(zip(*rows, strict=True)) if rows else [()] * 7
        ids, types, cpu, memory, storage, gpu, price = columns
        self.ids = np.array(ids, dtype=object)
        self.type = np.array([self._code(kind) for kind in types], dtype=np.int32)
        self.cpu = np.array(cpu, dtype=np.int64)
        self.memory = np.array(memory, dtype=np.float64)
        self.storage = np.array(storage, dtype=np.float64)
        self.gpu = np.array(gpu, dtype=np.int64)
        self.price = np.array(price, dtype=np.int64)
        self._price_of = dict(zip(ids, price, strict=True))

    def __len__(self) -> int:
        return len(self.ids)

    def _code(self, kind: str) -> int:
        return self._type_codes.setdefault(kind, len(self._type_codes))

    def search(self, filters: Filters, offset: int, limit: int) -> tuple[int, list[str]]:
        end = len(self.ids)
        if filters.max_price is not None:
            # Sorted by price: the affordable resources are a prefix.
            end = int(np.searchsorted(self.price, filters.max_price, side="right"))
        masks = self._masks(filters, end)
        if not masks:
            return end, self.ids[offset : min(offset + limit, end)].tolist()
        mask = masks[0]
        for other in masks[1:]:
            mask &= other
        total = int(np.count_nonzero(mask))
        hits = _first_hits(mask, min(offset + limit, total), total)
        return total, self.ids[hits[offset:]].tolist()

    def _masks(self, filters: Filters, end: int) -> list[np.ndarray]:
        masks = []
        if filters.type is not None:
            masks.append(self.type[:end] == self._type_codes.get(filters.type, -1))
        if filters.min_cpu is not None:
            masks.append(self.cpu[:end] >= filters.min_cpu)
        if filters.min_memory is not None:
            masks.append(self.memory[:end] >= filters.min_memory)
        if filters.min_storage is not None:
            masks.append(self.storage[:end] >= filters.min_storage)
        if filters.has_gpu is not None:
            masks.append(self.gpu[:end] == int(filters.has_gpu))
        return masks

    def _position(self, resource_id: str, price: int) -> int:
        low = int(np.searchsorted(self.price, price, side="left"))
        high = int(np.searchsorted(self.price, price, side="right"))
        return bisect.bisect_left(self.ids, resource_id, low, high)  # type: ignore[call-overload]

    def remove(self, ids: Iterable[str]) -> None:
        """Drop these resources where present."""
        positions = [
            self._position(resource_id, self._price_of.pop(resource_id))
            for resource_id in ids
            if resource_id in self._price_of
        ]
        if positions:
            for name in ("ids", "type", "cpu", "memory", "storage", "gpu", "price"):
                setattr(self, name, np.delete(getattr(self, name), positions))

    def add(self, rows: Iterable[Any]) -> None:
        """Insert resources that are not in the index, keeping the order."""
        ordered = sorted(rows, key=lambda row: (row.price_per_hour, row.id))
        if not ordered:
            return
        positions = [self._position(row.id, row.price_per_hour) for row in ordered]
        values = {
            "ids": [row.id for row in ordered],
            "type": [self._code(row.type) for row in ordered],
            "cpu": [row.cpu_cores for row in ordered],
            "memory": [row.memory_gb for row in ordered],
            "storage": [row.storage_gb for row in ordered],
            "gpu": [row.has_gpu for row in ordered],
            "price": [row.price_per_hour for row in ordered],
        }
        for name, added in values.items():
            column = getattr(self, name)
            setattr(self, name, np.insert(column, positions, np.array(added, column.dtype)))
        self._price_of.update((row.id, row.price_per_hour) for row in ordered)


def _can_catch_up(applied: int, newest: int, oldest: int) -> bool:
    """Whether a log that holds `oldest` to `newest` still has every change after `applied`,
    few enough to apply one by one."""
    behind = newest - applied
    return (
        behind >= 0  # else the log was replaced, with the database
        and behind <= _RELOAD_OVER_CHANGES
        and oldest <= applied + 1  # else changes this process has not seen were pruned
    )


class MarketIndex:
    """The active resources' listed columns in memory, and the JSON of those listed so far,
    caught up with the database's change logs before each search. Loaded on first use; one
    per server process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._columns: _Columns | None = None
        self._type_codes: dict[str, int] = {}
        self._seq = 0
        """The newest change in the log that the index reflects."""
        self._shown_seq = 0
        """The newest change in the log of shown columns that the kept JSON reflects."""
        self._json: dict[str, bytes] = {}
        """Resource id -> its `resource_json`, as of the changes applied."""

    def search(
        self, connection: Connection, filters: Filters, offset: int, limit: int
    ) -> tuple[int, list[str]]:
        """(total, ids on the page) of the listing; `connection` should hold one snapshot."""
        if connection.dialect.name != "sqlite":
            return sql_search(connection, filters, offset, limit)
        with self._lock:
            return self._caught_up(connection).search(filters, offset, limit)

    def listing(
        self, connection: Connection, filters: Filters, offset: int, limit: int
    ) -> tuple[int, list[bytes]]:
        """(total, `resource_json` of each resource on the page): the page of `search`, shown."""
        if connection.dialect.name != "sqlite":
            total, ids = sql_search(connection, filters, offset, limit)
            return total, [resource_json(row) for row in page_rows(connection, ids)]
        with self._lock:
            total, ids = self._caught_up(connection).search(filters, offset, limit)
            return total, self._shown(connection, ids)

    def _shown(self, connection: Connection, ids: Sequence[str]) -> list[bytes]:
        """The JSON of these resources, rendered from the database where not kept."""
        missing = [resource_id for resource_id in ids if resource_id not in self._json]
        if missing and len(self._json) + len(missing) > _KEPT_JSON:
            self._json = {}
            missing = list(ids)
        for row in page_rows(connection, missing):
            self._json[row.id] = resource_json(row)
        return [self._json[resource_id] for resource_id in ids if resource_id in self._json]

    def _caught_up(self, connection: Connection) -> _Columns:
        [(newest, oldest, shown_newest, shown_oldest)] = _sqlite_rows(connection, _SEQ_RANGES)
        self._forget_shown_changes(connection, shown_newest or 0, shown_oldest or 0)
        newest = newest or 0
        columns = self._columns
        if columns is None or not _can_catch_up(self._seq, newest, oldest or 0):
            return self._reload(connection, newest)
        if newest != self._seq:
            self._apply(connection, columns, newest)
        return columns

    def _reload(self, connection: Connection, newest: int) -> _Columns:
        started = time.monotonic()
        rows = connection.execute(_ALL_LISTED).all()
        self._columns = _Columns(rows, self._type_codes)
        self._seq = newest
        self._json = {}
        elapsed_s = time.monotonic() - started
        logger.info(
            "market index loaded resources=%d seq=%d in_s=%.2f", len(rows), newest, elapsed_s
        )
        return self._columns

    def _apply(self, connection: Connection, columns: _Columns, newest: int) -> None:
        changed = list(
            connection.scalars(
                select(MarketChange.resource_id)
                .where(MarketChange.seq > self._seq, MarketChange.seq <= newest)
                .distinct()
            )
        )
        rows: list[Any] = []
        for start in range(0, len(changed), _IDS_PER_QUERY):
            chunk = changed[start : start + _IDS_PER_QUERY]
            rows += connection.execute(_LISTED_ROWS.where(Resource.id.in_(chunk))).all()
        columns.remove(changed)
        columns.add(rows)
        for resource_id in changed:
            self._json.pop(resource_id, None)
        logger.debug("market index caught up changed=%d seq=%d", len(changed), newest)
        self._seq = newest

    def _forget_shown_changes(self, connection: Connection, newest: int, oldest: int) -> None:
        """Forget the JSON of the resources changed in a shown column since the last search,
        or all of it where the log no longer says which."""
        if newest == self._shown_seq:
            return
        if _can_catch_up(self._shown_seq, newest, oldest):
            changed = connection.scalars(
                select(ShownChange.resource_id)
                .where(ShownChange.seq > self._shown_seq, ShownChange.seq <= newest)
                .distinct()
            )
            for resource_id in changed:
                self._json.pop(resource_id, None)
        else:
            self._json = {}
        self._shown_seq = newest
