"""Low-balance alerts: each threshold fires once on the way down and re-arms on the way up.

Checked inside every transaction that moves a balance, so the ``credits.low_balance``
event is written (or not) together with the movement that crossed the threshold.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.credits.money import to_credits
from genplane.db.engine import Database
from genplane.db.models import Account, CreditAlert
from genplane.webhooks.outbox import emit

#: Core statements on the table: these run in every create and every ending, where the ORM's
#: bulk-update path (session synchronisation) cost more than the statement.
_ALERTS = cast(Table, CreditAlert.__table__)
_REARM = (
    update(_ALERTS)
    .where(
        _ALERTS.c.account_id == bindparam("aid"),
        _ALERTS.c.armed.is_(False),
        _ALERTS.c.threshold_millis <= bindparam("balance"),
    )
    .values(armed=True)
)
_FIRE = (
    update(_ALERTS)
    .where(
        _ALERTS.c.account_id == bindparam("aid"),
        _ALERTS.c.armed.is_(True),
        _ALERTS.c.threshold_millis > bindparam("balance"),
    )
    .values(armed=False)
    .returning(_ALERTS.c.threshold_millis)
)

DEFAULT_THRESHOLD_MILLIS = 500
MAX_THRESHOLDS = 10


async def check_low_balance(
    s: AsyncSession, account_id: str, balance_millis: int, *, fell: bool
) -> list[int]:
    """After the balance ``fell``, fire the armed thresholds it is now below; after it rose,
    re-arm those it is back above. A movement can only do one of the two, so each call
    is one statement on the create path, not two."""
    params = {"aid": account_id, "balance": balance_millis}
    if not fell:
        await s.execute(_REARM, params)
        return []
    fired = list(
        (
            await s.scalars(_FIRE, params)
        ).all()
    )
    if fired:
        await emit(
            s,
            account_id,
            "credits.low_balance",
            {
                "account_id": account_id,
                "current_balance": to_credits(balance_millis),
                "thresholds_crossed": [
                    {"threshold": to_credits(t), "balance_at": to_credits(balance_millis)}
                    for t in sorted(fired, reverse=True)
                ],
            },
        )
    return sorted(fired)


async def set_thresholds(
    s: AsyncSession, account_id: str, thresholds_millis: list[int], balance: int
) -> None:
    """Replace an account's thresholds (at most ten); each starts armed unless already crossed."""
    unique = sorted(set(thresholds_millis))
    if len(unique) > MAX_THRESHOLDS:
        raise ValueError(f"at most {MAX_THRESHOLDS} thresholds")
    if any(t <= 0 for t in unique):
        raise ValueError("thresholds are positive")
    await s.execute(delete(CreditAlert).where(CreditAlert.account_id == account_id))
    for t in unique:
        s.add(CreditAlert(account_id=account_id, threshold_millis=t, armed=balance >= t))


async def thresholds(s: AsyncSession, account_id: str) -> list[tuple[int, bool]]:
    rows = await s.execute(
        select(CreditAlert.threshold_millis, CreditAlert.armed)
        .where(CreditAlert.account_id == account_id)
        .order_by(CreditAlert.threshold_millis)
    )
    return [(int(t), bool(a)) for t, a in rows.all()]


async def replace_thresholds(db: Database, account_id: str, thresholds_millis: list[int]) -> int:
    """Replace an active account's thresholds in one transaction with its balance; returns it.

    The balance row is locked (on PostgreSQL) so that a movement running at the same time
    cannot arm or fire against the thresholds being replaced.
    """
    async with db.write() as s:
        balance = await s.scalar(
            select(Account.balance_millis)
            .where(Account.id == account_id, Account.deleted_at.is_(None))
            .with_for_update()
        )
        if balance is None:
            raise ValueError(f"no active account {account_id}")
        await set_thresholds(s, account_id, thresholds_millis, int(balance))
    return int(balance)


async def account_thresholds(db: Database, account_id: str) -> tuple[int, list[tuple[int, bool]]]:
    """An account's balance and its thresholds (milli-credits, armed), lowest first."""
    async with db.read() as s:
        balance = await s.scalar(select(Account.balance_millis).where(Account.id == account_id))
        if balance is None:
            raise ValueError(f"no account {account_id}")
        return int(balance), await thresholds(s, account_id)
