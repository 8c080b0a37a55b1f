"""Purges history past its retention, in short batches, on the worker's schedule.

Provider attempts, idempotency records and usage counters only ever grew; every query
over them got slower with the deployment's age, and on SQLite a slow statement stalls
the whole event loop. Each table is trimmed to its retention by deletes of at most
``janitor_batch_rows`` rows, each its own short write transaction, so the janitor never
holds the writer lock for long and a large backlog (a first run on an old database)
drains over several runs instead of in one long statement.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import ColumnElement, delete, select, tuple_

from genplane.clock import utcnow
from genplane.db.engine import Database
from genplane.db.models import IdempotencyRecord, ProviderAttempt, UsageCounter
from genplane.settings import Settings

log = structlog.get_logger("genplane.janitor")

# Batches per table per run: bounds one run's work; what is left waits for the next run.
MAX_BATCHES_PER_RUN = 20


@dataclass(frozen=True)
class Purged:
    attempts: int
    idempotency: int
    usage: int


class Janitor:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._last_run = float("-inf")

    async def run_if_due(self) -> Purged | None:
        if time.monotonic() - self._last_run < self.settings.janitor_interval_seconds:
            return None
        self._last_run = time.monotonic()
        return await self.run()

    async def run(self, now: datetime | None = None) -> Purged:
        now = now or utcnow()
        s = self.settings
        purged = Purged(
            attempts=await self._purge(
                [ProviderAttempt.id],
                ProviderAttempt.started_at < now - timedelta(days=s.attempt_retention_days),
            ),
            idempotency=await self._purge(
                [IdempotencyRecord.account_id, IdempotencyRecord.key],
                IdempotencyRecord.created_at < now - timedelta(hours=s.idempotency_ttl_hours),
            ),
            usage=await self._purge(
                [
                    UsageCounter.account_id,
                    UsageCounter.day,
                    UsageCounter.endpoint,
                    UsageCounter.status_code,
                    UsageCounter.error_code,
                ],
                UsageCounter.day < (now - timedelta(days=s.usage_retention_days)).strftime("%Y-%m-%d"),
            ),
        )
        if purged.attempts or purged.idempotency or purged.usage:
            log.info("history_purged", **purged.__dict__)
        return purged

    async def _purge(self, key: list[Any], expired: ColumnElement[bool]) -> int:
        """Delete rows matching ``expired``, ``janitor_batch_rows`` at a time, by primary key."""
        batch = self.settings.janitor_batch_rows
        table = key[0].class_
        total = 0
        for _ in range(MAX_BATCHES_PER_RUN):
            chosen = select(*key).where(expired).limit(batch)
            target = key[0].in_(chosen) if len(key) == 1 else tuple_(*key).in_(chosen)
            async with self.db.write() as session:
                result = await session.execute(delete(table).where(target))
            deleted = int(result.rowcount)  # type: ignore[attr-defined]
            total += deleted
            if deleted < batch:
                break
        return total
