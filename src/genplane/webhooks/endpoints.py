"""Operator actions on webhook endpoints: add, list, rotate, enable, disable, test, replay.

The CLI (and any operator API) calls these; none of them is one of the public API's
operations. A secret is returned only by ``add_endpoint`` and ``rotate_secret``, once.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import func, select, update

from genplane.clock import iso, utcnow
from genplane.contract.status import DeliveryStatus, GenerationStatus
from genplane.db.engine import Database
from genplane.db.models import Account, WebhookDelivery, WebhookEndpoint, WebhookEvent
from genplane.net.fetch import FetchError, PinnedFetcher
from genplane.settings import Settings
from genplane.webhooks.outbox import SUBSCRIBABLE, emit, new_delivery
from genplane.webhooks.secrets import endpoint_secret, server_key

MAX_URL_LENGTH = 2048  # the column's size


@dataclass(frozen=True)
class CreatedEndpoint:
    endpoint: WebhookEndpoint
    secret: str


@dataclass(frozen=True)
class DeadLetter:
    delivery: WebhookDelivery
    event_type: str


def check_events(events: list[str] | None) -> list[str]:
    chosen = list(dict.fromkeys(events)) if events else list(SUBSCRIBABLE)
    unknown = [e for e in chosen if e not in SUBSCRIBABLE]
    if unknown:
        raise ValueError(f"unknown events {unknown}; known: {', '.join(SUBSCRIBABLE)}")
    return chosen


async def add_endpoint(
    db: Database,
    settings: Settings,
    guard: PinnedFetcher,
    account_id: str,
    url: str,
    events: list[str] | None = None,
) -> CreatedEndpoint:
    """Register ``url`` for ``events`` (all by default) after checking it is a public address."""
    chosen = check_events(events)
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        await guard.plan(url)
    except FetchError as exc:
        raise ValueError(f"the URL cannot receive webhooks: {exc.message}") from None
    now = utcnow()
    endpoint = WebhookEndpoint(
        id=str(uuid.uuid4()),
        account_id=account_id,
        url=url,
        events=chosen,
        secret_version=1,
        enabled=True,
        disabled_reason=None,
        consecutive_failures=0,
        created_at=now,
        updated_at=now,
    )
    async with db.write() as s:
        account = await s.get(Account, account_id)
        if account is None or account.deleted_at is not None:
            raise ValueError(f"no account {account_id}")
        s.add(endpoint)
    return CreatedEndpoint(endpoint, endpoint_secret(server_key(settings), endpoint.id, 1))


async def list_endpoints(db: Database, account_id: str | None = None) -> list[WebhookEndpoint]:
    async with db.read() as s:
        query = select(WebhookEndpoint).order_by(WebhookEndpoint.created_at)
        if account_id:
            query = query.where(WebhookEndpoint.account_id == account_id)
        return list((await s.scalars(query)).all())


async def dead_letter_counts(db: Database, account_id: str | None = None) -> dict[str, int]:
    """How many dead-lettered deliveries each endpoint has (endpoints with none are absent)."""
    async with db.read() as s:
        query = (
            select(WebhookDelivery.endpoint_id, func.count())
            .where(WebhookDelivery.status == DeliveryStatus.DEAD)
            .group_by(WebhookDelivery.endpoint_id)
        )
        if account_id:
            query = query.where(WebhookDelivery.account_id == account_id)
        return {endpoint_id: int(n) for endpoint_id, n in (await s.execute(query)).all()}


async def get_endpoint(db: Database, endpoint_id: str) -> WebhookEndpoint:
    """The endpoint, or ValueError naming the unknown id."""
    return await _get(db, endpoint_id)


async def _get(db: Database, endpoint_id: str) -> WebhookEndpoint:
    async with db.read() as s:
        endpoint = await s.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise ValueError(f"no webhook endpoint {endpoint_id}")
    return endpoint


async def rotate_secret(db: Database, settings: Settings, endpoint_id: str) -> str:
    """A new secret; the old one stops signing at once."""
    async with db.write() as s:
        version = (
            await s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint_id)
                .values(secret_version=WebhookEndpoint.secret_version + 1, updated_at=utcnow())
                .returning(WebhookEndpoint.secret_version)
            )
        ).scalar_one_or_none()
    if version is None:
        raise ValueError(f"no webhook endpoint {endpoint_id}")
    return endpoint_secret(server_key(settings), endpoint_id, int(version))


async def set_enabled(db: Database, endpoint_id: str, enabled: bool) -> None:
    """Enable (resetting the failure count) or disable; disabled endpoints' events are dead-lettered."""
    now = utcnow()
    async with db.write() as s:
        res = await s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == endpoint_id)
            .values(
                enabled=enabled,
                consecutive_failures=0,
                disabled_reason=None if enabled else "disabled by the operator",
                updated_at=now,
            )
        )
        if not res.rowcount:  # type: ignore[attr-defined]
            raise ValueError(f"no webhook endpoint {endpoint_id}")
        if not enabled:
            await s.execute(
                update(WebhookDelivery)
                .where(
                    WebhookDelivery.endpoint_id == endpoint_id,
                    WebhookDelivery.status == DeliveryStatus.PENDING,
                )
                .values(status=DeliveryStatus.DEAD, finished_at=now, lease_until=None)
            )


