"""The double-entry token ledger.

Every movement is one `transactions` row that takes an amount from one account and gives it to
another, inside the caller's database transaction. A debit is a single conditional UPDATE
(`balance >= amount`), so two concurrent movements can never overdraw an account, on SQLite as
on PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from calctra_agent.server_stub._db import Account, LedgerTransaction, new_id, utcnow
from calctra_agent.server_stub._errors import ApiError
from calctra_agent.wire import ErrorCode, TransactionStatus, TransactionType

EXTERNAL_ACCOUNT = "external"


def user_account(user_id: str) -> str:
    return f"user:{user_id}"


def escrow_account(job_id: str) -> str:
    return f"escrow:{job_id}"


def open_user_account(session: Session, user_id: str) -> None:
    _ensure_external(session)
    session.add(Account(id=user_account(user_id), kind="USER", user_id=user_id, balance=0))


def open_escrow_account(session: Session, job_id: str, owner_id: str) -> None:
    session.add(Account(id=escrow_account(job_id), kind="ESCROW", user_id=owner_id, balance=0))
    session.flush()


def _ensure_external(session: Session) -> None:
    if session.get(Account, EXTERNAL_ACCOUNT) is None:
        session.add(Account(id=EXTERNAL_ACCOUNT, kind="EXTERNAL", balance=0))
        session.flush()


@dataclass(frozen=True)
class Related:
    type: str
    id: str


def move(
    session: Session,
    *,
    kind: TransactionType,
    amount: int,
    debit: str,
    credit: str,
    related: Related | None = None,
    status: TransactionStatus = TransactionStatus.COMPLETED,
) -> LedgerTransaction:
    """Move `amount` micro-tokens from `debit` to `credit`; raises INSUFFICIENT_FUNDS, and
    changes nothing, when `debit` does not hold it."""
    if amount <= 0:
        raise ValueError(f"a ledger movement needs a positive amount, not {amount}")
    debited = session.execute(
        update(Account)
        .where(
            Account.id == debit,
            or_(Account.kind == "EXTERNAL", Account.balance >= amount),
        )
        .values(balance=Account.balance - amount)
    )
    if debited.rowcount != 1:  # type: ignore[attr-defined]
        raise ApiError(
            ErrorCode.INSUFFICIENT_FUNDS,
            f"the balance does not cover {amount / 1_000_000:g} tokens",
            required=amount / 1_000_000,
            available=balance_of(session, debit) / 1_000_000,
        )
    credited = session.execute(
        update(Account).where(Account.id == credit).values(balance=Account.balance + amount)
    )
    if credited.rowcount != 1:  # type: ignore[attr-defined]
        raise RuntimeError(f"ledger account {credit} does not exist")
    now = utcnow()
    row = LedgerTransaction(
        id=new_id("tx"),
        type=kind.value,
        status=status.value,
        amount=amount,
        debit_account=debit,
        credit_account=credit,
        related_type=related.type if related else None,
        related_id=related.id if related else None,
        created_at=now,
        completed_at=now if status == TransactionStatus.COMPLETED else None,
    )
    session.add(row)
    session.flush()
    return row


def balance_of(session: Session, account_id: str) -> int:
    balance = session.scalar(select(Account.balance).where(Account.id == account_id))
    return balance or 0


def settle_escrow(session: Session, job_id: str) -> None:
    """Mark the job's ESCROW transaction as settled, once its value has left the escrow."""
    session.execute(
        update(LedgerTransaction)
        .where(
            LedgerTransaction.type == TransactionType.ESCROW.value,
            LedgerTransaction.related_id == job_id,
            LedgerTransaction.status == TransactionStatus.PENDING.value,
        )
        .values(status=TransactionStatus.COMPLETED.value, completed_at=utcnow())
    )


def refund_escrow(session: Session, job_id: str, owner_id: str) -> LedgerTransaction | None:
    """Give whatever the job's escrow still holds back to its owner."""
    remaining = balance_of(session, escrow_account(job_id))
    refund = None
    if remaining > 0:
        refund = move(
            session,
            kind=TransactionType.REFUND,
            amount=remaining,
            debit=escrow_account(job_id),
            credit=user_account(owner_id),
            related=Related("JOB", job_id),
        )
    settle_escrow(session, job_id)
    return refund


def transactions_of(
    session: Session,
    user_id: str,
    *,
    kind: str | None = None,
    status: str | None = None,
    offset: int = 0,
    limit: int = 10,
) -> tuple[int, list[LedgerTransaction]]:
    """The transactions that touch the user's own account, newest first.

    An ESCROW leaves the user's account and a REFUND reaches it, so both show; movements
    between an escrow and another user show to the one who was paid.
    """
    account = user_account(user_id)
    conditions = [
        or_(
            LedgerTransaction.debit_account == account, LedgerTransaction.credit_account == account
        )
    ]
    if kind:
        conditions.append(LedgerTransaction.type == kind)
    if status:
        conditions.append(LedgerTransaction.status == status)
    where = and_(*conditions)
    total = session.scalar(select(func.count()).select_from(LedgerTransaction).where(where)) or 0
    rows = session.scalars(
        select(LedgerTransaction)
        .where(where)
        .order_by(LedgerTransaction.created_at.desc(), LedgerTransaction.id.desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return total, list(rows)


def pending_of(session: Session, user_id: str) -> list[LedgerTransaction]:
    account = user_account(user_id)
    return list(
        session.scalars(
            select(LedgerTransaction)
            .where(
                LedgerTransaction.debit_account == account,
                LedgerTransaction.status == TransactionStatus.PENDING.value,
            )
            .order_by(LedgerTransaction.created_at.desc())
        ).all()
    )
