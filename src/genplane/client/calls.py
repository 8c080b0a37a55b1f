"""The 17 operations as data: what to send and how to read the answer, with no I/O.

Each builder returns a :class:`Call`; the sync and the async client send it the same
way (:mod:`genplane.client.flows`), so an operation is written once for both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

from pydantic import ValidationError

from genplane.client.errors import APIError
from genplane.client.headers import parse_rate_limit
from genplane.client.models import (
    AccountData,
    BillingData,
    CancelData,
    CreateData,
    DeleteData,
    EstimateData,
    Generation,
    GenerationList,
    HealthModelsData,
    HealthProvidersData,
    LibraryModelsData,
    LibraryProvidersData,
    Page,
    Response,
    ServiceHealth,
    StatusData,
    UsageData,
)

R = TypeVar("R", bound=Response[Any])

#: The longest ``Prefer: wait`` the contract accepts.
MAX_PREFER_WAIT = 60
#: Methods that change nothing (or change it the same way twice): safe to send again.
REPLAYABLE_METHODS = frozenset({"GET", "HEAD", "DELETE"})


@dataclass(frozen=True)
class Call(Generic[R]):
    """One request to the API, and the envelope type its 2xx answer is read into."""

    method: str
    path: str
    response_type: type[R]
    params: Mapping[str, str] = field(default_factory=dict)
    body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Seconds the server may hold the answer (``Prefer: wait``); the read timeout grows by it.
    wait: int | None = None

    @property
    def replayable(self) -> bool:
        """May it be sent again after a failure? Only without side effects, or under a key
        that makes the server answer a repeat with the first answer."""
        return self.method in REPLAYABLE_METHODS or "Idempotency-Key" in self.headers

    def parse(self, status: int, headers: Mapping[str, str], content: bytes) -> R:
        """Read a 2xx answer; header-borne facts (replay, rate limit, wait granted) join it."""
        try:
            body = json.loads(content)
            if not isinstance(body, dict):
                raise ValueError("the body is not a JSON object")
            body["idempotency_replayed"] = headers.get("idempotency-replayed", "").lower() == "true"
            body["rate_limit"] = parse_rate_limit(headers)
            body["preference_applied"] = headers.get("preference-applied")
            return self.response_type.model_validate(body)
        except (ValueError, ValidationError) as exc:
            raise APIError(
                f"unexpected answer to {self.method} {self.path}: {exc}",
                status=status,
                request_id=headers.get("x-request-id"),
            ) from exc


def _prefer(wait: int | None) -> dict[str, str]:
    if wait is None:
        return {}
    if isinstance(wait, bool) or not isinstance(wait, int) or not 1 <= wait <= MAX_PREFER_WAIT:
        raise ValueError(f"wait takes a whole number of seconds from 1 to {MAX_PREFER_WAIT}, not {wait!r}")
    return {"Prefer": f"wait={wait}"}


def _id(generation_id: str) -> str:
    if not generation_id:
        raise ValueError("a generation id is required")
    return quote(generation_id, safe="")


def _model(model_identifier: str) -> str:
    if not model_identifier:
        raise ValueError("a model identifier is required")
    return quote(model_identifier, safe="/")  # identifiers keep their slash in the path


def _query(**values: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, float) and value.is_integer():
            out[key] = str(int(value))  # 3.0 -> "3": the server reads whole seconds as integers
        else:
            out[key] = str(value)
    return out


# -- account ---------------------------------------------------------------------------


def status() -> Call[Response[StatusData]]:
    """The key's identity: which account and key a request runs as (``GET /v1/status``)."""
    return Call("GET", "/v1/status", Response[StatusData])


def usage(days: int | None = None) -> Call[Response[UsageData]]:
    """Requests, errors, generations and provider spend over the last ``days`` (1-90, default 30)."""
    return Call("GET", "/v1/usage", Response[UsageData], params=_query(days=days))


def account() -> Call[Response[AccountData]]:
    """The key's account (``GET /v1/user/account``)."""
    return Call("GET", "/v1/user/account", Response[AccountData])


def billing() -> Call[Response[BillingData]]:
    """Plan and credit balance (``GET /v1/user/billing``); 1 credit = 1 USD."""
    return Call("GET", "/v1/user/billing", Response[BillingData])


