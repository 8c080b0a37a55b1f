"""The exceptions the SDK raises, and how an error response becomes one.

The server sends one error value in two wire shapes (flat by default, nested for the
official TypeScript SDK or when the operator chooses it). Both are read here into one
exception carrying the stable ``code`` (``BSE1002``), the flat ``name``
(``bse_invalid_api_key``) and the ``type`` category, whichever shape arrived: the
missing half is looked up in the contract's error registry, so code written against
``err.name`` works against a server configured either way.

Catch by class of error (``except RateLimitError``), and branch on ``err.code`` or
``err.name`` when the class is not precise enough.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache
from typing import TYPE_CHECKING, Any

from genplane.client.headers import parse_rate_limit
from genplane.client.models import RateLimit

if TYPE_CHECKING:
    from genplane.client.models import Generation

#: The code of ``bse_idempotency_in_progress``: the one 409 worth retrying.
IDEMPOTENCY_IN_PROGRESS = "BSE2016"


class GenplaneError(Exception):
    """Base of every SDK error; the fields are ``None`` where the failure had no answer.

    ``retryable`` says whether the same request may succeed later (the server's word
    when it answered, which clients trust over the HTTP status)."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        name: str | None = None,
        type: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
        retryable: bool = False,
        rate_limit: RateLimit | None = None,
        details: dict[str, Any] | None = None,
        provider_errors: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.name = name
        self.type = type
        self.status = status
        self.request_id = request_id
        self.retryable = retryable
        self.rate_limit = rate_limit
        self.details = details or {}
        self.provider_errors = provider_errors or []

    def __str__(self) -> str:
        label = " ".join(part for part in (self.code, self.name) if part)
        return f"{label}: {self.message}" if label else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, name={self.name!r}, status={self.status!r}, "
            f"request_id={self.request_id!r}, message={self.message!r})"
        )


class APIError(GenplaneError):
    """The server answered with an error status (4xx/5xx)."""


class AuthenticationError(APIError):
    """401: no key, an unknown, revoked or expired key, or a key of another region."""


class PermissionDeniedError(APIError):
    """403: the key lacks the scope, the caller's IP is not allowed, or it is blocked."""


class InsufficientCreditsError(APIError):
    """402: the generation costs more than the balance; nothing was started."""


class NotFoundError(APIError):
    """404: unknown generation, model or route (or a generation of another account)."""


class ConflictError(APIError):
    """409: not cancelable any more, or an Idempotency-Key reused with another body."""


class RequestValidationError(APIError):
    """400/413/422: the request does not fit the contract or the model; ``details`` says where."""


class RateLimitError(APIError):
    """429: too many requests, failed authentications or generations in flight.

    ``rate_limit.retry_after`` is how long the server asked to wait."""


class ServerError(APIError):
    """5xx: the server or every provider failed; ``retryable`` says whether to try again."""


class NetworkError(GenplaneError):
    """No answer arrived: DNS, refused or dropped connection (``__cause__`` holds httpx's error)."""


class RequestTimeoutError(NetworkError):
    """The request took longer than the client's timeout (or the server answered 408)."""


class GenerationFailedError(GenplaneError):
    """A waited-for generation ended ``failed`` or ``canceled``; ``generation`` is its record.

    ``code`` and ``name`` are the record's ``generation_error_code`` and
    ``generation_error_name`` (``None`` for a cancel)."""

    def __init__(self, generation: Generation) -> None:
        status, code = generation.generation_status, generation.generation_error_code
        message = generation.generation_error or f"generation {generation.generation_id} {status}"
        super().__init__(
            message,
            code=code,
            name=generation.generation_error_name or _registry().by_code.get(code or ""),
            type=_registry().types.get(generation.generation_error_name or ""),
        )
        self.generation = generation
        self.generation_id = generation.generation_id
        self.generation_status = status


class GenerationTimeoutError(GenplaneError):
    """The wait's deadline passed while the generation was still ``pending``/``processing``.

    The generation keeps running: wait again, or cancel it."""

    def __init__(self, generation_id: str, timeout: float, last_status: str) -> None:
        super().__init__(
            f"generation {generation_id} still {last_status} after {timeout:g} s", retryable=True
        )
        self.generation_id = generation_id
        self.timeout = timeout
        self.last_status = last_status


class WebhookVerificationError(GenplaneError, ValueError):
    """A webhook's signature is missing, malformed, stale or wrong: refuse the request."""


# -- from a response to an exception -------------------------------------------------


class _Registry:
    """Code -> flat name and name -> type, from the contract's registry (stdlib-only module)."""

    def __init__(self) -> None:
        from genplane.contract.errors import ERRORS

        self.types = {spec.name: spec.type for spec in ERRORS.values()}
        self.by_code: dict[str, str] = {}
        for spec in ERRORS.values():
            self.by_code.setdefault(spec.code, spec.name)  # BSE1002: invalid_api_key, listed first


@cache
def _registry() -> _Registry:
    return _Registry()


_BY_STATUS: dict[int, type[APIError]] = {
    400: RequestValidationError,
    401: AuthenticationError,
    402: InsufficientCreditsError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: RequestValidationError,
    422: RequestValidationError,
    429: RateLimitError,
}


def _error_class(status: int) -> type[APIError]:
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, APIError)


def _fields(body: Any) -> dict[str, Any]:
    """The error's fields from either wire shape, as one flat dict (empty when unreadable)."""
    if not isinstance(body, dict):
        return {}
    inner = body.get("error")
    if isinstance(inner, dict):  # nested: {"error": {code, type, message, retryable, ...}}
        fields = dict(inner)
    else:  # flat: {"error": "bse_...", "code": "BSE...", ...}
        fields = {k: body.get(k) for k in ("code", "message", "retryable", "details", "provider_errors")}
        fields["name"] = inner if isinstance(inner, str) else None
    fields["request_id"] = body.get("request_id")
    return fields


def error_from_response(status: int, headers: Mapping[str, str], content: bytes) -> GenplaneError:
    """Build the exception for one error answer, whatever its shape.

    A body that is not the contract's (a proxy's HTML 502, say) still yields an error
    with the status, the ``X-Request-Id`` when present and a retry verdict by status
    (408, 429 and 5xx may pass later), so callers never see a JSON decoding error."""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    f = _fields(body)
    registry = _registry()
    code = f.get("code") if isinstance(f.get("code"), str) else None
    name = f.get("name") or (registry.by_code.get(code) if code else None)
    type_ = f.get("type") if isinstance(f.get("type"), str) else registry.types.get(name or "")
    retryable = f.get("retryable")
    if not isinstance(retryable, bool):
        retryable = status in (408, 429) or status >= 500
    message = str(f["message"]) if isinstance(f.get("message"), str) else f"HTTP {status}"
    details = f.get("details") if isinstance(f.get("details"), dict) else None
    provider_errors = f.get("provider_errors") if isinstance(f.get("provider_errors"), list) else None
    cls: type[GenplaneError] = RequestTimeoutError if status == 408 else _error_class(status)
    return cls(
        message,
        code=code,
        name=name,
        type=type_,
        status=status,
        request_id=f.get("request_id") or headers.get("x-request-id"),
        retryable=retryable,
        rate_limit=parse_rate_limit(headers),
        details=details,
        provider_errors=provider_errors,
    )
