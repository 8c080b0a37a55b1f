"""The backlog gauges: work waiting, read from the database when ``/metrics`` is scraped.

The database is shared by every process, so these are not per-process instruments: the
process that answers a scrape reads them once and reports them once, beside the summed
instruments of every process. Each read is one indexed statement, bounded by the work
waiting and never by the table: pending generations by ``ix_generations_status_created``
(a count over the pending range, and the oldest as the first entry of it), pending webhook
deliveries by ``ix_deliveries_due``. The reads share one deadline; when the database does
not answer in time the gauges are left out of that scrape (an absent series, which alerts
can see) rather than the scrape failing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import structlog
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Table, func, select

from genplane.clock import as_utc, utcnow
from genplane.contract.status import DeliveryStatus, GenerationStatus
from genplane.db.engine import Database
from genplane.db.models import Generation, WebhookDelivery

log = structlog.get_logger("genplane.metrics")

#: How long one scrape's reads may take together.
READ_TIMEOUT_SECONDS = 2.0

_GEN = cast(Table, Generation.__table__)
_DELIVERIES = cast(Table, WebhookDelivery.__table__)
_QUEUED = select(func.count()).select_from(_GEN).where(_GEN.c.status == GenerationStatus.PENDING.value)
_OLDEST_QUEUED = (
    select(_GEN.c.created_at)
    .where(_GEN.c.status == GenerationStatus.PENDING.value)
    .order_by(_GEN.c.created_at)
    .limit(1)
)
_DELIVERIES_PENDING = (
    select(func.count())
    .select_from(_DELIVERIES)
    .where(_DELIVERIES.c.status == DeliveryStatus.PENDING.value)
)


@dataclass(frozen=True)
class Backlog:
    queued: int
    oldest_queued_seconds: float
    deliveries_pending: int


async def read_backlog(db: Database) -> Backlog:
    queued = (await db.fetch(_QUEUED))[0][0]
    oldest = await db.fetch(_OLDEST_QUEUED)
    deliveries = (await db.fetch(_DELIVERIES_PENDING))[0][0]
    age = (utcnow() - as_utc(oldest[0][0])).total_seconds() if oldest else 0.0
    return Backlog(int(queued), max(age, 0.0), int(deliveries))


class BacklogCollector(Collector):
    """The gauges of the last :meth:`refresh`; the exposition refreshes before each scrape."""

    def __init__(self, db: Database, timeout: float = READ_TIMEOUT_SECONDS) -> None:
        self.db = db
        self.timeout = timeout
        self._backlog: Backlog | None = None

    async def refresh(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                self._backlog = await read_backlog(self.db)
        except Exception as exc:  # the scrape still answers, without these gauges
            self._backlog = None
            log.warning("metrics_backlog_unread", error=type(exc).__name__)

    def collect(self) -> Iterable[Metric]:
        backlog = self._backlog
        if backlog is None:
            return []
        return [
            GaugeMetricFamily(
                "genplane_queue_depth",
                "Generations admitted and not yet claimed by any worker (status pending), "
                "read from the database at scrape time.",
                value=backlog.queued,
            ),
            GaugeMetricFamily(
                "genplane_queue_oldest_age_seconds",
                "Age of the oldest generation not yet claimed by any worker; 0 when none waits.",
                value=backlog.oldest_queued_seconds,
            ),
            GaugeMetricFamily(
                "genplane_webhook_deliveries_pending",
                "Webhook deliveries waiting to be sent or retried (status pending), read from the "
                "database at scrape time.",
                value=backlog.deliveries_pending,
            ),
        ]
