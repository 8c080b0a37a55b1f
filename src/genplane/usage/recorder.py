"""Per-account request counters for GET /v1/usage.

Counting every request with a database write would put a write on every read, so
counts gather in memory and are flushed as batched upserts every second (and at
shutdown). A hard crash can lose at most that last second of request counts; money
and generations never go through here.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import structlog
from sqlalchemy.dialects import postgresql, sqlite

from genplane.clock import utcnow
from genplane.db.engine import Database
from genplane.db.models import UsageCounter

log = structlog.get_logger("genplane.usage")

Key = tuple[str, str, str, int, str]


class UsageRecorder:
    def __init__(self, db: Database, interval: float) -> None:
        self.db = db
        self.interval = interval
        self._pending: Counter[Key] = Counter()
        self._task: asyncio.Task[None] | None = None

    def record(self, account_id: str, endpoint: str, status_code: int, error_code: str | None) -> None:
        day = utcnow().strftime("%Y-%m-%d")
        self._pending[(account_id, day, endpoint, status_code, error_code or "")] += 1

    async def flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, Counter()
        insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        rows = [
            {"account_id": a, "day": d, "endpoint": e, "status_code": s, "error_code": c, "count": n}
            for (a, d, e, s, c), n in batch.items()
        ]
        stmt = insert(UsageCounter).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["account_id", "day", "endpoint", "status_code", "error_code"],
            set_={"count": UsageCounter.count + stmt.excluded.count},
        )
        try:
            async with self.db.write() as s:
                await s.execute(stmt)
        except Exception:
            self._pending.update(batch)  # keep them for the next flush
            raise

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:
                log.exception("usage_flush_failed")

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()
