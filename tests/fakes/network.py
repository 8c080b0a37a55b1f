"""An httpx transport that routes each request by host to an in-process ASGI app."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import httpx
from starlette.types import ASGIApp


@dataclass
class SeenRequest:
    method: str
    url: str
    headers: httpx.Headers
    body: bytes


@dataclass
class FakeNetwork(httpx.AsyncBaseTransport):
    """Hosts -> ASGI apps. Unknown hosts refuse the connection, like a closed port.

    The client's read timeout is applied to the app's answer, so a fake that hangs
    looks to the product exactly like a hung connection (``httpx.ReadTimeout``).
    """

    hosts: dict[str, ASGIApp] = field(default_factory=dict)
    seen: list[SeenRequest] = field(default_factory=list)

    def add(self, host: str, app: ASGIApp) -> None:
        self.hosts[host] = app

    def requests_to(self, host: str) -> list[SeenRequest]:
        return [r for r in self.seen if httpx.URL(r.url).host == host]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        app = self.hosts.get(request.url.host)
        if app is None:
            raise httpx.ConnectError(f"connection refused: {request.url.host}", request=request)
        body = await request.aread()
        self.seen.append(SeenRequest(request.method, str(request.url), request.headers, body))
        timeout = (request.extensions.get("timeout") or {}).get("read")
        transport = httpx.ASGITransport(app=app)
        try:
            async with asyncio.timeout(timeout):
                response = await transport.handle_async_request(request)
                await response.aread()
                return response
        except TimeoutError as exc:
            raise httpx.ReadTimeout("the fake did not answer in time", request=request) from exc
