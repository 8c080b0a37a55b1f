"""The transactional outbox: events are rows written by the transaction that causes them.

``emit`` runs inside the caller's session, so an event exists exactly when its state
change committed: a crash before the commit loses both, a crash after it loses
neither, and the dispatcher delivers whatever it finds. One delivery row is made per
subscribed endpoint; an endpoint that is disabled gets its row straight in the
dead-letter list, from which it can be replayed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast

from sqlalchemy import ColumnElement, Exists, Table, bindparam, exists, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from genplane.clock import utcnow
from genplane.contract.status import DeliveryStatus
from genplane.db.models import WebhookDelivery, WebhookEndpoint, WebhookEvent

GENERATION_EVENTS = (
    "generation.started",
    "generation.completed",
    "generation.failed",
    "generation.canceled",
)
EVENT_TYPES = (*GENERATION_EVENTS, "credits.low_balance", "webhook.test")
SUBSCRIBABLE = tuple(e for e in EVENT_TYPES if e != "webhook.test")

_ENDPOINT = cast(Table, WebhookEndpoint.__table__)


#: The columns of an endpoint that decide its deliveries, by account: one indexed read per
#: event, without loading ORM objects (the worker emits two events per generation).
_ENDPOINTS = select(
    _ENDPOINT.c.id, _ENDPOINT.c.account_id, _ENDPOINT.c.events, _ENDPOINT.c.enabled
).where(_ENDPOINT.c.account_id == bindparam("account_id"))
_ONE_ENDPOINT = _ENDPOINTS.where(_ENDPOINT.c.id == bindparam("endpoint_id"))
_INSERT_EVENT = insert(cast(Table, WebhookEvent.__table__))
_INSERT_DELIVERY = insert(cast(Table, WebhookDelivery.__table__))


def has_endpoints(account_id: ColumnElement[str]) -> Exists:
    """Whether ``account_id`` has any endpoint, as an expression for the caller's own statement to
    return: an account with none (most) then costs its events no lookup (``emit``'s
    ``any_endpoint``)."""
    return exists().where(_ENDPOINT.c.account_id == account_id)


class Subscriber(Protocol):
    """What a delivery needs of its endpoint (a row of :data:`_ENDPOINTS` or an ORM endpoint)."""

    @property
    def id(self) -> str: ...
    @property
    def account_id(self) -> str: ...
    @property
    def enabled(self) -> bool: ...


async def subscribers(
    s: AsyncSession, account_id: str, event_type: str, *, endpoint_id: str | None = None
) -> list[Subscriber]:
    """The account's endpoints that get ``event_type`` (or just ``endpoint_id``, whatever it
    subscribes to), disabled ones included: their deliveries go to the dead-letter list."""
    if endpoint_id is not None:
        rows = await s.execute(_ONE_ENDPOINT, {"account_id": account_id, "endpoint_id": endpoint_id})
        return [cast(Subscriber, e) for e in rows.all()]
    rows = await s.execute(_ENDPOINTS, {"account_id": account_id})
    return [cast(Subscriber, e) for e in rows.all() if event_type in (e.events or [])]


async def emit(
    s: AsyncSession,
    account_id: str,
    event_type: str,
    data: dict[str, Any] | Callable[[], dict[str, Any]],
    *,
    endpoint_id: str | None = None,
    any_endpoint: bool | None = None,
) -> str | None:
    """Queue ``event_type`` for the account's subscribed endpoints (or one endpoint).

    Returns the event id, or None when no endpoint wants it (nothing is written). ``data``
    may be a function, called only when an endpoint wants the event. ``any_endpoint``:
    whether the account has endpoints at all, when the caller's transaction has just read
    it (:func:`has_endpoints`); False spares the lookup.
    """
    if any_endpoint is False:
        return None
    endpoints = await subscribers(s, account_id, event_type, endpoint_id=endpoint_id)
    if not endpoints:
        return None
    return await write_event(s, endpoints, account_id, event_type, data() if callable(data) else data)


async def write_event(
    s: AsyncSession,
    endpoints: Sequence[Subscriber],
    account_id: str,
    event_type: str,
    data: dict[str, Any],
) -> str:
    """The event row and one delivery per endpoint, as Core inserts in the caller's transaction."""
    now = utcnow()
    event_id = str(uuid.uuid4())
    await s.execute(
        _INSERT_EVENT,
        {"id": event_id, "account_id": account_id, "type": event_type, "data": data, "created_at": now},
    )
    await s.execute(_INSERT_DELIVERY, [_delivery_values(event_id, e, now) for e in endpoints])
    return event_id


def new_delivery(event_id: str, endpoint: Subscriber, now: Any) -> WebhookDelivery:
    return WebhookDelivery(**_delivery_values(event_id, endpoint, now))


def _delivery_values(event_id: str, endpoint: Subscriber, now: Any) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "event_id": event_id,
        "endpoint_id": endpoint.id,
        "account_id": endpoint.account_id,
        "status": DeliveryStatus.PENDING if endpoint.enabled else DeliveryStatus.DEAD,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_until": None,
        "last_attempt_at": None,
        "last_status_code": None,
        "last_error": None if endpoint.enabled else "the endpoint is disabled",
        "created_at": now,
        "finished_at": None if endpoint.enabled else now,
    }
