"""Reads of generations and the provider-attempt history; state changes live in ``lifecycle``."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Table, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import utcnow
from genplane.db.models import Generation, ProviderAttempt
from genplane.generations.lifecycle import ACTIVE

_INSERT_ATTEMPT = insert(cast(Table, ProviderAttempt.__table__))


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


async def record_attempt(
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
    # A prebuilt Core insert: one per job on the worker's path, where the ORM's unit of work
    # (or a statement built per call) cost more than the statement.
    await s.execute(
        _INSERT_ATTEMPT,
        {
            "generation_id": gen.id,
            "account_id": gen.account_id,
            "provider": provider,
            "model_identifier": gen.model_identifier,
            "outcome": outcome,
            "started_at": started_at,
            "finished_at": finished,
            "latency_ms": round((finished - started_at).total_seconds() * 1000, 3),
            "error_code": error_code,
            "error_message": error_message,
            "estimated_cost_millis": cost_millis,
        },
    )
