"""The dispatcher: sends due deliveries, signs them, retries, disables, dead-letters.

Deliveries are claimed from the database with a short lease, like generation jobs, so
several processes can dispatch and a crash only delays a delivery: its lease lapses
and the next sweep sends it again with the same delivery id (at-least-once). Only a
2xx answer counts; redirects are failures (``follow_redirects`` is off and the
destination is pinned to the public address that was checked). Failures are retried
on ``GENPLANE_WEBHOOK_RETRY_SCHEDULE_SECONDS`` with jitter, never sooner than a
``Retry-After``. When one delivery has failed
``GENPLANE_WEBHOOK_MAX_CONSECUTIVE_FAILURES`` times with no success at the endpoint in
between, the endpoint is disabled and its pending
deliveries move to the dead-letter list; a delivery the endpoint keeps refusing while it
accepts others is dead-lettered alone once the schedule is exhausted. Counting per
delivery, not per attempt, keeps a short outage with many queued events from disabling
an endpoint at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from datetime import timedelta

import httpx
import orjson
import structlog
from sqlalchemy import and_, delete, or_, select, update

from genplane import __version__
from genplane.clock import iso, utcnow
from genplane.contract.status import DeliveryStatus
from genplane.db.engine import Database
from genplane.db.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from genplane.net.fetch import FetchError, PinnedFetcher
from genplane.net.retry_after import parse_retry_after
from genplane.settings import Settings
from genplane.webhooks.secrets import endpoint_secret, server_key
from genplane.webhooks.signing import babysea_signature, standard_webhook_headers

log = structlog.get_logger("genplane.webhooks")

MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
JITTER = 0.2


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    error: str | None
    retry_after: float | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class WebhookDispatcher:
    def __init__(
        self, db: Database, settings: Settings, client: httpx.AsyncClient, guard: PinnedFetcher
    ) -> None:
        self.db = db
        self.settings = settings
        self.client = client
        self.guard = guard
        self.key = server_key(settings)
        self.owner_lease = timedelta(seconds=settings.webhook_timeout_seconds * 3 + 5)
        self._task: asyncio.Task[None] | None = None
        self._inflight: dict[asyncio.Task[Outcome | None], str] = {}  # task -> delivery id
        self._wake = asyncio.Event()
        self._last_purge = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop sending and hand back the leases of deliveries cut short, so that the next
        process sends them at once (same delivery ids) instead of after the lease."""
        cut_short = list(self._inflight.values())
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._inflight.clear()
        if cut_short:
            async with self.db.write() as s:
                await s.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id.in_(cut_short), WebhookDelivery.status == DeliveryStatus.PENDING
                    )
                    .values(lease_until=None)
                )

    async def _loop(self) -> None:
        """Keep up to ``webhook_concurrency`` deliveries in flight; a slow receiver holds one slot."""
        while True:
            claimed = 0
            try:
                room = self.settings.webhook_concurrency - len(self._inflight)
                if room > 0:
                    for delivery_id in await self.claim_due(room):
                        task = asyncio.create_task(self.deliver(delivery_id))
                        self._inflight[task] = delivery_id
                        task.add_done_callback(self._finished)
                        claimed += 1
                if time.monotonic() - self._last_purge > 600:
                    self._last_purge = time.monotonic()
                    await self.purge()
            except Exception:
                log.exception("webhook_dispatch_failed")
            if not claimed:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settings.webhook_poll_interval_seconds):
                        await self._wake.wait()

    def _finished(self, task: asyncio.Task[Outcome | None]) -> None:
        self._inflight.pop(task, None)
        self._wake.set()  # a slot is free
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook_delivery_crashed", error=repr(task.exception()))

    async def run_due(self) -> int:
        """Claim and send the deliveries due now, waiting for them; returns how many (tests, CLI)."""
        claimed = await self.claim_due(self.settings.webhook_concurrency)
        await asyncio.gather(*(self.deliver(d) for d in claimed))
        return len(claimed)

    # -- claiming --------------------------------------------------------------------

    async def claim_due(self, limit: int) -> list[str]:
        """Take the lease of up to ``limit`` deliveries that are due now."""
        now = utcnow()
        due = or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now)
        ready = and_(
            WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= now, due
        )
        async with self.db.read() as s:
            ids = list(
                (
                    await s.scalars(
                        select(WebhookDelivery.id)
                        .where(ready)
                        .order_by(WebhookDelivery.next_attempt_at)
                        .limit(limit)
                    )
                ).all()
            )
        if not ids:
            return []
        claimed: list[str] = []
        async with self.db.write() as s:
            for delivery_id in ids:
                res = await s.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery_id, ready)
                    .values(lease_until=now + self.owner_lease)
                )
                if res.rowcount:  # type: ignore[attr-defined]
                    claimed.append(delivery_id)
        return claimed

    # -- one delivery ----------------------------------------------------------------

    async def deliver(self, delivery_id: str) -> Outcome | None:
        async with self.db.read() as s:
            row = (
                await s.execute(
                    select(WebhookDelivery, WebhookEvent, WebhookEndpoint)
                    .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                    .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
                    .where(WebhookDelivery.id == delivery_id)
                )
            ).first()
        if row is None:
            return None
        delivery, event, endpoint = row
        if not endpoint.enabled:
            await self._dead_letter(delivery_id, "the endpoint is disabled")
            return None
        now = utcnow()
        body = orjson.dumps(
            {
                "webhook_event": event.type,
                "webhook_timestamp": iso(now),
                "webhook_delivery_id": delivery.id,
                "webhook_data": event.data,
            }
        )
        secret = endpoint_secret(self.key, endpoint.id, endpoint.secret_version)
        timestamp = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"genplane-webhooks/{__version__}",
            "X-BabySea-Event": event.type,
            "X-BabySea-Delivery-Id": delivery.id,
            "X-BabySea-Timestamp": str(iso(now)),
            "X-BabySea-Signature": babysea_signature(secret, timestamp, body),
            **standard_webhook_headers(secret, delivery.id, timestamp, body),
        }
        try:
            # One bound for the whole delivery: httpx's timeout applies per phase.
            async with asyncio.timeout(self.settings.webhook_timeout_seconds):
                outcome = await self._post(endpoint.url, body, headers)
        except TimeoutError:
            outcome = Outcome(None, f"no answer within {self.settings.webhook_timeout_seconds:g} s")
        await self._record(delivery, endpoint, outcome)
        log.info(
            "webhook_delivery",
            delivery_id=delivery.id,
            endpoint_id=endpoint.id,
            event_type=event.type,
            status=outcome.status_code,
            ok=outcome.ok,
            error=outcome.error,
        )
        return outcome

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        try:
            target = await self.guard.plan(url)
        except FetchError as exc:
            return Outcome(None, f"destination refused: {exc.message}")
        last = "no address"
        for request_url in target.requests:
            try:
                response = await self.client.post(
                    request_url,
                    content=body,
                    headers={**headers, **target.headers},
                    extensions=target.extensions or None,
                    timeout=self.settings.webhook_timeout_seconds,
                    follow_redirects=False,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = type(exc).__name__
                continue
            except httpx.HTTPError as exc:
                return Outcome(None, f"{type(exc).__name__}")
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            if 300 <= response.status_code < 400:
                return Outcome(response.status_code, "redirects are not followed", retry_after)
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
            return Outcome(response.status_code, error, retry_after)
        return Outcome(None, f"could not connect ({last})")

    def retry_delay(self, attempts: int, retry_after: float | None) -> float:
        schedule = self.settings.webhook_retry_schedule_seconds or [60.0]
        base = schedule[min(attempts - 1, len(schedule) - 1)]
        delay = base * random.uniform(1 - JITTER, 1 + JITTER)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_SECONDS))
        return delay

    async def _record(self, delivery: WebhookDelivery, endpoint: WebhookEndpoint, outcome: Outcome) -> None:
        now = utcnow()
        attempts = delivery.attempts + 1
        async with self.db.write() as s:
            if outcome.ok:
                await s.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery.id)
                    .values(
                        status=DeliveryStatus.DELIVERED,
                        attempts=attempts,
                        last_attempt_at=now,
                        last_status_code=outcome.status_code,
                        last_error=None,
                        lease_until=None,
                        finished_at=now,
                    )
                )
                await s.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.id == endpoint.id)
                    .values(consecutive_failures=0)
                )
                return
            failures = (
                await s.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.id == endpoint.id)
                    .values(consecutive_failures=WebhookEndpoint.consecutive_failures + 1, updated_at=now)
                    .returning(WebhookEndpoint.consecutive_failures)
                )
            ).scalar_one()
            await s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id)
                .values(
                    attempts=attempts,
                    last_attempt_at=now,
                    last_status_code=outcome.status_code,
                    last_error=outcome.error,
                    lease_until=None,
                    next_attempt_at=now + timedelta(seconds=self.retry_delay(attempts, outcome.retry_after)),
                )
            )
            limit = self.settings.webhook_max_consecutive_failures
            schedule_exhausted = attempts > len(self.settings.webhook_retry_schedule_seconds)
            if attempts >= limit and failures >= limit:
                # This event failed `limit` times and nothing reached the endpoint meanwhile.
                reason = f"a delivery failed {attempts} times in a row; last: {outcome.error}"
                await s.execute(
                    update(WebhookEndpoint)
                    .where(WebhookEndpoint.id == endpoint.id)
                    .values(enabled=False, disabled_reason=reason[:300])
                )
                await s.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.endpoint_id == endpoint.id,
                        WebhookDelivery.status == DeliveryStatus.PENDING,
                    )
                    .values(status=DeliveryStatus.DEAD, finished_at=now, lease_until=None)
                )
                log.warning("webhook_endpoint_disabled", endpoint_id=endpoint.id, failures=failures)
            elif schedule_exhausted:
                # The endpoint takes other events but never this one: stop, keep it for replay.
                await s.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == delivery.id)
                    .values(status=DeliveryStatus.DEAD, finished_at=now)
                )

    async def _dead_letter(self, delivery_id: str, reason: str) -> None:
        async with self.db.write() as s:
            await s.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.status == DeliveryStatus.PENDING)
                .values(status=DeliveryStatus.DEAD, finished_at=utcnow(), lease_until=None, last_error=reason)
            )

    async def purge(self) -> int:
        """Forget finished deliveries (and their events) older than the retention."""
        cutoff = utcnow() - timedelta(hours=self.settings.webhook_dead_letter_hours)
        async with self.db.write() as s:
            res = await s.execute(
                delete(WebhookDelivery).where(
                    and_(
                        WebhookDelivery.status != DeliveryStatus.PENDING, WebhookDelivery.finished_at < cutoff
                    )
                )
            )
            await s.execute(
                delete(WebhookEvent).where(
                    WebhookEvent.created_at < cutoff,
                    ~select(WebhookDelivery.id).where(WebhookDelivery.event_id == WebhookEvent.id).exists(),
                )
            )
        return int(res.rowcount or 0)  # type: ignore[attr-defined]
