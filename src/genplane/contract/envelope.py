"""The two envelopes of the contract: success, and errors in the flat and the nested shape.

Framework-free, so domain code can build a stored answer (an idempotent create's) without
importing the web layer."""

from __future__ import annotations

import secrets
from typing import Any, Literal

import orjson

from genplane.clock import iso, utcnow
from genplane.contract.errors import ApiError

ErrorShape = Literal["flat", "nested"]


def new_request_id() -> str:
    return "req_" + secrets.token_hex(10)


def success_body(
    request_id: str, data: Any, message: str = "Operation successful", **extra: Any
) -> dict[str, Any]:
    body = {
        "status": "success",
        "request_id": request_id,
        "message": message,
        "timestamp": iso(utcnow()),
        "data": data,
    }
    body.update(extra)
    return body


def error_body(request_id: str, err: ApiError, shape: ErrorShape) -> dict[str, Any]:
    spec = err.spec
    if shape == "nested":
        inner: dict[str, Any] = {
            "code": spec.code,
            "type": spec.type,
            "message": err.text,
            "retryable": err.is_retryable,
        }
        if err.details:
            inner["details"] = err.details
        if err.provider_errors:
            inner["provider_errors"] = err.provider_errors
        return {"status": "error", "request_id": request_id, "error": inner}
    body: dict[str, Any] = {
        "status": "error",
        "request_id": request_id,
        "error": spec.name,
        "message": err.text,
        "retryable": err.is_retryable,
        "code": spec.code,
    }
    if err.details:
        body["details"] = err.details
    if err.provider_errors:
        body["provider_errors"] = err.provider_errors
    return body


def dumps(body: Any) -> bytes:
    return orjson.dumps(body)
