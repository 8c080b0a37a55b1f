"""Fake inference providers that speak each provider's real wire protocol.

They are the only place the project imitates anything. Each fake is an ASGI app
reached through :class:`FakeNetwork`, an httpx transport that routes requests by host,
so the product's real HTTP code (headers, status codes, JSON, timeouts) runs unchanged.
"""
