"""The operators' endpoints, outside the ``/v1`` contract and the OpenAPI document.

- ``GET /healthz``, liveness: 200 as long as the event loop answers; nothing else checked,
  so a slow dependency never gets a live process restarted.
- ``GET /readyz``, readiness (:mod:`genplane.api.readiness`): 200 when the database, Redis
  (if configured) and storage answer; else 503 naming the failed checks; 503 once shutdown
  has begun.
- ``GET /metrics``, Prometheus text: only when ``GENPLANE_METRICS_TOKEN`` is set (otherwise
  the route does not exist: 404 as any unknown path), and only with ``Authorization: Bearer
  <token>`` (401 otherwise).

The probes are unauthenticated, pass the firewall before its blocks (an orchestrator
probing through the same address as an abuser must still see the truth) and count as no
rejection; the scrape passes it as the served document does. None is rate-limited, and none
is counted in the request metrics.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from pydantic import SecretStr
from starlette.responses import JSONResponse, Response

from genplane.api.readiness import Readiness
from genplane.metrics.exposition import CONTENT_TYPE, Exposition
from genplane.net.bearer import bearer_token

HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
#: Answered before the firewall's blocks and checks.
PROBE_PATHS = frozenset({HEALTHZ, READYZ})
#: Not counted in the request metrics: probes every few seconds would drown the API's traffic.
UNCOUNTED_PATHS = frozenset({HEALTHZ, READYZ, METRICS})

_NO_STORE = {"Cache-Control": "no-store"}


def probes_router(readiness: Readiness) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get(HEALTHZ)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"}, headers=_NO_STORE)

    @router.get(READYZ)
    async def readyz() -> Response:
        if readiness.stopping:
            return JSONResponse({"status": "stopping", "failed": []}, status_code=503, headers=_NO_STORE)
        failed = await readiness.failed_checks()
        if failed:
            return JSONResponse(
                {"status": "unavailable", "failed": list(failed)}, status_code=503, headers=_NO_STORE
            )
        return JSONResponse({"status": "ok"}, headers=_NO_STORE)

    return router


def metrics_router(token: SecretStr, exposition: Exposition) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    expected = token.get_secret_value().encode("utf-8")

    @router.get(METRICS)
    async def metrics(request: Request) -> Response:
        given = bearer_token(request.headers.get("authorization"))
        # Compared in constant time; the header was decoded as latin-1, so its bytes come back.
        if given is None or not hmac.compare_digest(given.encode("latin-1", "replace"), expected):
            return Response(
                "unauthorized\n",
                status_code=401,
                media_type="text/plain",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"', **_NO_STORE},
            )
        return Response(await exposition.render(), media_type=CONTENT_TYPE, headers=_NO_STORE)

    return router
