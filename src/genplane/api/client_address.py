"""The client's address, read one way by everything that needs it.

IP allowlists, the failed-authentication limits, the firewall's counters and blocks and
the logs must agree on who the client is, or an attacker picks whichever reading suits
him. The socket's peer is the client; only when that peer is one of
``GENPLANE_TRUSTED_PROXIES`` does ``X-Forwarded-For`` count, and then uvicorn's own
``ProxyHeadersMiddleware``, installed outermost by the app, has already put the
forwarded address into ``scope["client"]`` before anything reads it. The server itself
runs with its proxy handling off, so nothing trusts the header by default.
"""

from __future__ import annotations

from starlette.types import Scope

UNKNOWN = "unknown"


def client_ip(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else UNKNOWN