async def send_test(db: Database, endpoint_id: str) -> str:
    """Queue a ``webhook.test`` event for this endpoint only; returns the event id."""
    endpoint = await _get(db, endpoint_id)
    async with db.write() as s:
        event_id = await emit(
            s,
            endpoint.account_id,
            "webhook.test",
            {
                "account_id": endpoint.account_id,
                "model_identifier": "test/webhook",
                "generation_id": str(uuid.uuid4()),
                "generation_status": GenerationStatus.SUCCEEDED,
                "generation_provider_used": None,
                "generation_prediction_id": None,
                "generation_output_file": [],
                "webhook_test_sent_at": iso(utcnow()),
            },
            endpoint_id=endpoint_id,
        )
    assert event_id is not None
    return event_id


async def replay(db: Database, endpoint_id: str) -> int:
    """Send the endpoint's dead-lettered deliveries again, as new deliveries (fresh ids)."""
    endpoint = await _get(db, endpoint_id)
    if not endpoint.enabled:
        raise ValueError("the endpoint is disabled; enable it before replaying")
    now = utcnow()
    async with db.write() as s:
        dead = (
            await s.scalars(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == DeliveryStatus.DEAD
                )
                .order_by(WebhookDelivery.created_at)
            )
        ).all()
        for old in dead:
            old.status = DeliveryStatus.REPLAYED
            s.add(new_delivery(old.event_id, endpoint, now))
    return len(dead)


async def dead_letters(db: Database, endpoint_id: str) -> list[WebhookDelivery]:
    async with db.read() as s:
        return list(
            (
                await s.scalars(
                    select(WebhookDelivery)
                    .where(
                        WebhookDelivery.endpoint_id == endpoint_id,
                        WebhookDelivery.status == DeliveryStatus.DEAD,
                    )
                    .order_by(WebhookDelivery.created_at)
                )
            ).all()
        )


async def dead_letters_with_events(db: Database, endpoint_id: str) -> list[DeadLetter]:
    """The endpoint's dead-lettered deliveries with their event types, oldest first."""
    await _get(db, endpoint_id)
    async with db.read() as s:
        rows = (
            await s.execute(
                select(WebhookDelivery, WebhookEvent.type)
                .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                .where(
                    WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == DeliveryStatus.DEAD
                )
                .order_by(WebhookDelivery.created_at)
            )
        ).all()
    return [DeadLetter(delivery, event_type) for delivery, event_type in rows]
