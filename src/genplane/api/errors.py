"""Exception handlers: every failure leaves as one registered error value, never a traceback."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from genplane.api.json_body import JSONBody
from genplane.contract.envelope import ErrorShape, error_body
from genplane.contract.errors import ApiError, invalid_input
from genplane.storage.store import StorageError

log = structlog.get_logger("genplane.api")

SDK_HEADER = "x-babysea-sdk-name"


def error_shape(configured: str, headers: Any) -> ErrorShape:
    if configured == "flat":
        return "flat"
    if configured == "nested" or SDK_HEADER in headers:
        return "nested"
    return "flat"


def render_error(scope_state: dict[str, Any], configured_shape: str, headers: Any, err: ApiError) -> Response:
    request_id = scope_state.get("request_id", "req_unknown")
    scope_state["error_name"] = err.name
    body = error_body(request_id, err, error_shape(configured_shape, headers))
    return JSONBody(body, status_code=err.status_code, headers=err.headers or None)


def _respond(request: Request, err: ApiError) -> Response:
    return render_error(
        request.scope.setdefault("state", {}),
        request.app.state.services.settings.error_shape,
        request.headers,
        err,
    )


def _validation_error(exc: RequestValidationError) -> ApiError:
    first = exc.errors()[0] if exc.errors() else {"loc": ("request",), "msg": "invalid"}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header", "body")]
    name = loc[-1] if loc else "request"
    return invalid_input(name, f"'{name}': {first.get('msg', 'invalid')}.")


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _respond(request, exc)

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _respond(request, _validation_error(exc))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code in (404, 405):
            return _respond(
                request, ApiError("bse_route_not_found", f"No endpoint {request.method} {request.url.path}.")
            )
        if exc.status_code == 413:
            return _respond(request, ApiError("bse_payload_too_large"))
        if exc.status_code < 500:
            return _respond(request, invalid_input("request", str(exc.detail)))
        return _respond(request, ApiError("bse_internal_error"))

    async def on_database(request: Request, exc: Exception) -> Response:
        log.error("database_error", error=repr(exc), path=request.url.path)
        # A lock timeout or a lost connection passes; a constraint or a bad statement does not.
        transient = isinstance(exc, OperationalError) or bool(getattr(exc, "connection_invalidated", False))
        return _respond(request, ApiError("bse_database_error", retryable=transient or None))

    async def on_storage(request: Request, exc: Exception) -> Response:
        # The detail names local paths: the log gets it, the client the registry's message.
        assert isinstance(exc, StorageError)
        log.error(
            "storage_error",
            request_id=request.scope.get("state", {}).get("request_id"),
            path=request.url.path[:256],
            error=exc.summary,
            detail=exc.detail,
        )
        return _respond(request, ApiError("bse_storage_error"))

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(SQLAlchemyError, on_database)
    app.add_exception_handler(StorageError, on_storage)
