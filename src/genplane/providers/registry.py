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


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: provider APIs authenticate by header, and a cookie one
    provider sets must never ride along on another tenant's request."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def set_cookie_header(self, request: httpx.Request) -> None:
        return None


class CookielessClient(httpx.AsyncClient):
    """httpx's client without its cookie jar. Besides the isolation, the jar wraps every
    response in urllib objects to look for cookies: about a tenth of the worker's CPU while
    it polls thousands of predictions (py-spy on bench/inflight.py)."""

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        return None  # httpx's constructor sets the jar; there is none to set


_NO_COOKIES = _NoCookies()


def build_http_client(
    settings: Settings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return CookielessClient(
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
