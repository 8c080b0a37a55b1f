"""Which provider adapters this deployment runs, from settings.

Every known provider gets an adapter; those without credentials report themselves
unconfigured, which the library and health operations show and routing skips. All
remote adapters share one HTTP client (connection pooling, one place to inject a
transport in tests).
"""

from __future__ import annotations

import httpx

from genplane.providers.alibabacloud import AlibabaCloudAdapter
from genplane.providers.base import ProviderAdapter
from genplane.providers.bfl import BflAdapter
from genplane.providers.byteplus import BytePlusAdapter
from genplane.providers.cloudflare import CloudflareAdapter
from genplane.providers.fal import FalAdapter
from genplane.providers.google import GoogleAdapter
from genplane.providers.local import LocalProvider
from genplane.providers.openai import OpenAIAdapter
from genplane.providers.replicate import ReplicateAdapter
from genplane.providers.runway import RunwayAdapter
from genplane.providers.selfhosted import SelfHostedAdapter
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
        GoogleAdapter(settings, client),
        SelfHostedAdapter(settings, client),
        BflAdapter(settings, client),
        OpenAIAdapter(settings, client),
        CloudflareAdapter(settings, client),
        RunwayAdapter(settings, client),
        BytePlusAdapter(settings, client),
        AlibabaCloudAdapter(settings, client),
        ReplicateAdapter(settings, client),
        FalAdapter(settings, client),
    ]
    return {a.provider_id: a for a in adapters}
