"""The one registry of error values.

Both wire shapes (flat and nested), the OpenAPI document and the README table are
derived from ``ERRORS``; code raises :class:`ApiError` with a name and never builds
error JSON itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

#: Every registered name, so mypy checks each ``ApiError``/``ProviderError`` name at its raise.
#: ``tests/test_contract.py`` keeps it equal to ``ERRORS``.
ErrorName = Literal[
    "bse_authentication_required",
    "bse_invalid_api_key",
    "bse_region_mismatch",
    "bse_insufficient_permissions",
    "bse_insufficient_credits",
    "bse_rate_limit_exceeded",
    "bse_auth_rate_limited",
    "bse_ip_not_allowed",
    "bse_account_not_found",
    "bse_concurrency_limit_exceeded",
    "bse_request_blocked",
    "bse_invalid_input",
    "bse_file_too_large",
    "bse_file_too_small",
    "bse_unsupported_file_format",
    "bse_file_load_error",
    "bse_content_policy_violation",
    "bse_file_size_exceeded",
    "bse_parameter_out_of_range",
    "bse_file_download_error",
    "bse_payload_too_large",
    "bse_generation_not_found",
    "bse_generation_not_cancelable",
    "bse_unsafe_file_url",
    "bse_idempotency_key_reused",
    "bse_idempotency_in_progress",
    "bse_route_not_found",
    "bse_request_timeout",
    "bse_model_not_found",
    "bse_model_not_configured",
    "bse_unsupported_parameter",
    "bse_model_type_mismatch",
    "bse_provider_timeout",
    "bse_all_providers_failed",
    "bse_provider_error",
    "bse_provider_unavailable",
    "bse_provider_credits_exhausted",
    "bse_internal_error",
    "bse_database_error",
    "bse_storage_error",
]


@dataclass(frozen=True)
class ErrorSpec:
    name: str
    code: str
    type: str
    http_status: int
    retryable: bool
    message: str


def _spec(name: str, code: str, type_: str, status: int, retryable: bool, message: str) -> ErrorSpec:
    return ErrorSpec(f"bse_{name}", code, type_, status, retryable, message)


_SPECS = [
    _spec(
        "authentication_required",
        "BSE1001",
        "authentication_required",
        401,
        False,
        "Authentication is required: send 'Authorization: Bearer <api key>'.",
    ),
    _spec(
        "invalid_api_key",
        "BSE1002",
        "authentication_failed",
        401,
        False,
        "The provided API key is invalid or expired.",
    ),
    _spec(
        "region_mismatch",
        "BSE1002",
        "authentication_failed",
        401,
        False,
        "The provided API key belongs to another region.",
    ),
    _spec(
        "insufficient_permissions",
        "BSE1003",
        "insufficient_permissions",
        403,
        False,
        "The API key lacks the scope this operation requires.",
    ),
    _spec(
        "insufficient_credits",
        "BSE1004",
        "insufficient_credits",
        402,
        False,
        "The credit balance is too low for this request.",
    ),
    _spec(
        "rate_limit_exceeded",
        "BSE1005",
        "rate_limit_exceeded",
        429,
        True,
        "Too many requests for this account; retry after the indicated delay.",
    ),
    _spec(
        "auth_rate_limited",
        "BSE1006",
        "auth_rate_limited",
        429,
        True,
        "Too many failed authentication attempts from this address; retry later.",
    ),
    _spec(
        "ip_not_allowed",
        "BSE1007",
        "ip_not_allowed",
        403,
        False,
        "The caller's IP address is not in this API key's allowlist.",
    ),
    _spec(
        "account_not_found",
        "BSE1008",
        "account_not_found",
        404,
        False,
        "The account of this API key no longer exists.",
    ),
    _spec(
        "concurrency_limit_exceeded",
        "BSE1009",
        "concurrency_limit_exceeded",
        429,
        True,
        "Too many generations are in flight for this account; retry when some finish.",
    ),
    _spec(
        "request_blocked",
        "BSE1090",
        "request_blocked",
        403,
        False,
        "The caller is blocked for a while after repeated non-conforming requests.",
    ),
    _spec("invalid_input", "BSE2001", "invalid_input", 400, False, "The request is invalid."),
    _spec(
        "file_too_large",
        "BSE2002",
        "file_too_large",
        422,
        False,
        "An input image is larger than the model accepts.",
    ),
    _spec(
        "file_too_small",
        "BSE2003",
        "file_too_small",
        422,
        False,
        "An input image is smaller than the model accepts.",
    ),
    _spec(
        "unsupported_file_format",
        "BSE2004",
        "unsupported_file_format",
        422,
        False,
        "An input file is not a JPEG, PNG or WebP image.",
    ),
    _spec(
        "file_load_error",
        "BSE2005",
        "file_load_error",
        422,
        False,
        "An input file was downloaded but could not be decoded.",
    ),
    _spec(
        "content_policy_violation",
        "BSE2006",
        "content_policy_violation",
        422,
        False,
        "The provider refused the request under its content policy.",
    ),
    _spec(
        "file_size_exceeded",
        "BSE2007",
        "file_size_exceeded",
        422,
        False,
        "An input file is over the byte limit.",
    ),
    _spec(
        "parameter_out_of_range",
        "BSE2008",
        "parameter_out_of_range",
        422,
        False,
        "A parameter is outside the model's allowed values.",
    ),
    _spec(
        "file_download_error",
        "BSE2009",
        "file_download_error",
        422,
        False,
        "An input file could not be downloaded.",
    ),
    _spec(
        "payload_too_large",
        "BSE2010",
        "request_body_too_large",
        413,
        False,
        "The request body is larger than 100 KB.",
    ),
    _spec(
        "generation_not_found",
        "BSE2011",
        "generation_not_found",
        404,
        False,
        "No generation with this id exists for this account.",
    ),
    _spec(
        "generation_not_cancelable",
        "BSE2012",
        "generation_not_cancelable",
        409,
        False,
        "The generation has already finished and cannot be canceled.",
    ),
    _spec(
        "unsafe_file_url",
        "BSE2014",
        "unsafe_file_url",
        422,
        False,
        "An input file URL is not a public http(s) address.",
    ),
    _spec(
        "idempotency_key_reused",
        "BSE2015",
        "idempotency_key_conflict",
        409,
        False,
        "This Idempotency-Key was already used with a different request body.",
    ),
    _spec(
        "idempotency_in_progress",
        "BSE2016",
        "idempotency_request_in_progress",
        409,
        True,
        "A request with this Idempotency-Key is still being handled.",
    ),
    _spec(
        "route_not_found",
        "BSE2017",
        "endpoint_not_found",
        404,
        False,
        "No such endpoint: the path or method is not part of the API.",
    ),
    _spec(
        "request_timeout",
        "BSE2018",
        "request_timeout",
        408,
        True,
        "The request was not received in time; send it again.",
    ),
    _spec("model_not_found", "BSE3001", "model_not_found", 404, False, "Unknown model identifier."),
    _spec(
        "model_not_configured",
        "BSE3002",
        "model_not_configured",
        500,
        False,
        "The model's catalogue entry is incomplete.",
    ),
    _spec(
        "unsupported_parameter",
        "BSE3003",
        "feature_not_supported",
        422,
        False,
        "The model does not accept this parameter.",
    ),
    _spec(
        "model_type_mismatch",
        "BSE3004",
        "model_type_mismatch",
        422,
        False,
        "The model's type does not match this endpoint.",
    ),
    _spec(
        "provider_timeout", "BSE4001", "provider_timeout", 504, True, "The provider did not finish in time."
    ),
    _spec(
        "all_providers_failed",
        "BSE4003",
        "all_providers_failed",
        502,
        True,
        "Every provider in the chain failed.",
    ),
    _spec("provider_error", "BSE4004", "provider_internal_error", 502, True, "The provider failed."),
    _spec(
        "provider_unavailable",
        "BSE4005",
        "provider_unavailable",
        503,
        True,
        "No configured, healthy provider serves this model.",
    ),
    _spec(
        "provider_credits_exhausted",
        "BSE4010",
        "provider_credits_exhausted",
        502,
        False,
        "The provider account is out of funds or quota.",
    ),
    # Not retryable by default, as the contract has it: an unexpected failure is not known to
    # pass. Raisers that know a failure is transient (a lost database connection) say so.
    _spec("internal_error", "BSE5001", "internal_server_error", 500, False, "An unexpected error occurred."),
    _spec("database_error", "BSE5002", "database_error", 500, False, "The database failed or timed out."),
    _spec("storage_error", "BSE5003", "storage_error", 500, False, "File storage failed."),
]

ERRORS: dict[str, ErrorSpec] = {s.name: s for s in _SPECS}


@dataclass
class ApiError(Exception):
    """An error value on its way to the client; ``name`` keys into ``ERRORS``."""

    name: ErrorName
    message: str | None = None
    details: dict[str, Any] | None = None
    provider_errors: list[dict[str, Any]] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retryable: bool | None = None

    def __post_init__(self) -> None:
        if self.name not in ERRORS:
            raise KeyError(f"unregistered error {self.name}")
        super().__init__(self.name)

    @property
    def spec(self) -> ErrorSpec:
        return ERRORS[self.name]

    @property
    def status_code(self) -> int:
        return self.spec.http_status

    @property
    def text(self) -> str:
        return self.message or self.spec.message

    @property
    def is_retryable(self) -> bool:
        return self.spec.retryable if self.retryable is None else self.retryable


def invalid_input(field_name: str, message: str) -> ApiError:
    return ApiError("bse_invalid_input", message, details={"field": field_name})


def failure_fields(message: str | None, name: str | None) -> dict[str, str | None]:
    """How a failed generation names its error, in records, lists and webhook payloads alike:
    the registry code in ``generation_error_code``, the flat name in ``generation_error_name``."""
    spec = ERRORS.get(name) if name is not None else None
    return {
        "generation_error": message,
        "generation_error_code": spec.code if spec is not None else name,
        "generation_error_name": name,
    }
