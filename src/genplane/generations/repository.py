"""SQL for generations: the state transitions that must be conditional to be safe."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import utcnow
from genplane.db.models import Generation, ProviderAttempt

ACTIVE = ("pending", "processing")
TERMINAL = ("succeeded", "failed", "canceled")


async def claim(s: AsyncSession, generation_id: str, owner: str, lease_seconds: float) -> Generation | None:
    """Take the job's lease if nobody holds a live one; returns the claimed row."""
    now = utcnow()
    res = await s.execute(
        update(Generation)
        .where(
            Generation.id == generation_id,
            Generation.status.in_(ACTIVE),
            or_(Generation.lease_expires_at.is_(None), Generation.lease_expires_at < now),
        )
        .values(
            status="processing",
            lease_owner=owner,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            claims=Generation.claims + 1,
            started_at=func.coalesce(Generation.started_at, now),
            updated_at=now,
        )
    )
    if not res.rowcount:  # type: ignore[attr-defined]
        return None
    return await s.get(Generation, generation_id, populate_existing=True)


async def extend_lease(s: AsyncSession, generation_id: str, owner: str, lease_seconds: float) -> bool:
    """Heartbeat; False when the job was canceled or taken over and the owner must stop."""
    now = utcnow()
    res = await s.execute(
        update(Generation)
        .where(
            Generation.id == generation_id, Generation.lease_owner == owner, Generation.status == "processing"
        )
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def finish(
    s: AsyncSession, generation_id: str, status: str, *, owner: str | None = None, **values: Any
) -> bool:
    """Move an active generation to a terminal status once; False when it was already terminal."""
    now = utcnow()
    conds = [Generation.id == generation_id, Generation.status.in_(ACTIVE)]
    if owner is not None:
        conds.append(Generation.lease_owner == owner)
    res = await s.execute(
        update(Generation)
        .where(and_(*conds))
        .values(
            status=status, completed_at=now, updated_at=now, lease_owner=None, lease_expires_at=None, **values
        )
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


async def due_for_work(s: AsyncSession, limit: int = 500) -> list[str]:
    now = utcnow()
    rows = await s.scalars(
        select(Generation.id)
        .where(
            Generation.status.in_(ACTIVE),
            or_(Generation.lease_expires_at.is_(None), Generation.lease_expires_at < now),
        )
        .order_by(Generation.created_at)
        .limit(limit)
    )
    return list(rows.all())


def record_attempt(
    s: AsyncSession,
    gen: Generation,
    provider: str,
    outcome: str,
    started_at: datetime,
    error_code: str | None = None,
    error_message: str | None = None,
    cost_millis: int = 0,
) -> None:
    finished = utcnow()
    s.add(
        ProviderAttempt(
            generation_id=gen.id,
            account_id=gen.account_id,
            provider=provider,
            model_identifier=gen.model_identifier,
            outcome=outcome,
            started_at=started_at,
            finished_at=finished,
            latency_ms=round((finished - started_at).total_seconds() * 1000, 3),
            error_code=error_code,
            error_message=error_message,
            estimated_cost_millis=cost_millis,
        )
    )
