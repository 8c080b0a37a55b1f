"""Success responses and the per-operation error documentation for OpenAPI."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from genplane.api.envelope import JSONBody, success_body
from genplane.api.schemas import FlatError, NestedError
from genplane.errors import ERRORS

_AUTH_STATUSES = (401, 403, 404, 429, 500)


def ok(request: Request, data: Any, message: str = "Operation successful", **extra: Any) -> JSONBody:
    return JSONBody(success_body(request.state.request_id, data, message, **extra))


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an operation can answer, named by their codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*_AUTH_STATUSES, *statuses}):
        names = sorted(e.name for e in ERRORS.values() if e.http_status == status)
        out[status] = {"model": FlatError | NestedError, "description": "Error: " + ", ".join(names)}
    return out
