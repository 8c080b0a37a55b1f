"""Everything a request handler or a worker may use, built once per process.

A process plays one or both roles: the API (``genplane serve``, kept on ``app.state``) and
the worker (jobs, webhook deliveries, sweeps: in the API process unless
``GENPLANE_RUN_WORKER=false``, or ``genplane worker``). :meth:`Services.start` starts what
the roles need, the cross-process listener included when the database carries notifications.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from redis.asyncio import Redis

from genplane.accounts.auth_cache import forget_announced
from genplane.accounts.service import Authenticator
from genplane.api.blocklist import FirewallStore
from genplane.api.ratelimit import RequestLimiter
from genplane.catalog.loader import Catalog
from genplane.db import events
from genplane.db.engine import Database
from genplane.generations.service import GenerationService
from genplane.generations.waiters import LocalGenerationWaiters
from genplane.jobs.worker import Worker
from genplane.providers.base import ProviderAdapter
from genplane.settings import Settings
from genplane.storage.store import FileStore
from genplane.usage.anomalies import AnomalyRecorder
from genplane.usage.recorder import UsageRecorder
from genplane.webhooks.delivery import WebhookDispatcher

log = structlog.get_logger("genplane")


@dataclass
class Services:
    http: httpx.AsyncClient
    webhooks: WebhookDispatcher
    settings: Settings
    db: Database
    catalog: Catalog
    store: FileStore
    providers: dict[str, ProviderAdapter]
    worker: Worker
    generations: GenerationService
    authenticator: Authenticator
    limiter: RequestLimiter
    usage: UsageRecorder
    blocklist: FirewallStore
    anomalies: AnomalyRecorder
    waiters: LocalGenerationWaiters  # requests held open by 'Prefer: wait', woken on terminal commits
    redis: Redis | None = None  # the shared state's client, when GENPLANE_REDIS_URL is set
    listener: events.DatabaseListener | None = None  # PostgreSQL only; built by start()
    _roles: tuple[bool, bool] = (False, False)

    async def start(self, *, api: bool, worker: bool) -> None:
        """Start the background work of the roles this process plays."""
        self._roles = (api, worker)
        if api:
            self.usage.start()
            self.anomalies.start()
        handlers: dict[str, events.Handler] = {}
        if api:
            handlers[events.ENDED] = self.waiters.notify
            handlers[events.KEYS] = forget_announced
        if worker:
            handlers[events.JOBS] = self.worker.enqueue
            handlers[events.CANCELS] = self.worker.cancel_local
        dsn = events.listen_dsn(self.db.url)
        if dsn is not None and handlers:
            # Listening before the worker's first sweep: a job created in between is not missed.
            self.listener = events.DatabaseListener(
                dsn, handlers, on_reconnect=self.worker.sweep if worker else None
            )
            await self.listener.start()
        if worker:
            await self.worker.start()
            await self.webhooks.start()

    async def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop what :meth:`start` started; a worker lets its jobs run ``drain_seconds`` more,
        then hands the rest back to the other workers.

        Each part gets a bounded time: a part that does not stop is logged by name and the
        rest still stop, so a shutdown never hangs (what it left undone is what a crash
        leaves: leases expire, counters were flushed every second)."""
        api, worker = self._roles
        if worker:
            await _bounded("worker", self.worker.stop(drain_seconds), drain_seconds + STOP_SECONDS)
            await _bounded("webhooks", self.webhooks.stop())
        if self.listener is not None:
            await _bounded("listener", self.listener.stop())
        if api:
            await _bounded("usage", self.usage.stop())
            await _bounded("anomalies", self.anomalies.stop())
        await _bounded("http", self.http.aclose())
        if self.redis is not None:
            await _bounded("redis", self.redis.aclose())
        await _bounded("database", self.db.dispose())


#: How long one part of a stopping process may take (beyond the worker's drain).
STOP_SECONDS = 15.0


async def _bounded(part: str, awaitable: Awaitable[Any], seconds: float = STOP_SECONDS) -> None:
    try:
        async with asyncio.timeout(seconds):
            await awaitable
    except TimeoutError:
        log.error("stop_timed_out", part=part, seconds=seconds)
