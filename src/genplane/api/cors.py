"""Browser access to ``/v1`` (CORS): Starlette's middleware, narrowed to the contract's operations.

Browsers preflight every call the official SDK makes (it always sends ``Authorization`` and
its ``X-BabySea-SDK-*`` headers), and a preflight carries no key: it has to be answered
before the firewall, whose route check would refuse ``OPTIONS`` as an unknown route. Only
a preflight for one of the contract's operations (path and requested method) is answered
here, with 204 as the Fetch standard expects of a body-less answer; any other ``OPTIONS``
goes on to the firewall like any request, so unknown paths still get the contract's 404.

The middleware is the outermost layer, so every answer a browser can receive, including
the ones the edge renders itself (timeouts, oversized bodies), carries the CORS headers
that let the page read the error instead of seeing an opaque network failure.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from genplane.api.firewall import Rules

# What a client of the contract sends beyond the CORS-safelisted headers.
ALLOWED_HEADERS = (
    "authorization",
    "content-type",
    "idempotency-key",
    "prefer",
    "x-babysea-sdk-name",
    "x-babysea-sdk-version",
    "x-babysea-sdk-runtime",
    "x-babysea-sdk-runtime-version",
)
# What a page may read of an answer: the SDK reads every one of these.
EXPOSED_HEADERS = (
    "x-request-id",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "retry-after",
    "idempotency-replayed",
    "preference-applied",
)
MAX_AGE_SECONDS = 600


class ContractCorsMiddleware(CORSMiddleware):
    def __init__(self, app: ASGIApp, rules: Rules, origins: Sequence[str]) -> None:
        methods = sorted({op.method for op in rules.operations()})
        super().__init__(
            app,
            allow_origins=origins,
            allow_methods=methods,
            allow_headers=ALLOWED_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            max_age=MAX_AGE_SECONDS,
        )
        self.rules = rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is None:  # not a browser's cross-origin request: nothing to add
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            matched = self.rules.match(scope["path"])
            if matched is not None and headers["access-control-request-method"] in matched[0]:
                await self.preflight_response(request_headers=headers)(scope, receive, send)
                return
        await self.simple_response(scope, receive, send, request_headers=headers)

    def preflight_response(self, request_headers: Headers) -> Response:
        """Starlette's checks and headers; 204 with no body when they pass.

        A refused preflight keeps Starlette's 400 without ``Access-Control-Allow-Origin``:
        the browser then blocks the call, which is the point, and no page can read the body.
        """
        answer = super().preflight_response(request_headers)
        if answer.status_code != 200:
            return answer
        body_headers = ("content-length", "content-type")
        headers = {k: v for k, v in answer.headers.items() if k.lower() not in body_headers}
        return Response(status_code=204, headers=headers)
