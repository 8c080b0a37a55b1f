"""Anomaly flags: kept by :mod:`genplane.usage.sequences`, written here for the operator.

The API process finds the patterns; ``genplane keys anomalies`` runs in another process,
so flags are stored in ``key_anomalies``. Like request counters, they are written in
batches every ``GENPLANE_USAGE_FLUSH_INTERVAL_SECONDS`` (and at shutdown): one upsert
per flag opened or extended since the last write, never a write per request.
"""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from genplane.accounts.service import AuthContext
from genplane.db.engine import Database
from genplane.db.models import KeyAnomaly
from genplane.settings import Settings
from genplane.usage.batched import BatchedWriter
from genplane.usage.sequences import Flag, SequenceAnalytics, classify

log = structlog.get_logger("genplane.anomalies")


class AnomalyRecorder(BatchedWriter):
    def __init__(self, db: Database, settings: Settings, analytics: SequenceAnalytics | None = None) -> None:
        super().__init__(settings.usage_flush_interval_seconds, "anomaly")
        self.db = db
        self.analytics = analytics or SequenceAnalytics(settings)
        self.enabled = self.analytics.enabled

    def observe(
        self, auth: AuthContext, method: str, path: str, operation: str, status: int, target: str | None
    ) -> list[Flag]:
        """One answered request of ``auth``'s key; the flags that block it (see ``SequenceAnalytics``)."""
        return self.analytics.record(
            auth.key_id, auth.key_prefix, auth.account_id, operation, classify(method, path), status, target
        )

    async def _write_pending(self) -> None:
        flags = self.analytics.take_dirty()
        if not flags:
            return
        insert = sqlite.insert if self.db.is_sqlite else postgresql.insert
        rows: list[dict[str, Any]] = [
            {
                "id": f.id,
                "key_id": f.key_id,
                "account_id": f.account_id,
                "key_prefix": f.key_prefix,
                "pattern": f.pattern,
                "detail": f.detail[:200] if f.detail else None,
                "count": f.count,
                "first_seen_at": f.first_seen_at,
                "last_seen_at": f.last_seen_at,
                "blocked_until": f.blocked_until,
            }
            for f in flags
        ]
        stmt = insert(KeyAnomaly).values(rows)
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={
                "count": stmt.excluded.count,
                "detail": stmt.excluded.detail,
                "last_seen_at": stmt.excluded.last_seen_at,
                "blocked_until": stmt.excluded.blocked_until,
            },
        )
        try:
            async with self.db.write() as s:
                await s.execute(stmt)
        except Exception:
            self.analytics.put_back(flags)
            raise

    def start(self) -> None:
        if self.enabled:
            super().start()
            if self.analytics.shared is not None:
                self.analytics.shared.start()

    async def stop(self) -> None:
        if self.analytics.shared is not None:
            try:  # the last counts, for the processes still running
                await self.analytics.shared.stop()
            except Exception as exc:  # Redis away at shutdown: they are only counts
                log.warning("anomaly_share_failed", error=repr(exc))
        await super().stop()


async def list_anomalies(
    db: Database,
    account_id: str | None = None,
    key_id: str | None = None,
    pattern: str | None = None,
    limit: int = 100,
) -> list[KeyAnomaly]:
    """Stored flags, the most recently seen first."""
    async with db.read() as s:
        q = select(KeyAnomaly).order_by(KeyAnomaly.last_seen_at.desc(), KeyAnomaly.id).limit(limit)
        if account_id:
            q = q.where(KeyAnomaly.account_id == account_id)
        if key_id:
            q = q.where(KeyAnomaly.key_id == key_id)
        if pattern:
            q = q.where(KeyAnomaly.pattern == pattern)
        return list((await s.scalars(q)).all())
