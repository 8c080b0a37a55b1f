"""Outbound webhooks end to end: the real app, the real dispatcher, a real receiver on 127.0.0.1.

The app's HTTP client has no stand-in transport here, so deliveries leave over TCP to
:class:`tests.webhook_receiver.Receiver` (allowed by ``webhook_allow_hosts``), and every
request that arrives is checked the way a customer would check it: ``verify`` for the
BabySea signature and the ``standardwebhooks`` library for the Standard Webhooks headers.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import func, select
from standardwebhooks import Webhook
from standardwebhooks import WebhookVerificationError as StandardVerificationError

from genplane.contract.errors import ERRORS
from genplane.credits.ledger import add_credits
from genplane.credits.money import to_millis
from genplane.db.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from genplane.jobs.fetch import FileFetcher
from genplane.providers.base import ProviderError
from genplane.providers.local import LocalProvider
from genplane.webhooks import WebhookVerificationError, verify
from genplane.webhooks.endpoints import (
    add_endpoint,
    dead_letters,
    replay,
    rotate_secret,
    send_test,
    set_enabled,
)
from genplane.webhooks.outbox import EVENT_TYPES, emit
from genplane.webhooks.secrets import endpoint_secret
from genplane.webhooks.signing import babysea_signature
from tests.conftest import Caller, Harness
from tests.webhook_receiver import Answer, Received, Receiver, until, verified_payload

FAST: dict[str, Any] = {
    "webhook_allow_hosts": ["127.0.0.1"],
    "webhook_retry_schedule_seconds": [0.05] * 20,
    "webhook_poll_interval_seconds": 0.02,
}

GENERATION_KEYS = {
    "account_id",
    "model_identifier",
    "generation_id",
    "generation_status",
    "generation_provider_used",
    "generation_prediction_id",
}
OPTIONAL_GENERATION_KEYS = {
    "generation_output_file",
    "generation_output_delivered",
    "generation_error",
    "generation_error_code",
    "generation_error_name",
    "credits_refunded",
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.astart()
    yield r
    await r.astop()


@pytest.fixture
async def down_receiver() -> AsyncIterator[Receiver]:
    """A receiver whose port is closed until the test starts it."""
    r = Receiver()
    yield r
    await r.astop()


async def fast_app(harness_factory: Callable[..., Any], **overrides: Any) -> Harness:
    h: Harness = await harness_factory(**{**FAST, **overrides})
    return h


async def subscribe(h: Harness, caller: Caller, url: str) -> tuple[str, str]:
    """Register ``url`` for every event of the caller's account; returns (endpoint id, secret)."""
    svc = h.services
    created = await add_endpoint(svc.db, svc.settings, svc.webhooks.guard, caller.account_id, url)
    assert created.secret.startswith("whsec_")
    return created.endpoint.id, created.secret


Row = tuple[WebhookDelivery, WebhookEvent]


async def deliveries(h: Harness, endpoint_id: str | None = None) -> list[Row]:
    async with h.services.db.read() as s:
        query = (
            select(WebhookDelivery, WebhookEvent)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .order_by(WebhookDelivery.created_at)
        )
        if endpoint_id is not None:
            query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
        return [(d, e) for d, e in (await s.execute(query)).all()]


async def endpoint_row(h: Harness, endpoint_id: str) -> WebhookEndpoint:
    async with h.services.db.read() as s:
        row = await s.get(WebhookEndpoint, endpoint_id)
    assert row is not None
    return row


async def event_count(h: Harness, event_type: str | None = None) -> int:
    async with h.services.db.read() as s:
        query = select(func.count()).select_from(WebhookEvent)
        if event_type is not None:
            query = query.where(WebhookEvent.type == event_type)
        return int(await s.scalar(query) or 0)


async def settled(h: Harness, endpoint_id: str, expected: int) -> list[Row]:
    """Wait until the endpoint has ``expected`` deliveries and none is pending."""

    async def check() -> list[Row] | None:
        rows = await deliveries(h, endpoint_id)
        if len(rows) == expected and all(d.status != "pending" for d, _ in rows):
            return rows
        return None

    rows: list[Row] = await until(check, what=f"{expected} settled deliveries")
    return rows


async def create(caller: Caller, outputs: int = 1) -> str:
    body = {"generation_prompt": "a red fox", "generation_output_number": outputs}
    r = await caller.create_image(body)
    assert r.status_code == 200, r.text
    gid: str = r.json()["data"]["generation_id"]
    return gid


