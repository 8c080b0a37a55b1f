"""The transactional outbox: events are rows written by the transaction that causes them.

``emit`` runs inside the caller's session, so an event exists exactly when its state
change committed: a crash before the commit loses both, a crash after it loses
neither, and the dispatcher delivers whatever it finds. One delivery row is made per
subscribed endpoint; an endpoint that is disabled gets its row straight in the
dead-letter list, from which it can be replayed.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select
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


async def emit(
    s: AsyncSession,
    account_id: str,
    event_type: str,
    data: dict[str, Any],
    *,
    endpoint_id: str | None = None,
) -> str | None:
    """Queue ``event_type`` for the account's subscribed endpoints (or one endpoint).

    Returns the event id, or None when no endpoint wants it (nothing is written).
    """
    query = select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id)
    if endpoint_id is not None:
        query = query.where(WebhookEndpoint.id == endpoint_id)
    endpoints = [
        e
        for e in (await s.scalars(query)).all()
        if endpoint_id is not None or event_type in (e.events or [])
    ]
    if not endpoints:
        return None
    now = utcnow()
    event = WebhookEvent(
        id=str(uuid.uuid4()), account_id=account_id, type=event_type, data=data, created_at=now
    )
    s.add(event)
    await s.flush()  # the event row before the deliveries that reference it
    for endpoint in endpoints:
        s.add(new_delivery(event.id, endpoint, now))
    return event.id


def new_delivery(event_id: str, endpoint: WebhookEndpoint, now: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=str(uuid.uuid4()),
        event_id=event_id,
        endpoint_id=endpoint.id,
        account_id=endpoint.account_id,
        status=DeliveryStatus.PENDING if endpoint.enabled else DeliveryStatus.DEAD,
        attempts=0,
        next_attempt_at=now,
        lease_until=None,
        last_attempt_at=None,
        last_status_code=None,
        last_error=None if endpoint.enabled else "the endpoint is disabled",
        created_at=now,
        finished_at=None if endpoint.enabled else now,
    )
