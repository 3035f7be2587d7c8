"""Token balance, transaction history and the development faucet."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query

from calctra_agent.server_stub._context import Context, UserId
from calctra_agent.server_stub._db import LedgerTransaction, from_micro, to_micro
from calctra_agent.server_stub._errors import ApiError
from calctra_agent.server_stub._ledger import (
    EXTERNAL_ACCOUNT,
    balance_of,
    move,
    pending_of,
    transactions_of,
    user_account,
)
from calctra_agent.server_stub._pagination import Pagination
from calctra_agent.wire import (
    Balance,
    DepositRequest,
    DepositResponse,
    ErrorCode,
    RelatedEntity,
    Transaction,
    TransactionPage,
    TransactionStatus,
    TransactionType,
)

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/tokens", tags=["tokens"])


def transaction_out(row: LedgerTransaction) -> Transaction:
    related = None
    if row.related_type and row.related_id:
        related = RelatedEntity(type=row.related_type, id=row.related_id)
    return Transaction(
        id=row.id,
        type=TransactionType(row.type),
        amount=from_micro(row.amount),
        status=TransactionStatus(row.status),
        created_at=row.created_at,
        completed_at=row.completed_at,
        related_entity=related,
        transaction_hash=None,
    )


@router.get("/balance", response_model=Balance)
async def get_balance(context: Context, user_id: UserId) -> Balance:
    with context.db.transaction() as session:
        balance = balance_of(session, user_account(user_id))
        pending = [transaction_out(row) for row in pending_of(session, user_id)]
    return Balance(balance=from_micro(balance), pending_transactions=pending)


@router.get("/transactions", response_model=TransactionPage)
async def list_transactions(
    context: Context,
    user_id: UserId,
    page: Pagination,
    type: Annotated[TransactionType | None, Query()] = None,
    status: Annotated[TransactionStatus | None, Query()] = None,
) -> TransactionPage:
    with context.db.transaction() as session:
        total, rows = transactions_of(
            session,
            user_id,
            kind=type.value if type else None,
            status=status.value if status else None,
            offset=page.offset,
            limit=page.limit,
        )
        transactions = [transaction_out(row) for row in rows]
    return TransactionPage(
        total=total, page=page.page, limit=page.limit, transactions=transactions
    )


@router.post("/deposit", response_model=DepositResponse, status_code=201)
async def deposit(body: DepositRequest, context: Context, user_id: UserId) -> DepositResponse:
    if not context.settings.dev_faucet:
        raise ApiError(
            ErrorCode.PERMISSION_DENIED,
            "deposits are a development faucet; start the server with --dev-faucet to allow them",
        )
    with context.db.transaction() as session:
        row = move(
            session,
            kind=TransactionType.DEPOSIT,
            amount=to_micro(body.amount),
            debit=EXTERNAL_ACCOUNT,
            credit=user_account(user_id),
        )
        balance = balance_of(session, user_account(user_id))
        transaction = transaction_out(row)
    logger.info("deposit user_id=%s amount=%s", user_id, body.amount)
    return DepositResponse(
        message="Deposit completed", transaction=transaction, balance=from_micro(balance)
    )