# --------------------------------------------------------------------------- checks


def assert_signed(r: Received, secret: str, endpoint_id: str) -> dict[str, Any]:
    """Every check a receiver makes, and proof that each one can fail."""
    signature = r.headers["x-babysea-signature"]
    payload = verify(r.body, signature, secret)
    assert payload == orjson.loads(r.body)

    # One changed byte anywhere in the body, or in the digest, breaks it.
    for index in (0, len(r.body) // 2, len(r.body) - 1):
        tampered = bytearray(r.body)
        tampered[index] ^= 0x01
        with pytest.raises(WebhookVerificationError):
            verify(bytes(tampered), signature, secret)
        with pytest.raises(StandardVerificationError):
            Webhook(secret).verify(bytes(tampered), r.headers)
    t_part, v1_part = signature.split(",")
    digest = v1_part.removeprefix("v1=")
    flipped = digest[:-1] + ("0" if digest[-1] != "0" else "1")
    with pytest.raises(WebhookVerificationError):
        verify(r.body, f"{t_part},v1={flipped}", secret)

    # A wrong secret: this endpoint's under another deployment's key, or one character off.
    i = len("whsec_") + 5
    one_off = secret[:i] + ("A" if secret[i] != "A" else "B") + secret[i + 1 :]
    for wrong in (endpoint_secret(b"another deployment", endpoint_id, 1), one_off):
        assert wrong != secret and wrong.startswith("whsec_")
        with pytest.raises(WebhookVerificationError):
            verify(r.body, signature, wrong)
        with pytest.raises(StandardVerificationError):
            Webhook(wrong).verify(r.body, r.headers)

    # The 300 s tolerance: 300 s old passes, 301 s old fails, whether the clock or the header moved.
    t = int(t_part.removeprefix("t="))
    assert abs(time.time() - t) < 60
    verify(r.body, signature, secret, now=t + 300)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(r.body, signature, secret, now=t + 301)
    stale = babysea_signature(secret, int(time.time()) - 301, r.body)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(r.body, stale, secret)
    fresh = babysea_signature(secret, int(time.time()) - 290, r.body)
    assert verify(r.body, fresh, secret) == payload

    # Standard Webhooks headers, checked by the library itself.
    assert Webhook(secret).verify(r.body, r.headers) == payload
    assert r.headers["webhook-id"] == r.delivery_id
    assert r.headers["webhook-timestamp"] == str(t)

    # The BabySea headers and body envelope.
    assert r.headers["content-type"] == "application/json"
    assert set(payload) == {"webhook_event", "webhook_timestamp", "webhook_delivery_id", "webhook_data"}
    assert r.headers["x-babysea-event"] == payload["webhook_event"]
    assert payload["webhook_event"] in EVENT_TYPES
    assert r.headers["x-babysea-delivery-id"] == payload["webhook_delivery_id"]
    parsed = uuid.UUID(payload["webhook_delivery_id"])
    assert str(parsed) == payload["webhook_delivery_id"] and parsed.version == 4
    assert r.headers["x-babysea-timestamp"] == payload["webhook_timestamp"]
    stamp = datetime.strptime(payload["webhook_timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs(stamp.timestamp() - t) < 1.0
    assert isinstance(payload["webhook_data"], dict)
    return payload


def check_generation_data(data: dict[str, Any], record: dict[str, Any], status: str) -> None:
    assert GENERATION_KEYS <= set(data) <= GENERATION_KEYS | OPTIONAL_GENERATION_KEYS, data
    assert data["generation_status"] == status
    for key in ("account_id", "model_identifier", "generation_id", "generation_prediction_id"):
        assert data[key] == record[key], key
    if status in ("succeeded", "failed", "canceled"):
        assert data["generation_provider_used"] == record["generation_provider_used"]
    if status == "succeeded":
        assert data["generation_provider_used"] == "local"
        assert data["generation_output_file"] == record["generation_output_file"]
        assert data["generation_output_file"]
        assert data["generation_output_delivered"] == record["generation_output_delivered"]
    else:
        assert "generation_output_file" not in data and "generation_output_delivered" not in data
    if status == "failed":
        assert data["generation_error"] == record["generation_error"]
        assert data["generation_error_code"] == record["generation_error_code"]
        assert data["generation_error_name"] == record["generation_error_name"]
        assert data["generation_error_code"] == ERRORS[data["generation_error_name"]].code
    else:
        assert "generation_error" not in data and "generation_error_code" not in data
    if status in ("failed", "canceled"):
        assert data["credits_refunded"] is True


# --------------------------------------------------------------------------- tests


async def test_every_event_type_arrives_signed_and_shaped(
    harness_factory: Callable[..., Any], receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await fast_app(harness_factory)
    caller = await h.caller(credits="0.52")
    endpoint_id, secret = await subscribe(h, caller, receiver.url)
    local = h.services.providers["local"]

    # succeeded: 0.52 - 0.008 = 0.512
    done = await create(caller, outputs=4)
    records = {done: await caller.wait(done)}
    assert records[done]["generation_status"] == "succeeded"

    # failed, refunded: back to 0.512
    async def broken(*_: Any, **__: Any) -> Any:
        raise ProviderError("bse_content_policy_violation", "the prompt was refused", retryable=False)

    monkeypatch.setattr(local, "wait", broken)
    failed = await create(caller)
    records[failed] = await caller.wait(failed)
    assert records[failed]["generation_status"] == "failed"
    monkeypatch.undo()

    # canceled while processing, refunded: back to 0.512
    monkeypatch.setattr(local, "delay_seconds", 30.0)
    canceled = await create(caller)

    async def processing() -> bool:
        r = await caller.get(f"/v1/content/{canceled}")
        return bool(r.json()["data"]["generation_status"] == "processing")

    await until(processing, what="the generation to be processing")
    r = await caller.post(f"/v1/content/generation/cancel/{canceled}")
    assert r.status_code == 200, r.text
    records[canceled] = await caller.wait(canceled)
    monkeypatch.undo()

    # Two more: 0.504, then 0.496 crosses the 0.50 threshold.
    low = [await create(caller, outputs=4), await create(caller, outputs=4)]
    for gid in low:
        records[gid] = await caller.wait(gid)

    test_event = await send_test(h.services.db, endpoint_id)

    # 5 started, 3 completed, 1 failed, 1 canceled, 1 low balance, 1 test.
    rows = await settled(h, endpoint_id, 12)
    assert {d.status for d, _ in rows} == {"delivered"}
    got = await until(lambda: len(receiver.delivered()) >= 12 and receiver.delivered())
    assert len(got) == 12
    assert all(r.ok for r in receiver.hooks()), "nothing failed, so nothing was retried"

    payloads = [assert_signed(r, secret, endpoint_id) for r in got]
    assert {p["webhook_event"] for p in payloads} == set(EVENT_TYPES)
    assert {p["webhook_delivery_id"] for p in payloads} == {d.id for d, _ in rows}
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in payloads:
        by_type[p["webhook_event"]].append(p["webhook_data"])
    assert Counter({k: len(v) for k, v in by_type.items()}) == Counter(
        {
            "generation.started": 5,
            "generation.completed": 3,
            "generation.failed": 1,
            "generation.canceled": 1,
            "credits.low_balance": 1,
            "webhook.test": 1,
        }
    )
    for data in by_type["generation.started"]:
        check_generation_data(data, records[data["generation_id"]], "processing")
        assert data["generation_provider_used"] is None
    assert {d["generation_id"] for d in by_type["generation.started"]} == set(records)
    for data in by_type["generation.completed"]:
        check_generation_data(data, records[data["generation_id"]], "succeeded")
    assert {d["generation_id"] for d in by_type["generation.completed"]} == {done, *low}
    (failed_data,) = by_type["generation.failed"]
    assert failed_data["generation_id"] == failed
    check_generation_data(failed_data, records[failed], "failed")
    assert failed_data["generation_error_name"] == "bse_content_policy_violation"
    assert "the prompt was refused" in failed_data["generation_error"]
    (canceled_data,) = by_type["generation.canceled"]
    assert canceled_data["generation_id"] == canceled
    check_generation_data(canceled_data, records[canceled], "canceled")
    (alert,) = by_type["credits.low_balance"]
    assert alert == {
        "account_id": caller.account_id,
        "current_balance": pytest.approx(0.496),
        "thresholds_crossed": [{"threshold": pytest.approx(0.5), "balance_at": pytest.approx(0.496)}],
    }
    (test_data,) = by_type["webhook.test"]
    assert test_data["account_id"] == caller.account_id
    assert [e.id for d, e in rows if e.type == "webhook.test"] == [test_event]


async def test_low_balance_fires_once_per_descent_and_rearms(
    harness_factory: Callable[..., Any], receiver: Receiver
) -> None:
    h = await fast_app(harness_factory)
    caller = await h.caller(credits="0.51")
    endpoint_id, secret = await subscribe(h, caller, receiver.url)

    async def spend(outputs: int) -> None:
        gid = await create(caller, outputs)
        assert (await caller.wait(gid))["generation_status"] == "succeeded"

    await spend(4)  # 0.502: above
    assert await event_count(h, "credits.low_balance") == 0
    await spend(4)  # 0.494: crosses
    assert await event_count(h, "credits.low_balance") == 1
    await spend(1)  # 0.492: still below, no second alert
    await spend(1)  # 0.490
    assert await event_count(h, "credits.low_balance") == 1
    await add_credits(h.services.db, caller.account_id, to_millis("0.01"))  # 0.500: back up, re-armed
    assert await event_count(h, "credits.low_balance") == 1, "going up is not an alert"
    await spend(1)  # 0.498: crosses again
    assert await event_count(h, "credits.low_balance") == 2
    await spend(1)  # 0.496
    assert await event_count(h, "credits.low_balance") == 2

    rows = await settled(h, endpoint_id, 2 * 6 + 2)
    alerts = [e for _, e in rows if e.type == "credits.low_balance"]
    assert [a.data["current_balance"] for a in alerts] == [pytest.approx(0.494), pytest.approx(0.498)]
    got = receiver.delivered()
    assert len(got) == 14
    payloads = [assert_signed(r, secret, endpoint_id) for r in got]
    received_alerts = [p["webhook_data"] for p in payloads if p["webhook_event"] == "credits.low_balance"]
    assert len(received_alerts) == 2
    assert sorted(a["thresholds_crossed"][0]["balance_at"] for a in received_alerts) == [
        pytest.approx(0.494),
        pytest.approx(0.498),
    ]
    for a in received_alerts:
        assert a["thresholds_crossed"][0]["threshold"] == pytest.approx(0.5)
        assert a["current_balance"] == a["thresholds_crossed"][0]["balance_at"]


@pytest.mark.parametrize("failures", [1, 3, 6])
async def test_receiver_answering_503_gets_the_event_with_the_same_delivery_id(
    harness_factory: Callable[..., Any], receiver: Receiver, failures: int
) -> None:
    h = await fast_app(harness_factory)
    caller = await h.caller()
    endpoint_id, secret = await subscribe(h, caller, receiver.url)
    receiver.respond = lambda _: (503, {}) if len(receiver.hooks()) < failures else (200, {})

    await send_test(h.services.db, endpoint_id)
    ((delivery, _),) = await settled(h, endpoint_id, 1)
    assert delivery.status == "delivered"
    assert delivery.attempts == failures + 1
    seen = receiver.hooks()
    assert [r.status for r in seen] == [503] * failures + [200]
    assert {r.delivery_id for r in seen} == {delivery.id}
    assert {r.headers["webhook-id"] for r in seen} == {delivery.id}
    for r in seen:
        assert assert_signed(r, secret, endpoint_id)["webhook_delivery_id"] == delivery.id
    assert (await endpoint_row(h, endpoint_id)).consecutive_failures == 0


async def test_retry_after_is_honoured(harness_factory: Callable[..., Any], receiver: Receiver) -> None:
    h = await fast_app(harness_factory)
    caller = await h.caller()
    endpoint_id, secret = await subscribe(h, caller, receiver.url)

    def answer(_: Received) -> Answer:
        if not receiver.hooks():
            return 503, {"Retry-After": "1"}
        return 200, {}

    receiver.respond = answer
    await send_test(h.services.db, endpoint_id)
    ((delivery, _),) = await settled(h, endpoint_id, 1)
    first, second = receiver.hooks()
    assert (first.status, second.status) == (503, 200)
    assert first.delivery_id == second.delivery_id == delivery.id
    # The schedule alone would retry after ~0.05 s; the receiver asked for a second.
    assert second.at - first.at >= 0.95, second.at - first.at
    assert second.at - first.at < 5
    assert_signed(second, secret, endpoint_id)
    assert delivery.attempts == 2


async def test_receiver_down_then_back_gets_every_event(
    harness_factory: Callable[..., Any], down_receiver: Receiver
) -> None:
    # Failures are counted per endpoint, and a closed port fails in microseconds: allow
    # more than 15 so the endpoint is not disabled before the receiver is started.
    h = await fast_app(harness_factory, webhook_max_consecutive_failures=1000)
    caller = await h.caller()
    endpoint_id, secret = await subscribe(h, caller, down_receiver.url)
    gid = await create(caller)
    assert (await caller.wait(gid))["generation_status"] == "succeeded"

    async def failed_thrice() -> list[Row] | None:
        rows = await deliveries(h, endpoint_id)
        if len(rows) == 2 and all(d.attempts >= 3 and d.status == "pending" for d, _ in rows):
            return rows
        return None

    before = await until(failed_thrice, what="three refused attempts of each delivery")
    for d, _ in before:
        assert d.last_status_code is None
        assert "could not connect" in (d.last_error or "")
    assert not down_receiver.received

    await down_receiver.astart()
    rows = await settled(h, endpoint_id, 2)
    assert {d.id for d, _ in rows} == {d.id for d, _ in before}
    assert {d.status for d, _ in rows} == {"delivered"}
    got = down_receiver.hooks()
    assert sorted(r.delivery_id for r in got) == sorted(d.id for d, _ in before)
    assert {assert_signed(r, secret, endpoint_id)["webhook_event"] for r in got} == {
        "generation.started",
        "generation.completed",
    }


async def test_redirect_is_a_failure_and_is_not_followed(
    harness_factory: Callable[..., Any], receiver: Receiver
) -> None:
    h = await fast_app(harness_factory)
    caller = await h.caller()
    endpoint_id, secret = await subscribe(h, caller, receiver.url)
    elsewhere = f"http://127.0.0.1:{receiver.port}/elsewhere"
    redirecting = True
    receiver.respond = lambda _: (302, {"Location": elsewhere}) if redirecting else (200, {})

    await send_test(h.services.db, endpoint_id)

    async def redirected_twice() -> WebhookDelivery | None:
        ((d, _),) = await deliveries(h, endpoint_id)
        return d if d.attempts >= 2 else None

    d = await until(redirected_twice, what="two redirected attempts")
    assert d.status == "pending"
    assert d.last_status_code == 302
    assert "redirect" in (d.last_error or "")
    assert (await endpoint_row(h, endpoint_id)).consecutive_failures >= 2

    redirecting = False
    ((delivered, _),) = await settled(h, endpoint_id, 1)
    assert delivered.status == "delivered" and delivered.id == d.id
    assert receiver.hooks(path="/elsewhere") == []
    assert {r.delivery_id for r in receiver.hooks()} == {d.id}
    assert_signed(receiver.delivered()[0], secret, endpoint_id)


async def test_fifteen_failures_disable_then_dead_letters_replay_with_fresh_ids(
    harness_factory: Callable[..., Any], receiver: Receiver
) -> None:
    h = await fast_app(harness_factory)
    db = h.services.db
    caller = await h.caller()
    endpoint_id, secret = await subscribe(h, caller, receiver.url)
    receiver.respond = lambda _: (500, {})

    await send_test(db, endpoint_id)

    async def disabled() -> WebhookEndpoint | None:
        endpoint = await endpoint_row(h, endpoint_id)
        return None if endpoint.enabled else endpoint

    endpoint = await until(disabled, what="the endpoint to be disabled")
    assert endpoint.consecutive_failures == 15
    assert "15" in (endpoint.disabled_reason or "")
    ((first, _),) = await deliveries(h, endpoint_id)
    assert first.status == "dead" and first.attempts == 15
    assert [r.status for r in receiver.hooks()] == [500] * 15
    assert {r.delivery_id for r in receiver.hooks()} == {first.id}

    # Later events go straight to the dead-letter list; nothing is sent.
    gid = await create(caller)
    assert (await caller.wait(gid))["generation_status"] == "succeeded"
    dead = await dead_letters(db, endpoint_id)
    assert len(dead) == 3  # the test event, started, completed
    dead_ids = {d.id for d in dead}
    assert len(receiver.hooks()) == 15

    with pytest.raises(ValueError, match="disabled"):
        await replay(db, endpoint_id)

    receiver.respond = lambda _: (200, {})
    await set_enabled(db, endpoint_id, True)
    assert (await endpoint_row(h, endpoint_id)).consecutive_failures == 0
    assert await replay(db, endpoint_id) == 3
    assert await dead_letters(db, endpoint_id) == []

    rows = await settled(h, endpoint_id, 6)
    statuses = Counter(d.status for d, _ in rows)
    assert statuses == Counter({"replayed": 3, "delivered": 3})
    assert {d.id for d, _ in rows if d.status == "replayed"} == dead_ids
    got = receiver.delivered()
    assert len(got) == 3
    fresh = {r.delivery_id for r in got}
    assert len(fresh) == 3 and not fresh & dead_ids
    assert fresh == {d.id for d, _ in rows if d.status == "delivered"}
    events = Counter(assert_signed(r, secret, endpoint_id)["webhook_event"] for r in got)
    assert events == Counter({"webhook.test": 1, "generation.started": 1, "generation.completed": 1})
    # The replayed copies carry the events that were dead-lettered, not new ones.
    replayed_events = {e.id for d, e in rows if d.status == "replayed"}
    assert {e.id for d, e in rows if d.status == "delivered"} == replayed_events


async def test_non_public_destinations_are_refused_unless_allowed(
    harness_factory: Callable[..., Any], receiver: Receiver
) -> None:
    h = await fast_app(harness_factory)
    svc = h.services
    caller = await h.caller()
    guard = svc.webhooks.guard
    real_resolver = guard.resolver

    async def resolver(host: str, port: int) -> list[str]:
        fake = {
            "hooks.private.example": ["10.1.2.3"],
            "hooks.mixed.example": ["93.184.216.34", "192.168.0.7"],
            "hooks.public.example": ["93.184.216.34"],
        }
        if host in fake:
            return fake[host]
        return await real_resolver(host, port)

    guard.resolver = resolver
    refused = [
        "http://10.0.0.1/",
        "http://192.168.1.10/hook",
        "http://172.16.0.1/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
        "http://0.0.0.0/",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://127.0.0.2/hook",  # loopback, but not the allowed host
        f"http://localhost:{receiver.port}/hook",  # resolves to loopback
        "http://hooks.private.example/hook",  # resolves privately
        "http://hooks.mixed.example/hook",  # one private address is enough
        "http://0x7f.0.0.1/hook",
        "http://2130706433/hook",
        "ftp://hooks.public.example/hook",
        "http://user:pw@hooks.public.example/hook",
    ]
    for url in refused:
        with pytest.raises(ValueError, match="cannot receive webhooks"):
            await add_endpoint(svc.db, svc.settings, guard, caller.account_id, url)
    async with svc.db.read() as s:
        assert await s.scalar(select(func.count()).select_from(WebhookEndpoint)) == 0

    # Without the operator's allow-list, 127.0.0.1 is refused like any loopback address.
    strict = FileFetcher(svc.http, [])
    with pytest.raises(ValueError, match="non-public"):
        await add_endpoint(svc.db, svc.settings, strict, caller.account_id, receiver.url)

    allowed = await add_endpoint(svc.db, svc.settings, guard, caller.account_id, receiver.url)
    public = await add_endpoint(
        svc.db, svc.settings, guard, caller.account_id, "https://hooks.public.example/hook"
    )
    assert allowed.endpoint.enabled and public.endpoint.enabled

    # Checked again at send time: a name that later resolves privately is not called.
    async def rebound(host: str, port: int) -> list[str]:
        return ["127.0.0.1"] if host == "hooks.public.example" else await real_resolver(host, port)

    guard.resolver = rebound
    await send_test(svc.db, public.endpoint.id)

    async def refused_at_send() -> WebhookDelivery | None:
        ((d, _),) = await deliveries(h, public.endpoint.id)
        return d if d.attempts >= 1 else None

    d = await until(refused_at_send, what="an attempt on the rebound endpoint")
    assert d.status == "pending" and d.last_status_code is None
    assert "destination refused" in (d.last_error or "")
    assert "non-public" in (d.last_error or "")
    assert receiver.hooks() == []


async def test_no_event_for_a_change_that_was_rolled_back(
    harness_factory: Callable[..., Any], receiver: Receiver
) -> None:
    h = await fast_app(harness_factory)
    db = h.services.db
    poor = await h.caller(credits="0.001")
    endpoint_id, secret = await subscribe(h, poor, receiver.url)

    # Refused for insufficient credits: no generation, no event of any kind.
    r = await poor.create_image()
    assert r.status_code == 402, r.text
    assert r.json()["error"] == "bse_insufficient_credits"
    assert await event_count(h) == 0

    # A terminal generation cannot be canceled: the refusal emits nothing.
    await add_credits(db, poor.account_id, to_millis("1"))
    gid = await create(poor)
    assert (await poor.wait(gid))["generation_status"] == "succeeded"
    r = await poor.post(f"/v1/content/generation/cancel/{gid}")
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "bse_generation_not_cancelable"
    assert await event_count(h) == 2
    assert await event_count(h, "generation.canceled") == 0

    # The outbox lives in the caller's transaction: an emit that is rolled back leaves nothing...
    data = {"account_id": poor.account_id, "note": "rolled back"}
    with pytest.raises(RuntimeError, match="abort"):
        async with db.write() as s:
            event_id = await emit(s, poor.account_id, "webhook.test", data, endpoint_id=endpoint_id)
            assert event_id is not None
            raise RuntimeError("abort")
    async with db.read() as s:
        assert await s.get(WebhookEvent, event_id) is None
        assert (
            await s.scalar(
                select(func.count()).select_from(WebhookDelivery).where(WebhookDelivery.event_id == event_id)
            )
        ) == 0
    assert await event_count(h) == 2

    # ...and the same emit committed is an event, delivered like any other.
    async with db.write() as s:
        kept = await emit(s, poor.account_id, "webhook.test", data, endpoint_id=endpoint_id)
    assert await event_count(h) == 3
    rows = await settled(h, endpoint_id, 3)
    assert {e.id for _, e in rows} >= {kept}
    got = await until(lambda: len(receiver.delivered()) == 3 and receiver.delivered())
    events = Counter(assert_signed(r, secret, endpoint_id)["webhook_event"] for r in got)
    assert events == Counter({"generation.started": 1, "generation.completed": 1, "webhook.test": 1})


async def test_rotated_secret_signs_at_once(harness_factory: Callable[..., Any], receiver: Receiver) -> None:
    h = await fast_app(harness_factory)
    svc = h.services
    caller = await h.caller()
    endpoint_id, old = await subscribe(h, caller, receiver.url)
    await send_test(svc.db, endpoint_id)
    await settled(h, endpoint_id, 1)
    new = await rotate_secret(svc.db, svc.settings, endpoint_id)
    assert new != old and new == endpoint_secret(svc.webhooks.key, endpoint_id, 2)
    await send_test(svc.db, endpoint_id)
    await settled(h, endpoint_id, 2)
    before, after = receiver.delivered()
    assert_signed(before, old, endpoint_id)
    assert_signed(after, new, endpoint_id)
    with pytest.raises(WebhookVerificationError):
        verified_payload(after, old)


# The 1,000 generations, each with a webhook: about 27 s on the 2-core reference
# machine (bench/webhooks.py prints the same run's figures with full-size previews).
MANY = 1000


async def test_many_generations_lose_no_event(
    harness_factory: Callable[..., Any], receiver: Receiver
) -> None:
    h = await fast_app(
        harness_factory,
        worker_concurrency=64,
        webhook_concurrency=64,
        max_inflight_generations=MANY,
    )
    # Small previews: this test is about the events, not about rendering.
    local = h.services.providers["local"]
    assert isinstance(local, LocalProvider)
    local.image_long_side = 64
    caller = await h.caller(credits="10")
    endpoint_id, secret = await subscribe(h, caller, receiver.url)
    started = time.monotonic()

    ids: list[str] = []
    for _ in range(0, MANY, 50):
        responses = await asyncio.gather(*(caller.create_image() for _ in range(50)))
        for r in responses:
            assert r.status_code == 200, r.text
        ids.extend(r.json()["data"]["generation_id"] for r in responses)
    assert len(set(ids)) == MANY

    expected = {(event, gid) for gid in ids for event in ("generation.started", "generation.completed")}

    def arrived() -> bool:
        return len({r.delivery_id for r in receiver.delivered()}) >= len(expected)

    await until(arrived, timeout=90, what=f"{len(expected)} deliveries", interval=0.05)
    rows = await settled(h, endpoint_id, len(expected))
    elapsed = time.monotonic() - started

    by_delivery: dict[str, set[tuple[str, str]]] = defaultdict(set)
    by_event: dict[tuple[str, str], set[str]] = defaultdict(set)
    for hook in receiver.delivered():
        payload = verified_payload(hook, secret)
        assert Webhook(secret).verify(hook.body, hook.headers) == payload
        key = (payload["webhook_event"], payload["webhook_data"]["generation_id"])
        assert payload["webhook_delivery_id"] == hook.delivery_id
        by_delivery[hook.delivery_id].add(key)
        by_event[key].add(hook.delivery_id)
    assert set(by_event) == expected, "every event arrived, and nothing else"
    assert all(len(v) == 1 for v in by_delivery.values()), "a delivery id is one event"
    assert all(len(v) == 1 for v in by_event.values()), "duplicates only ever reuse the delivery id"
    assert {d.status for d, _ in rows} == {"delivered"}
    assert {d.id for d, _ in rows} == set(by_delivery)
    requests = len(receiver.hooks())
    print(f"\n{MANY} generations, {len(expected)} events, {requests} requests in {elapsed:.1f} s")


async def test_a_busy_endpoint_down_for_a_while_is_not_disabled_before_its_schedule_runs_out(
    harness_factory: Callable[..., Any], down_receiver: Receiver
) -> None:
    # Twenty events owed to a receiver that is down: twenty failures within a second, but
    # no delivery has used up its retries, so the endpoint stays enabled and loses nothing.
    h = await fast_app(harness_factory, webhook_retry_schedule_seconds=[0.2] * 20)
    caller = await h.caller()
    endpoint_id, secret = await subscribe(h, caller, down_receiver.url)
    for _ in range(20):
        await send_test(h.services.db, endpoint_id)

    async def each_failed_twice() -> bool:
        rows = await deliveries(h, endpoint_id)
        return all(d.attempts >= 2 for d, _ in rows) or any(d.status != "pending" for d, _ in rows)

    await until(each_failed_twice, what="two refused attempts of every delivery")
    endpoint = await endpoint_row(h, endpoint_id)
    assert endpoint.enabled, endpoint.disabled_reason
    assert endpoint.consecutive_failures >= 40
    assert await dead_letters(h.services.db, endpoint_id) == []

    await down_receiver.astart()
    rows = await settled(h, endpoint_id, 20)
    assert {d.status for d, _ in rows} == {"delivered"}
    got = down_receiver.delivered()
    assert {r.delivery_id for r in got} == {d.id for d, _ in rows}
    for r in got:
        assert assert_signed(r, secret, endpoint_id)["webhook_event"] == "webhook.test"
    assert (await endpoint_row(h, endpoint_id)).consecutive_failures == 0


async def test_a_delivery_refused_to_the_end_of_its_schedule_is_dead_lettered_alone(
    harness_factory: Callable[..., Any], receiver: Receiver
) -> None:
    # The receiver takes generation events but chokes on test events: the test event's
    # schedule runs out, it goes to the dead-letter list on its own, the endpoint stays up.
    h = await fast_app(harness_factory, webhook_retry_schedule_seconds=[0.05] * 3)
    db = h.services.db
    caller = await h.caller()
    endpoint_id, secret = await subscribe(h, caller, receiver.url)
    receiver.respond = lambda r: (500, {}) if r.event == "webhook.test" else (200, {})

    await send_test(db, endpoint_id)
    gid = await create(caller)
    assert (await caller.wait(gid))["generation_status"] == "succeeded"
    rows = await settled(h, endpoint_id, 3)
    by_type = {e.type: d for d, e in rows}
    poisoned = by_type["webhook.test"]
    assert poisoned.status == "dead" and poisoned.attempts == 4  # the first try and 3 retries
    assert by_type["generation.started"].status == by_type["generation.completed"].status == "delivered"
    endpoint = await endpoint_row(h, endpoint_id)
    assert endpoint.enabled and endpoint.disabled_reason is None
    assert [d.id for d in await dead_letters(db, endpoint_id)] == [poisoned.id]
    assert [r.status for r in receiver.hooks() if r.event == "webhook.test"] == [500] * 4

    receiver.respond = lambda _: (200, {})
    assert await replay(db, endpoint_id) == 1
    rows = await settled(h, endpoint_id, 4)
    (fresh,) = [d for d, e in rows if e.type == "webhook.test" and d.status == "delivered"]
    assert fresh.id != poisoned.id
    (arrived,) = [r for r in receiver.delivered() if r.event == "webhook.test"]
    assert arrived.delivery_id == fresh.id
    assert_signed(arrived, secret, endpoint_id)