def estimate(
    model: str,
    count: int | None = None,
    duration: float | None = None,
    resolution: str | None = None,
    audio: bool | None = None,
) -> Call[Response[EstimateData]]:
    """What ``count`` generations would cost, and whether the balance covers them.

    Ask before a batch: a create refused for credits has still cost a request."""
    return Call(
        "GET",
        f"/v1/estimate/{_model(model)}",
        Response[EstimateData],
        params=_query(count=count, duration=duration, resolution=resolution, audio=audio),
    )


# -- generations -----------------------------------------------------------------------


def generate(
    model: str,
    params: Mapping[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    wait: int | None = None,
    **fields: Any,
) -> Call[Response[CreateData]]:
    """Start a generation; the answer carries its ``generation_id``, not its files.

    Fields come from ``params`` and keyword arguments alike (``generation_prompt=...``).
    A body with ``generation_duration`` goes to the video route, as in the official SDK.
    Without ``idempotency_key`` a fresh one is made here, once per call, and every retry
    sends it again: a create whose answer was lost is then replayed by the server
    instead of being run (and charged) twice. ``wait`` (1-60) asks the server to hold
    the answer until the generation ends or that many seconds pass."""
    body = {**(params or {}), **fields}
    if not body.get("generation_prompt"):
        raise ValueError("generation_prompt is required")
    route = "video" if body.get("generation_duration") is not None else "image"
    key = idempotency_key or f"genplane-py-{uuid.uuid4()}"
    return Call(
        "POST",
        f"/v1/generate/{route}/{_model(model)}",
        Response[CreateData],
        body=body,
        headers={"Idempotency-Key": key, **_prefer(wait)},
        wait=wait,
    )


def get_generation(generation_id: str, wait: int | None = None) -> Call[Response[Generation]]:
    """One generation's record; ``wait`` (1-60 s) holds the answer until it is terminal."""
    return Call(
        "GET", f"/v1/content/{_id(generation_id)}", Response[Generation], headers=_prefer(wait), wait=wait
    )


def list_generations(limit: int | None = None, offset: int | None = None) -> Call[Page[GenerationList]]:
    """A page of the account's generations, newest first (``limit`` 1-100, default 50)."""
    return Call("GET", "/v1/content/list", Page[GenerationList], params=_query(limit=limit, offset=offset))


def delete_generation(generation_id: str) -> Call[Response[DeleteData]]:
    """Delete a generation and its stored files (their URLs stop answering)."""
    return Call("DELETE", f"/v1/content/{_id(generation_id)}", Response[DeleteData])


def cancel_generation(generation_id: str) -> Call[Response[CancelData]]:
    """Cancel a pending or processing generation; its reservation is refunded.

    Not retried automatically: a second cancel after a lost answer would be refused
    (409, already canceled) and hide that the first one worked."""
    return Call("POST", f"/v1/content/generation/cancel/{_id(generation_id)}", Response[CancelData])


# -- library and health ----------------------------------------------------------------


def library_providers() -> Call[Response[LibraryProvidersData]]:
    """The inference providers this server knows (``GET /v1/library/providers``)."""
    return Call("GET", "/v1/library/providers", Response[LibraryProvidersData])


def library_models() -> Call[Response[LibraryModelsData]]:
    """Every model, its price and the fields it accepts (``GET /v1/library/models``)."""
    return Call("GET", "/v1/library/models", Response[LibraryModelsData])


def health_providers() -> Call[Response[HealthProvidersData]]:
    """Per-provider status from real attempts (``GET /v1/health/inference/providers``)."""
    return Call("GET", "/v1/health/inference/providers", Response[HealthProvidersData])


def health_models() -> Call[Response[HealthModelsData]]:
    """Which providers can serve each model here (``GET /v1/health/inference/models``)."""
    return Call("GET", "/v1/health/inference/models", Response[HealthModelsData])


def health_storage() -> Call[Response[ServiceHealth]]:
    """A live write-read-delete probe of output storage (``GET /v1/health/storage``)."""
    return Call("GET", "/v1/health/storage", Response[ServiceHealth])


def health_cache() -> Call[Response[ServiceHealth]]:
    """A live probe of the shared cache, ``redis`` or ``memory`` (``GET /v1/health/cache``)."""
    return Call("GET", "/v1/health/cache", Response[ServiceHealth])
