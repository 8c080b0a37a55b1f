"""Everything a request handler may use, built once per app and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from redis.asyncio import Redis

from genplane.accounts.service import Authenticator
from genplane.api.blocklist import FirewallStore
from genplane.api.ratelimit import RequestLimiter
from genplane.catalog.loader import Catalog
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
