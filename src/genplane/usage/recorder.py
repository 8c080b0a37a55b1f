"""Per-account request counters for GET /v1/usage.

Counts gather in memory and are flushed as batched upserts every second, at shutdown and
before ``/v1/usage`` reads them (:mod:`genplane.usage.batched`). A hard crash can lose at
most that last second of request counts; money and generations never go through here.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy.dialects import postgresql, sqlite

from genplane.clock import utcnow
from genplane.db.engine import Database
from genplane.db.models import UsageCounter
from genplane.usage.batched import BatchedWriter

Key = tuple[str, str, str, int, str]


class UsageRecorder(BatchedWriter):
    def __init__(self, db: Database, interval: float) -> None:
        super().__init__(interval, "usage")
        self.db = db
        self._pending: Counter[Key] = Counter()

    def record(self, account_id: str, endpoint: str, status_code: int, error_code: str | None) -> None:
        day = utcnow().strftime("%Y-%m-%d")
        self._pending[(account_id, day, endpoint, status_code, error_code or "")] += 1

    async def _write_pending(self) -> None:
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
