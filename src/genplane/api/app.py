"""The FastAPI application: wiring, start-up and shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import structlog
from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.responses import HTMLResponse
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from genplane import __version__
from genplane.accounts.service import Authenticator
from genplane.api.blocklist import MemoryFirewallStore
from genplane.api.blocklist_redis import RedisFirewallStore
from genplane.api.cors import ContractCorsMiddleware
from genplane.api.docs_page import render_docs
from genplane.api.errors import install_error_handlers
from genplane.api.files import router as files_router
from genplane.api.firewall import FirewallMiddleware, compile_rules
from genplane.api.middleware import EdgeMiddleware
from genplane.api.openapi import app_spec, route_table
from genplane.api.operability import METRICS, PROBE_PATHS, UNCOUNTED_PATHS, metrics_router, probes_router
from genplane.api.ratelimit import RequestLimiter, shared_limit_storage
from genplane.api.readiness import Readiness
from genplane.api.request_metrics import RequestMetrics
from genplane.api.routers import account, content, generate, library
from genplane.api.services import Services
from genplane.catalog.loader import load_catalog
from genplane.collector import tune_after_startup
from genplane.db.engine import Database
from genplane.db.migrate import upgrade
from genplane.generations.routing import ProviderRanker
from genplane.generations.service import GenerationService
from genplane.generations.waiters import LocalGenerationWaiters
from genplane.jobs.fetch import FileFetcher
from genplane.jobs.worker import Worker
from genplane.metrics.backlog import BacklogCollector
from genplane.metrics.exposition import Exposition, multiprocess_directory
from genplane.net.fetch import PinnedFetcher
from genplane.providers.base import ProviderAdapter
from genplane.providers.registry import build_http_client, build_providers
from genplane.settings import Settings, get_settings
from genplane.storage.factory import build_store
from genplane.usage.anomalies import AnomalyRecorder
from genplane.usage.recorder import UsageRecorder
from genplane.usage.sequences import SequenceAnalytics
from genplane.usage.shared_windows import SharedWindows
from genplane.web.pages import PAGE_PATHS, PAGE_PREFIXES, live_provider_states, pages_router
from genplane.webhooks.delivery import WebhookDispatcher

log = structlog.get_logger("genplane")


def build_services(
    settings: Settings,
    providers: dict[str, ProviderAdapter] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Services:
    db = Database(settings.resolved_database_url, pool_size=settings.database_pool_size)
    catalog = load_catalog(settings.catalog_dir)
    store = build_store(settings)
    http = build_http_client(settings, transport)
    adapters = providers if providers is not None else build_providers(settings, http)
    fetcher = FileFetcher(http, settings.fetch_allow_hosts)
    worker = Worker(db, catalog, adapters, store, settings, fetcher)
    waiters = worker.waiters = LocalGenerationWaiters()  # this process's; Redis pub/sub once scaled out
    generations = GenerationService(
        db, settings, catalog, worker, store, adapters, ProviderRanker(db), fetcher
    )
    generations.waiters = waiters
    webhook_guard = PinnedFetcher(http, settings.webhook_allow_hosts)
    redis = Redis.from_url(settings.redis_url) if settings.redis_url else None
    shared_windows = (
        SharedWindows(redis, settings.redis_prefix, settings.anomaly_share_interval_seconds)
        if redis is not None
        else None
    )
    return Services(
        http=http,
        webhooks=WebhookDispatcher(db, settings, http, webhook_guard),
        settings=settings,
        db=db,
        catalog=catalog,
        store=store,
        providers=adapters,
        worker=worker,
        generations=generations,
        authenticator=Authenticator(db, settings),
        limiter=RequestLimiter(settings, shared_limit_storage(settings)),
        usage=UsageRecorder(db, settings.usage_flush_interval_seconds),
        blocklist=(
            RedisFirewallStore.from_settings(settings, redis)
            if redis is not None
            else MemoryFirewallStore.from_settings(settings)
        ),
        anomalies=AnomalyRecorder(db, settings, SequenceAnalytics(settings, shared=shared_windows)),
        waiters=waiters,
        redis=redis,
    )


def create_app(
    settings: Settings | None = None,
    providers: dict[str, ProviderAdapter] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    *,
    tune_collector: bool = False,
) -> FastAPI:
    """The app; ``transport`` replaces the network for provider calls and file fetches (tests).

    ``tune_collector``: once started, freeze start-up's objects and widen the collector's young
    generation (:mod:`genplane.collector`); for the process that serves, not for tests that
    build many apps in one process."""
    settings = settings or get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    multiprocess_directory()  # a PROMETHEUS_MULTIPROC_DIR that is no directory fails now

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        upgrade(settings.resolved_database_url)
        svc: Services = app.state.services
        await svc.start(api=True, worker=settings.run_worker)
        if tune_collector:
            tune_after_startup(settings)
        log.info("genplane_started", region=settings.region, database=svc.db.url.split(":", 1)[0])
        try:
            yield
        finally:
            app.state.readiness.stopping = True  # /readyz: 503 from here on
            await svc.stop(settings.worker_drain_seconds)

    app = FastAPI(
        title="genplane API",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.services = build_services(settings, providers, transport)
    install_error_handlers(app)
    for module in (account, generate, content, library):
        app.include_router(module.router)
    app.include_router(files_router)
    services: Services = app.state.services
    app.state.readiness = Readiness(services)
    app.include_router(probes_router(app.state.readiness))
    if settings.metrics_token is not None:
        exposition = Exposition(BacklogCollector(services.db))
        app.include_router(metrics_router(settings.metrics_token, exposition))

    # The browser pages (outside the contract and the document): genplane.web.
    app.include_router(
        pages_router(
            services.catalog,
            settings,
            lambda: live_provider_states(services.db, services.catalog, services.providers),
        )
    )

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> dict[str, Any]:
        return app_spec(app)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(render_docs(await openapi_json()))

    # Compiled once, from the same document /openapi.json serves.
    rules = compile_rules(app_spec(app), (path for path, _, _ in route_table(app)))
    if settings.firewall_enabled:
        # Added before (so inside) EdgeMiddleware: request ids exist when it answers, and it
        # answers before routing.
        svc: Services = app.state.services
        app.add_middleware(
            FirewallMiddleware,
            rules=rules,
            settings=settings,
            store=svc.blocklist,
            usage=svc.usage,
            verify_key=svc.authenticator.account_of,
            served_paths=[*PAGE_PATHS, *([METRICS] if settings.metrics_token is not None else [])],
            served_prefixes=PAGE_PREFIXES,
            probe_paths=PROBE_PATHS,
        )
    app.add_middleware(
        EdgeMiddleware,
        guard_body=not settings.firewall_enabled,
        request_metrics=RequestMetrics(UNCOUNTED_PATHS) if settings.metrics_token is not None else None,
    )
    if settings.trusted_proxies:
        # Outside the edge: the forwarded client address is in place before anything reads it.
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxies)
    if settings.cors_origins:
        # Outermost: preflights are answered before anything else looks at them, and every
        # answer, the edge's own errors included, is readable by the page that asked.
        app.add_middleware(ContractCorsMiddleware, rules=rules, origins=settings.cors_origins)
    return app
