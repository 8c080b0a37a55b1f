"""What a client is configured with, and how a :class:`~genplane.client.calls.Call` becomes
the arguments of one httpx request (shared by the sync and the async client)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any, Literal

from genplane import __version__
from genplane.client.calls import Call

Region = Literal["us", "eu", "jp"]

#: A deployment's public hosts are ``api.<region>.<domain>`` (the server's
#: ``GENPLANE_PUBLIC_DOMAIN``); ``region=`` builds that URL, ``base_url=`` names any other.
DEFAULT_DOMAIN = "genplane.local"
#: What ``make run`` serves: the default when nothing names a server.
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
REGIONS: tuple[Region, ...] = ("us", "eu", "jp")
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RETRIES = 2
USER_AGENT = f"genplane-python/{__version__} (python/{platform.python_version()})"


def resolve_base_url(base_url: str | None, region: str | None, domain: str | None = None) -> str:
    """``base_url`` wins, then ``region``, then ``GENPLANE_BASE_URL``, then a local server.

    An explicit argument beats the environment so code that names its server is never
    redirected by a stray variable. ``region`` gives ``https://api.<region>.<domain>``,
    the domain from ``domain`` or ``GENPLANE_PUBLIC_DOMAIN`` (the server's own setting)."""
    if base_url:
        return base_url.rstrip("/")
    if region is not None:
        if region not in REGIONS:
            raise ValueError(f"region is one of {', '.join(REGIONS)}, not {region!r}")
        domain = domain or os.environ.get("GENPLANE_PUBLIC_DOMAIN") or DEFAULT_DOMAIN
        return f"https://api.{region}.{domain}"
    return (os.environ.get("GENPLANE_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def resolve_api_key(api_key: str | None) -> str:
    key = api_key or os.environ.get("GENPLANE_API_KEY")
    if not key:
        raise ValueError("an API key is required: pass api_key=... or set GENPLANE_API_KEY")
    return key


@dataclass(frozen=True)
class ClientConfig:
    api_key: str
    base_url: str
    timeout: float = DEFAULT_TIMEOUT

    def __repr__(self) -> str:  # never print the key: reprs end up in logs and tracebacks
        key = f"{self.api_key[:9]}…"
        return f"ClientConfig(base_url={self.base_url!r}, timeout={self.timeout!r}, api_key={key!r})"

    def request_args(self, call: Call[Any]) -> dict[str, Any]:
        """Keyword arguments for ``httpx.Client.request``/``AsyncClient.request``.

        A request that asks the server to hold it (``Prefer: wait=N``) gets N more
        seconds of read timeout, or the client would give up on an answer it asked to
        be delayed."""
        headers = {
            "Authorization": f"Bearer {self.api_key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            **call.headers,
        }
        return {
            "method": call.method,
            "url": f"{self.base_url}{call.path}",
            "params": dict(call.params) or None,
            "json": dict(call.body) if call.body is not None else None,
            "headers": headers,
            "timeout": self.timeout + (call.wait or 0),
        }
