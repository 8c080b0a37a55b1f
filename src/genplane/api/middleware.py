"""The outermost layer: request ids, rate-limit headers, usage counting and the key's request
sequence (anomaly detection, :mod:`genplane.usage.sequences`), the request metrics (when
``/metrics`` is on: :mod:`genplane.api.request_metrics`), and a last-resort
500 in the contract's shape for anything no handler caught. With the firewall off it also
guards the body size by Content-Length (the firewall does that, and more, when on)."""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genplane.accounts.service import AuthContext
from genplane.api.blocklist import ip_subject, key_subject
from genplane.api.client_address import client_ip
from genplane.api.errors import render_error
from genplane.api.prefer_wait import extra_seconds
from genplane.api.repeated_headers import first_repeated, repeated_header_error
from genplane.api.request_metrics import RequestMetrics
from genplane.api.services import Services
from genplane.contract.envelope import new_request_id
from genplane.contract.errors import ApiError
from genplane.generations.request import MAX_BODY_BYTES
from genplane.net.bearer import bearer_token

log = structlog.get_logger("genplane.api")


class EdgeMiddleware:
    def __init__(
        self, app: ASGIApp, guard_body: bool = True, request_metrics: RequestMetrics | None = None
    ) -> None:
        self.app = app
        self.guard_body = guard_body
        self.request_metrics = request_metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_metrics = self.request_metrics
        arrived = perf_counter() if request_metrics is not None else 0.0
        state: dict[str, Any] = scope.setdefault("state", {})
        request_id = new_request_id()
        state["request_id"] = request_id
        services = scope["app"].state.services
        started = False
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers["X-Request-Id"] = request_id
                rate = state.get("rate")
                if rate is not None:
                    for name, value in rate.headers().items():
                        if name.lower() not in headers:
                            headers[name] = value
            await send(message)

        request_headers = Headers(scope=scope)
        # Whether the request body's last chunk has arrived: a timeout before it is the
        # client's (408, send again), after it genplane's own (500). A request without
        # Content-Length or Transfer-Encoding has no body to wait for.
        has_body = request_headers.get("content-length", "0") != "0" or "transfer-encoding" in request_headers
        body_received = not has_body

        async def receive_wrapper() -> Message:
            nonlocal body_received
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                body_received = True
            return message

        try:
            repeated = first_repeated(scope["headers"])
            length = request_headers.get("content-length") if self.guard_body else None
            if repeated is not None:
                await _refuse_repeated(services, scope, request_id, repeated)
                await render_error(
                    state, services.settings.error_shape, request_headers, repeated_header_error(repeated)
                )(scope, receive, send_wrapper)
            elif length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                err = ApiError("bse_payload_too_large") if length.isdigit() else ApiError("bse_invalid_input")
                await render_error(state, services.settings.error_shape, request_headers, err)(
                    scope, receive, send_wrapper
                )
            else:
                # File downloads may take as long as the client's link needs; nothing else may.
                is_download = scope["path"].startswith("/files/")
                limit = (
                    None
                    if is_download
                    else services.settings.request_timeout_seconds
                    + extra_seconds(request_headers.get("prefer"), services.settings)
                )
                async with asyncio.timeout(limit):
                    await self.app(scope, receive_wrapper, send_wrapper)
        except TimeoutError:
            seconds = services.settings.request_timeout_seconds
            log.warning(
                "request_timeout",
                request_id=request_id,
                path=scope.get("path"),
                seconds=seconds,
                waiting_for="handler" if body_received else "body",
            )
            if not started:
                if body_received:
                    err = ApiError(  # a slow moment, not a broken request: worth another try
                        "bse_internal_error",
                        f"The server did not finish the request within {seconds:g} s.",
                        retryable=True,
                    )
                else:
                    # The rest of the body may still be on its way: the connection cannot be reused.
                    err = ApiError("bse_request_timeout", headers={"Connection": "close"})
                await render_error(state, services.settings.error_shape, request_headers, err)(
                    scope, receive, send_wrapper
                )
        except Exception as exc:
            log.error("unhandled_error", request_id=request_id, path=scope.get("path"), error=repr(exc))
            if not started:
                response = render_error(
                    state, services.settings.error_shape, request_headers, ApiError("bse_internal_error")
                )
                await response(scope, receive, send_wrapper)
        finally:
            auth = state.get("auth")
            route = scope.get("route")
            if request_metrics is not None:
                request_metrics.observe(route, state.get("operation_id"), status, perf_counter() - arrived)
            if auth is not None and route is not None:
                method: str = scope["method"]
                path = str(getattr(route, "path", scope.get("path"))).replace(":path}", "}")
                endpoint = f"{method} {path}"
                services.usage.record(auth.account_id, endpoint, status, state.get("error_name"))
                if services.anomalies.enabled:
                    await _observe(
                        services, scope, request_headers, auth, route, method, path, endpoint, status
                    )


async def _refuse_repeated(services: Services, scope: Scope, request_id: str, header: str) -> None:
    """Log and count the rejection against the client's address: which key it came with is ambiguous."""
    ip = client_ip(scope)
    log.warning(
        "firewall_rejected",
        request_id=request_id,
        ip=ip,
        method=scope["method"],
        path=str(scope["path"])[:256],
        reason="repeated_header",
        error="bse_invalid_input",
        field=header,
    )
    started = await services.blocklist.record_rejection(ip_subject(ip))
    if started:
        log.warning("firewall_blocked", ip=ip, subject="ip", seconds=started)


async def _observe(
    services: Services,
    scope: Scope,
    headers: Headers,
    auth: AuthContext,
    route: Any,
    method: str,
    path: str,
    endpoint: str,
    status: int,
) -> None:
    """Feed the key's request sequence; block the key when a pattern set to block is found."""
    try:
        target = scope.get("path_params", {}).get("generation_id")
        operation = getattr(route, "operation_id", None) or endpoint
        flags = services.anomalies.observe(auth, method, path, operation, status, target)
        if flags:
            token = bearer_token(headers.get("authorization"))
            if token is not None:
                await services.blocklist.block(key_subject(token), services.settings.firewall_block_seconds)
                for flag in flags:
                    log.warning(
                        "anomaly_blocked",
                        key_prefix=auth.key_prefix,
                        key_id=auth.key_id,
                        account_id=auth.account_id,
                        pattern=flag.pattern,
                        seconds=services.settings.firewall_block_seconds,
                    )
    except Exception as exc:  # analytics must never turn an answered request into an error
        log.error("anomaly_observe_failed", path=scope.get("path"), error=repr(exc))
