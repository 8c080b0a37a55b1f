"""Which provider adapters this deployment runs, from settings.

Every known provider gets an adapter; those without credentials report themselves
unconfigured, which the library and health operations show and routing skips. All
remote adapters share one HTTP client (connection pooling, one place to inject a
transport in tests).
"""

from __future__ import annotations

import httpx

from genplane.providers.base import ProviderAdapter
from genplane.providers.local import LocalProvider
from genplane.settings import Settings


def build_http_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=transport,
        timeout=settings.provider_request_timeout_seconds,
        follow_redirects=False,
        limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
    )


def build_providers(settings: Settings, client: httpx.AsyncClient) -> dict[str, ProviderAdapter]:
    adapters: list[ProviderAdapter] = [
        LocalProvider(delay_seconds=settings.local_provider_delay_seconds),
        # remote adapters: one line each, ``XAdapter(settings, client),``
    ]
    return {a.provider_id: a for a in adapters}
