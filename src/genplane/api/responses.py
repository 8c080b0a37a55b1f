"""Success responses and the per-operation error documentation for OpenAPI."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from genplane.api.json_body import JSONBody
from genplane.api.schemas import FlatError, NestedError
from genplane.contract.envelope import success_body
from genplane.contract.errors import ERRORS

# What any operation can answer, whatever it does: the edge firewall's refusals (400 for a
# parameter, header or body that does not fit the document, 413 for a body over 100 KB by
# Content-Length, 404 for an undeclared method, 403 once a caller is blocked), then
# authentication, scope and rate limits (401, 403, 404 for a deleted account, 429), 408 for
# a request whose body did not arrive within the request timeout, and 500.
_EVERY_OPERATION = (400, 401, 403, 404, 408, 413, 429, 500)


def ok(request: Request, data: Any, message: str = "Operation successful", **extra: Any) -> JSONBody:
    return JSONBody(success_body(request.state.request_id, data, message, **extra))


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses an operation can answer, named by their codes."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({*_EVERY_OPERATION, *statuses}):
        names = sorted(e.name for e in ERRORS.values() if e.http_status == status)
        out[status] = {"model": FlatError | NestedError, "description": "Error: " + ", ".join(names)}
    return out
