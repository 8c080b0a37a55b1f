"""The credit ledger.

Every movement of money is one row with the balance after it, written in the same
transaction as the balance change. A reservation is a conditional decrement
(``balance >= cost``), which is atomic on SQLite and PostgreSQL alike, so concurrent
requests can never drive a balance below zero. Settlement (charge or refund) flips
``generations.credits_settled`` from false to true first: only the transaction that
wins that flip writes money, so a retried or crashed worker settles at most once,
and a unique index on (generation_id, kind) backs that up in the database. A success with
fewer outputs than asked settles with both: a ``refund`` of the undelivered share, then the
``charge`` of the delivered one.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import utcnow
from genplane.contract.errors import ApiError
from genplane.credits.alerts import check_low_balance
from genplane.credits.money import to_credits
from genplane.db.engine import Database
from genplane.db.models import Account, LedgerEntry
from genplane.metrics import domain as metrics

_ACCOUNT = cast(Table, Account.__table__)
_LEDGER = cast(Table, LedgerEntry.__table__)
_BALANCE = select(_ACCOUNT.c.balance_millis).where(_ACCOUNT.c.id == bindparam("account_id"))

# The statements of a settlement, built once (a generation settles once, but there are many).
_INSERT_ENTRY = insert(_LEDGER)
#: A charge leaves the balance as the reservation left it: the entry reads it in the same statement.
_INSERT_AT_BALANCE = insert(_LEDGER).values(
    account_id=bindparam("acct"),
    generation_id=bindparam("gen"),
    kind=bindparam("entry_kind"),
    amount_millis=bindparam("amount"),
    balance_after_millis=func.coalesce(
        select(_ACCOUNT.c.balance_millis).where(_ACCOUNT.c.id == bindparam("acct")).scalar_subquery(), 0
    ),
    note=None,
    created_at=bindparam("now"),
)
_CREDIT = (
    update(_ACCOUNT)
    .where(_ACCOUNT.c.id == bindparam("account_id"))
    .values(balance_millis=_ACCOUNT.c.balance_millis + bindparam("amount"), updated_at=bindparam("now"))
    .returning(_ACCOUNT.c.balance_millis)
)
_DEBIT = (
    update(_ACCOUNT)
    .where(_ACCOUNT.c.id == bindparam("account_id"), _ACCOUNT.c.balance_millis >= bindparam("amount"))
    .values(balance_millis=_ACCOUNT.c.balance_millis - bindparam("amount"), updated_at=bindparam("now"))
    .returning(_ACCOUNT.c.balance_millis)
)


async def _entry(
    s: AsyncSession,
    account_id: str,
    generation_id: str | None,
    kind: str,
    amount: int,
    balance: int,
    note: str | None = None,
) -> None:
    await s.execute(
        _INSERT_ENTRY,
        {
            "account_id": account_id,
            "generation_id": generation_id,
            "kind": kind,
            "amount_millis": amount,
            "balance_after_millis": balance,
            "note": note,
            "created_at": utcnow(),
        },
    )


async def _credit(s: AsyncSession, account_id: str, millis: int) -> int | None:
    """Raise the balance; the balance after, or None when there is no such account."""
    params = {"account_id": account_id, "amount": millis, "now": utcnow()}
    balance = (await s.execute(_CREDIT, params)).scalar_one_or_none()
    return None if balance is None else int(balance)


async def add_credits(db: Database, account_id: str, millis: int, note: str | None = None) -> int:
    if millis <= 0:
        raise ValueError("the amount to add must be positive")
    async with db.write() as s:
        balance = await _credit(s, account_id, millis)
        if balance is None:
            raise ValueError(f"no account {account_id}")
        await _entry(s, account_id, None, "add", millis, balance, note)
        await check_low_balance(s, account_id, int(balance), fell=False)
        return int(balance)


def insufficient(millis: int, balance: int) -> ApiError:
    """The refusal of a reservation of ``millis`` against ``balance``."""
    return ApiError(
        "bse_insufficient_credits",
        f"This request costs {to_credits(millis):.3f} credits; the balance is {to_credits(balance):.3f}.",
        details={"required": to_credits(millis), "balance": to_credits(balance)},
    )


async def reserve(s: AsyncSession, account_id: str, generation_id: str, millis: int) -> int:
    """Take ``millis`` from the balance inside the caller's transaction, or refuse."""
    params = {"account_id": account_id, "amount": millis, "now": utcnow()}
    balance = (await s.execute(_DEBIT, params)).scalar_one_or_none()
    if balance is None:
        raise insufficient(millis, int(await s.scalar(_BALANCE, {"account_id": account_id}) or 0))
    await reserved(s, account_id, generation_id, millis, int(balance))
    return int(balance)


async def reserved(s: AsyncSession, account_id: str, generation_id: str, millis: int, balance: int) -> None:
    """Record a reservation whose debit the caller's own statement made, leaving ``balance``
    (generation admission debits in the statement that admits: one lock of the account row)."""
    await _entry(s, account_id, generation_id, "reserve", millis, balance)
    metrics.credits_moved(s, "reserve", millis)
    await check_low_balance(s, account_id, balance, fell=True)


async def refunded(s: AsyncSession, account_id: str, generation_id: str, millis: int, balance: int) -> None:
    """Record a refund whose credit the caller's own statement made, leaving ``balance``."""
    await _entry(s, account_id, generation_id, "refund", millis, balance)
    metrics.credits_moved(s, "refund", millis)
    await check_low_balance(s, account_id, balance, fell=False)


async def charged(s: AsyncSession, account_id: str, generation_id: str, amount: int) -> None:
    """Write a generation's charge, inside the transaction that won its settlement.

    The reservation already took the money: the entry records the balance as it stands, read
    by its own insert; the caller holds the account row's lock (its landing UPDATE), so that
    balance is the one the ledger's order gives. Only
    :func:`genplane.generations.lifecycle` calls this (and :func:`refunded`), after flipping
    the generation's ``credits_settled`` flag: the flag makes a settlement happen once.
    """
    metrics.credits_moved(s, "charge", amount)
    params = {"acct": account_id, "gen": generation_id, "entry_kind": "charge", "amount": amount,
              "now": utcnow()}
    await s.execute(_INSERT_AT_BALANCE, params)


async def balance_millis(db: Database, account_id: str) -> int:
    async with db.read() as s:
        return int(await s.scalar(_BALANCE, {"account_id": account_id}) or 0)
