"""The reference server's database: SQLAlchemy 2 models and the engine.

SQLite in the data dir is the embedded default (WAL mode); any SQLAlchemy URL works, a
PostgreSQL one included. Amounts of tokens are stored as whole micro-tokens (1e-6) so that the
ledger never rounds.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Connection,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

logger = logging.getLogger(__name__)

MICRO = 1_000_000


def to_micro(amount: float) -> int:
    return round(amount * MICRO)


def from_micro(amount: int) -> float:
    return amount / MICRO


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps no offset)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(200))
    wallet_address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Account(Base):
    """A ledger account. Only the EXTERNAL account (the world outside the ledger, where
    deposits come from) may go below zero."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint("kind = 'EXTERNAL' OR balance >= 0", name="balance_not_negative"),
    )

    id: Mapped[str] = mapped_column(String(48), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # USER, ESCROW, EXTERNAL
    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id"))
    balance: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerTransaction(Base):
    """One movement of value: `amount` leaves `debit_account` and reaches `credit_account`."""

    __tablename__ = "transactions"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        Index("ix_transactions_debit", "debit_account", "created_at"),
        Index("ix_transactions_credit", "credit_account", "created_at"),
        Index("ix_transactions_related", "related_type", "related_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    debit_account: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    credit_account: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    related_type: Mapped[str | None] = mapped_column(String(16))
    related_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


_FILTERED = ("cpu_cores", "memory_gb", "storage_gb", "type")


class Resource(Base):
    __tablename__ = "resources"
    # The listing indexes hold every column that GET /resources filters on, after its order
    # (price, id): the total is counted from an index alone and a page is walked in order, so
    # only the rows on the page are read from the table. Reading a row per filtered resource
    # made one count over 100,000 resources take 50 ms and more.
    __table_args__ = (
        Index("ix_resources_listing", "active", "price_per_hour", "id", "has_gpu", *_FILTERED),
        Index("ix_resources_gpu", "active", "has_gpu", "price_per_hour", "id", *_FILTERED),
        Index("ix_resources_match", "active", "reputation", "price_per_hour"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(16))
    cpu_cores: Mapped[int] = mapped_column(Integer)
    memory_gb: Mapped[float] = mapped_column(Float)
    storage_gb: Mapped[float] = mapped_column(Float)
    has_gpu: Mapped[bool] = mapped_column(Boolean)
    gpu_model: Mapped[str | None] = mapped_column(String(200))
    gpu_memory_gb: Mapped[float | None] = mapped_column(Float)
    price_per_hour: Mapped[int] = mapped_column(BigInteger)
    availability: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reputation: Mapped[float] = mapped_column(Float, default=0.0)
    rating_count: Mapped[int] = mapped_column(Integer, default=0)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime, index=True)
    """NULL until its agent's first heartbeat; only resources with an agent expire."""
    utilization: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    agent_version: Mapped[str | None] = mapped_column(String(64))


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner", "owner_id", "created_at"),
        Index("ix_jobs_status", "status"),
        # Every server process reads the cancellations that agents have yet to acknowledge
        # each second (_heartbeats.CancelledJobs): this finds them among all cancelled jobs.
        Index("ix_jobs_cancelled", "status", "cancel_acknowledged", "assigned_resource_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(32))
    code: Mapped[str] = mapped_column(Text)
    datasets: Mapped[list[str]] = mapped_column(JSON, default=list)
    requirements: Mapped[dict[str, Any]] = mapped_column(JSON)
    budget: Mapped[int] = mapped_column(BigInteger)
    deadline: Mapped[datetime | None] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16))
    status_message: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    matched_resources: Mapped[list[str]] = mapped_column(JSON, default=list)
    assigned_resource_id: Mapped[str | None] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    rating: Mapped[int | None] = mapped_column(Integer)
    feedback: Mapped[str | None] = mapped_column(Text)
    accepted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    price_per_hour: Mapped[int | None] = mapped_column(BigInteger)
    """The assigned resource's price when it accepted the job; the payment uses it."""
    failure: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cancel_acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    """Whether the agent that held the job confirmed that it stopped it after a cancel."""
    payment_tx_id: Mapped[str | None] = mapped_column(String(32))
    refund_tx_id: Mapped[str | None] = mapped_column(String(32))
    image: Mapped[str | None] = mapped_column(String(255))
    """The container image the owner asked for; NULL: the provider's default."""
    result_file: Mapped[str | None] = mapped_column(String(128))
    """The result archive's file name in the results dir; NULL until one is uploaded."""
    result_size: Mapped[int | None] = mapped_column(BigInteger)
    result_sha256: Mapped[str | None] = mapped_column(String(64))
    result_uploaded_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_owner", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    type: Mapped[str] = mapped_column(String(100))
    format: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    is_encrypted: Mapped[bool] = mapped_column(Boolean, default=False)
    is_public: Mapped[bool] = mapped_column(Boolean, default=False)
    access_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Webhook(Base):
    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class WebhookDelivery(Base):
    """The durable outbox: one row per event and webhook, written in the same database
    transaction as the change that caused the event."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_deliveries_due", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    webhook_id: Mapped[str] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class AgentTokenRow(Base):
    """An agent token, scoped to one resource. Only the token's SHA-256 is stored."""

    __tablename__ = "agent_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    # No foreign key: the token row outlives its resource, revoked, for the owner's listing.
    resource_id: Mapped[str] = mapped_column(String(32), index=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class JobDecline(Base):
    """A resource turned an offer down: the job is never offered to it again."""

    __tablename__ = "job_declines"

    job_id: Mapped[str] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    resource_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


def make_engine(url: str) -> Engine:
    """Create the engine and the schema; SQLite gets WAL mode and enforced foreign keys."""
    is_sqlite = url.startswith("sqlite")
    connect_args = {"check_same_thread": False, "timeout": 30} if is_sqlite else {}
    engine = create_engine(url, connect_args=connect_args)
    if is_sqlite:
        event.listen(engine, "connect", _configure_sqlite)
    Base.metadata.create_all(engine)
    _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns that a newer version brought to a database that an older one
    created: create_all() makes missing tables only, and every later column is nullable."""
    existing = inspect(engine)
    with engine.begin() as connection:
        for table in Base.metadata.sorted_tables:
            if not existing.has_table(table.name):
                continue
            present = {column["name"] for column in existing.get_columns(table.name)}
            for column in table.columns:
                if column.name in present or not column.nullable:
                    continue
                kind = column.type.compile(dialect=engine.dialect)
                connection.exec_driver_sql(
                    f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'
                )
                logger.info("database column added table=%s column=%s", table.name, column.name)


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """The engine and a session factory; `transaction()` commits or rolls back as one unit."""

    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    @contextmanager
    def read(self, snapshot: bool = True) -> Iterator[Connection]:
        """A Core connection for reads, cheaper than a Session, for the endpoints that only
        read; whatever it does is rolled back. With `snapshot`, all its statements see the
        database as of the first; without, each sees it as of its own start."""
        with self.engine.connect() as connection:
            if snapshot and connection.dialect.name == "sqlite":
                # pysqlite opens no transaction for a SELECT, so each would see the database
                # as of its own start.
                connection.exec_driver_sql("BEGIN")
            yield connection

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A Core connection in a transaction that commits or rolls back as one unit; no
        Session, no after-commit listeners. For the hottest writes (heartbeats)."""
        with self.engine.begin() as connection:
            yield connection

    def on_commit(self, listener: Callable[[Session], None]) -> None:
        """Call `listener` with each session right after it commits."""
        event.listen(self._sessions, "after_commit", listener)

    def dispose(self) -> None:
        self.engine.dispose()
