"""The credit ledger.

Every movement of money is one row with the balance after it, written in the same
transaction as the balance change. A reservation is a conditional decrement
(``balance >= cost``), which is atomic on SQLite and PostgreSQL alike, so concurrent
requests can never drive a balance below zero. Settlement (charge or refund) flips
``generations.credits_settled`` from false to true first: only the transaction that
wins that flip writes money, so a retried or crashed worker settles at most once,
and a unique index on (generation_id, kind) backs that up in the database.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import utcnow
from genplane.contract.errors import ApiError
from genplane.credits.alerts import check_low_balance
from genplane.credits.money import to_credits
from genplane.db.engine import Database
from genplane.db.models import Account, LedgerEntry


async def _entry(
    s: AsyncSession,
    account_id: str,
    generation_id: str | None,
    kind: str,
    amount: int,
    balance: int,
    note: str | None = None,
) -> None:
    s.add(
        LedgerEntry(
            account_id=account_id,
            generation_id=generation_id,
            kind=kind,
            amount_millis=amount,
            balance_after_millis=balance,
            note=note,
            created_at=utcnow(),
        )
    )


async def _credit(s: AsyncSession, account_id: str, millis: int) -> int | None:
    """Raise the balance; the balance after, or None when there is no such account."""
    balance = (
        await s.execute(
            update(Account)
            .where(Account.id == account_id)
            .values(balance_millis=Account.balance_millis + millis, updated_at=utcnow())
            .returning(Account.balance_millis)
        )
    ).scalar_one_or_none()
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


async def reserve(s: AsyncSession, account_id: str, generation_id: str, millis: int) -> int:
    """Take ``millis`` from the balance inside the caller's transaction, or refuse."""
    balance = (
        await s.execute(
            update(Account)
            .where(Account.id == account_id, Account.balance_millis >= millis)
            .values(balance_millis=Account.balance_millis - millis, updated_at=utcnow())
            .returning(Account.balance_millis)
        )
    ).scalar_one_or_none()
    if balance is None:
        current = await s.scalar(select(Account.balance_millis).where(Account.id == account_id))
        raise ApiError(
            "bse_insufficient_credits",
            f"This request costs {to_credits(millis):.3f} credits; "
            f"the balance is {to_credits(current or 0):.3f}.",
            details={"required": to_credits(millis), "balance": to_credits(current or 0)},
        )
    await _entry(s, account_id, generation_id, "reserve", millis, balance)
    await check_low_balance(s, account_id, int(balance), fell=True)
    return int(balance)


async def settle(
    s: AsyncSession, account_id: str, generation_id: str, amount: int, kind: Literal["charge", "refund"]
) -> None:
    """Write a generation's charge or refund, inside the transaction that won the settlement.

    Only :func:`genplane.generations.lifecycle` calls this, after flipping the generation's
    ``credits_settled`` flag: the flag makes a settlement happen once, this writes its money.
    """
    credited = await _credit(s, account_id, amount) if kind == "refund" and amount else None
    if credited is not None:
        balance = credited
    else:
        current = await s.scalar(select(Account.balance_millis).where(Account.id == account_id))
        balance = int(current or 0)
    await _entry(s, account_id, generation_id, kind, amount, int(balance))
    if kind == "refund":
        await check_low_balance(s, account_id, int(balance), fell=False)


async def balance_millis(db: Database, account_id: str) -> int:
    async with db.read() as s:
        return int(await s.scalar(select(Account.balance_millis).where(Account.id == account_id)) or 0)
