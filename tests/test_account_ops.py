"""Operations 1-4 over HTTP: status, usage, user/account and user/billing."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from genplane.accounts import service as accounts
from genplane.contract.errors import ERRORS
from genplane.credits import alerts
from genplane.db.models import Generation, UsageCounter
from genplane.usage.recorder import UsageRecorder
from tests.conftest import Caller, Harness

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ALL_SCOPES = sorted(
    [
        "account:read",
        "generation:write",
        "generation:read",
        "generation:delete",
        "library:read",
        "health:read",
    ]
)
TERMINAL = {"succeeded", "failed", "canceled"}


def parse_iso(value: str) -> datetime:
    assert ISO_MS.match(value), value
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def success(r: httpx.Response, message: str = "Operation successful") -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "success"
    assert body["message"] == message
    assert body["request_id"] == r.headers["X-Request-Id"]
    assert abs((parse_iso(body["timestamp"]) - datetime.now(UTC)).total_seconds()) < 30
    data: dict[str, Any] = body["data"]
    return data


def error(r: httpx.Response, status: int, name: str, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "error"
    assert body["error"] == name
    assert body["code"] == code
    assert body["retryable"] is False
    assert body["request_id"] == r.headers["X-Request-Id"]
    return body


def millis(credits: Any) -> int:
    value = Decimal(str(credits)) * 1000
    assert value == value.to_integral_value(), f"{credits} has more than three decimals"
    return int(value)


async def wait_terminal(h: Harness, account_id: str, timeout: float = 20.0) -> None:
    """Poll the database (not the API, whose calls would be counted as usage)."""
    deadline = time.monotonic() + timeout
    while True:
        async with h.services.db.read() as s:
            statuses = list(
                (await s.scalars(select(Generation.status).where(Generation.account_id == account_id))).all()
            )
        if all(st in TERMINAL for st in statuses):
            return
        assert time.monotonic() < deadline, f"generations still running: {statuses}"
        await asyncio.sleep(0.05)


# -- status -----------------------------------------------------------------------------------


async def test_status(harness: Harness, caller: Caller) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    r = await caller.get("/v1/status")
    d = success(r, "API connected successfully")
    for field in (
        "account_id",
        "apikey_id",
        "apikey_name",
        "apikey_prefix",
        "apikey_created_at",
        "apikey_last_used_at",
        "apikey_expires_at",
    ):
        assert field in d, field
    assert d["account_id"] == caller.account_id
    assert d["apikey_id"] == caller.key_id
    assert d["apikey_name"] == "test key"
    assert d["apikey_prefix"] == caller.key[:9]
    assert len(d["apikey_prefix"]) == 9 and d["apikey_prefix"].startswith("bye_")
    assert caller.key not in r.text, "the full key must never be echoed"
    assert d["apikey_expires_at"] is None
    assert d["apikey_scopes"] == ALL_SCOPES
    assert d["region"] == harness.services.settings.region == "us"

    created = parse_iso(d["apikey_created_at"])
    assert d["apikey_last_used_at"] is not None, "this very request used the key"
    last_used = parse_iso(d["apikey_last_used_at"])
    assert before <= created <= last_used <= datetime.now(UTC) + timedelta(seconds=1)

    # With key_touch_interval_seconds=0 (the fixture) every request moves last_used forward.
    await asyncio.sleep(0.01)
    later = parse_iso(
        success(await caller.get("/v1/status"), "API connected successfully")["apikey_last_used_at"]
    )
    assert later > last_used


async def test_status_of_a_limited_expiring_key(harness: Harness, caller: Caller) -> None:
    expires = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=123000)
    read_only = await harness.key_for(caller, preset="read_only", expires_at=expires)
    d = success(await read_only.get("/v1/status"), "API connected successfully")
    assert d["apikey_id"] == read_only.key_id != caller.key_id
    assert d["account_id"] == caller.account_id
    assert d["apikey_prefix"] == read_only.key[:9]
    assert d["apikey_name"] == "extra"
    assert parse_iso(d["apikey_expires_at"]) == expires
    assert d["apikey_scopes"] == sorted(["generation:read", "account:read", "health:read", "library:read"])


async def test_account_operations_need_account_read(harness: Harness, caller: Caller) -> None:
    monitor = await harness.key_for(caller, preset="monitor_only")
    for path in ("/v1/status", "/v1/usage", "/v1/user/account", "/v1/user/billing"):
        r = await monitor.get(path)
        body = error(r, 403, "bse_insufficient_permissions", "BSE1003")
        assert body["details"]["required_scope"] == "account:read"
        r = await caller.client.get(path)
        error(r, 401, "bse_authentication_required", "BSE1001")


# -- user/account and user/billing ----------------------------------------------------------------


async def test_user_account(harness: Harness, caller: Caller) -> None:
    d = success(await caller.get("/v1/user/account"))
    assert set(d) >= {
        "account_id",
        "account_name",
        "account_email",
        "account_is_personal",
        "account_picture_url",
        "account_created_at",
    }
    assert d["account_id"] == caller.account_id
    assert d["account_name"] == "Test account"
    assert d["account_email"] == "test@example.com"
    assert d["account_is_personal"] is True
    assert d["account_picture_url"] is None
    assert abs((parse_iso(d["account_created_at"]) - datetime.now(UTC)).total_seconds()) < 30

    other = await harness.caller()
    assert success(await other.get("/v1/user/account"))["account_id"] == other.account_id != caller.account_id


async def test_deleted_account_is_not_found(harness: Harness, caller: Caller) -> None:
    assert await accounts.delete_account(harness.services.db, caller.account_id)
    for path in ("/v1/user/account", "/v1/user/billing", "/v1/status"):
        error(await caller.get(path), 404, "bse_account_not_found", "BSE1008")


async def test_user_billing_balance_has_three_decimals(harness: Harness) -> None:
    caller = await harness.caller(credits="12.345")
    r = await caller.get("/v1/user/billing")
    d = success(r)
    assert set(d) == {
        "account_id",
        "billing_plan",
        "billing_credit_balance",
        "billing_subscription_status",
        "billing_cancel_at_period_end",
        "billing_currency",
        "billing_period_starts_at",
        "billing_period_ends_at",
        "billing_created_at",
        "billing_updated_at",
        "billing_low_balance_thresholds",  # genplane's addition
    }
    assert d["account_id"] == caller.account_id
    assert d["billing_credit_balance"] == 12.345
    assert isinstance(d["billing_credit_balance"], float | int)
    assert d["billing_plan"] == "standard"
    assert d["billing_subscription_status"] == "active"
    assert d["billing_cancel_at_period_end"] is False
    assert d["billing_currency"] == "USD"
    starts, ends = parse_iso(d["billing_period_starts_at"]), parse_iso(d["billing_period_ends_at"])
    assert starts < ends
    created, updated = parse_iso(d["billing_created_at"]), parse_iso(d["billing_updated_at"])
    assert created <= updated

    # A three-output image reserves 3 x 0.002: the balance moves by exactly 0.006.
    r = await caller.create_image({"generation_prompt": "three", "generation_output_number": 3})
    assert r.status_code == 200, r.text
    d2 = success(await caller.get("/v1/user/billing"))
    assert d2["billing_credit_balance"] == 12.339
    assert parse_iso(d2["billing_updated_at"]) >= updated

    # Every operation that shows the balance shows the same three-decimal number.
    usage = success(await caller.get("/v1/usage"))
    estimate = success(await caller.get("/v1/estimate/local/preview-image"))
    assert usage["usage_credit_balance"] == estimate["credit_balance"] == d2["billing_credit_balance"]
    for value in (d["billing_credit_balance"], d2["billing_credit_balance"], usage["usage_credit_balance"]):
        assert round(value, 3) == value
    assert re.search(r'"billing_credit_balance":\s*12\.339[,}]', (await caller.get("/v1/user/billing")).text)


# -- usage ------------------------------------------------------------------------------------


def endpoint_rows(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Usage rows keyed by 'METHOD /path/{param}' (any route converter suffix removed)."""
    rows: dict[str, dict[str, Any]] = {}
    for row in data["usage_endpoints"]:
        key = re.sub(r"\{(\w+):\w+\}", r"{\1}", row["endpoint"])
        assert key not in rows, f"two rows for {key}"
        rows[key] = row
    return rows


async def test_usage_days_parameter(caller: Caller) -> None:
    d = success(await caller.get("/v1/usage"))
    assert d["usage_period_days"] == 30
    assert d["account_id"] == caller.account_id
    for days in (1, 45, 90):
        assert success(await caller.get("/v1/usage", params={"days": days}))["usage_period_days"] == days
    for bad in ("0", "91", "abc", "-1", "1.5", ""):
        r = await caller.get("/v1/usage", params={"days": bad})
        body = error(r, 400, "bse_invalid_input", "BSE2001")
        assert body["details"]["field"] == "days", (bad, body)


async def test_usage_counts_a_known_mix_of_requests(harness: Harness) -> None:
    caller = await harness.caller(credits="0.004")  # exactly two one-image generations
    monitor = await harness.key_for(caller, preset="monitor_only")
    stranger = await harness.caller()

    for _ in range(3):
        assert (await caller.get("/v1/status")).status_code == 200
    assert (await monitor.get("/v1/status")).status_code == 403
    created = [await caller.create_image() for _ in range(3)]
    assert [r.status_code for r in created] == [200, 200, 402]
    bad_body = await caller.create_image({"generation_prompt": ""})
    assert bad_body.status_code == 400, bad_body.text
    gid = created[0].json()["data"]["generation_id"]
    assert (await caller.get(f"/v1/content/{gid}")).status_code == 200
    assert (await caller.get("/v1/content/no-such-generation")).status_code == 404
    assert (await caller.get("/v1/estimate/nobody/no-model")).status_code == 404
    assert (await caller.get("/v1/estimate/local/preview-image")).status_code == 200
    assert (await caller.get("/v1/usage", params={"days": 0})).status_code == 400
    # Another account's traffic is not this account's usage.
    for _ in range(4):
        await stranger.get("/v1/status")
        await stranger.get("/v1/content/nothing")
    await wait_terminal(harness, caller.account_id)

    d = success(await caller.get("/v1/usage"))
    rows = endpoint_rows(d)
    expected = {
        "GET /v1/status": (4, 3, 1, {"bse_insufficient_permissions": 1}),
        "POST /v1/generate/image/{model_identifier}": (
            4,
            2,
            2,
            {"bse_insufficient_credits": 1, "bse_invalid_input": 1},
        ),
        "GET /v1/content/{generation_id}": (2, 1, 1, {"bse_generation_not_found": 1}),
        "GET /v1/estimate/{model_identifier}": (2, 1, 1, {"bse_model_not_found": 1}),
        "GET /v1/usage": (1, 0, 1, {"bse_invalid_input": 1}),
    }
    assert set(rows) == set(expected), sorted(rows)
    for endpoint, (total, ok, client, codes) in expected.items():
        row = rows[endpoint]
        assert row["total_requests"] == total, endpoint
        assert row["success_count"] == ok, endpoint
        assert row["client_error_count"] == client, endpoint
        assert row["server_error_count"] == 0, endpoint
        assert row["error_codes"] == {ERRORS[name].code: n for name, n in codes.items()}, endpoint

    assert d["usage_total_requests"] == 13
    assert d["usage_total_success"] == 7
    assert d["usage_total_client_errors"] == 6
    assert d["usage_total_server_errors"] == 0
    assert d["usage_total_generations"] == 2
    assert d["usage_total_provider_submissions"] == 2
    assert millis(d["usage_total_estimated_cost"]) == 4
    assert millis(d["usage_credit_balance"]) == 0
    assert d["usage_providers"] == [
        {
            "provider": "local",
            "total_submissions": 2,
            "used_count": 2,
            "cancelled_count": 0,
            "discarded_count": 0,
            "failed_count": 0,
            "total_estimated_cost": 0.004,
            "wasted_estimated_cost": 0.0,
        }
    ]
    # The same, per UTC day (this test's requests fall on one day, two around midnight).
    days = d["usage_days"]
    assert 1 <= len(days) <= 2
    summed = {k: sum(day[k] for day in days) for k in days[0] if k != "day"}
    assert summed == {
        "total_requests": 13,
        "success_count": 7,
        "client_error_count": 6,
        "server_error_count": 0,
        "provider_submissions": 2,
        "estimated_cost": 0.004,
        "wasted_estimated_cost": 0.0,
    }

    # The usage call itself is counted once it is over: the next report shows it.
    again = endpoint_rows(success(await caller.get("/v1/usage")))
    assert again["GET /v1/usage"]["total_requests"] == 2
    assert again["GET /v1/usage"]["success_count"] == 1

    theirs = success(await stranger.get("/v1/usage"))
    assert theirs["usage_total_requests"] == 8
    assert theirs["usage_total_generations"] == 0
    assert theirs["usage_providers"] == []


async def test_usage_counts_are_flushed_by_the_interval_too(harness: Harness, caller: Caller) -> None:
    """Without any /v1/usage call, the recorder's own loop writes the counters."""
    for _ in range(5):
        await caller.get("/v1/user/account")
    deadline = time.monotonic() + 10
    while True:
        async with harness.services.db.read() as s:
            total = await s.scalar(
                select(UsageCounter.count).where(
                    UsageCounter.account_id == caller.account_id,
                    UsageCounter.endpoint == "GET /v1/user/account",
                )
            )
        if total == 5:
            break
        assert time.monotonic() < deadline, f"counters not flushed: {total}"
        await asyncio.sleep(0.05)


async def test_usage_flush_waits_for_a_flush_already_in_progress(
    harness: Harness, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader's flush must not return while the timed flush still holds the batch it took."""
    recorder = UsageRecorder(harness.services.db, interval=3600)
    recorder.record(caller.account_id, "GET /v1/status", 200, None)
    entered, gate = asyncio.Event(), asyncio.Event()
    real_write = harness.services.db.write

    @asynccontextmanager
    async def held_write() -> AsyncIterator[Any]:
        entered.set()
        await gate.wait()
        async with real_write() as s:
            yield s

    monkeypatch.setattr(harness.services.db, "write", held_write)
    timed = asyncio.create_task(recorder.flush())
    await entered.wait()  # the timed flush has taken the batch and is writing it
    monkeypatch.setattr(harness.services.db, "write", real_write)
    reader = asyncio.create_task(recorder.flush())
    done, _ = await asyncio.wait({reader}, timeout=0.2)
    assert not done, "the reader's flush returned before the batch in progress was written"
    gate.set()
    await asyncio.gather(timed, reader)
    async with harness.services.db.read() as s:
        count = await s.scalar(
            select(UsageCounter.count).where(
                UsageCounter.account_id == caller.account_id, UsageCounter.endpoint == "GET /v1/status"
            )
        )
    assert count == 1


async def test_usage_period_excludes_older_days(harness: Harness, caller: Caller) -> None:
    old_day = (datetime.now(UTC) - timedelta(days=20)).strftime("%Y-%m-%d")
    async with harness.services.db.write() as s:
        s.add(
            UsageCounter(
                account_id=caller.account_id,
                day=old_day,
                endpoint="GET /v1/user/billing",
                status_code=200,
                error_code="",
                count=7,
            )
        )
    await caller.get("/v1/user/billing")

    def billing(d: dict[str, Any]) -> int:
        row = endpoint_rows(d).get("GET /v1/user/billing")
        return int(row["total_requests"]) if row else 0

    assert billing(success(await caller.get("/v1/usage", params={"days": 1}))) == 1
    assert billing(success(await caller.get("/v1/usage", params={"days": 10}))) == 1
    assert billing(success(await caller.get("/v1/usage", params={"days": 30}))) == 8
    assert billing(success(await caller.get("/v1/usage"))) == 8
    assert billing(success(await caller.get("/v1/usage", params={"days": 90}))) == 8
    per_day = {d["day"]: d["total_requests"] for d in success(await caller.get("/v1/usage"))["usage_days"]}
    assert per_day[old_day] == 7
    assert list(per_day) == sorted(per_day)  # oldest first


@pytest.mark.parametrize("days", [1, 30, 90])
async def test_usage_generations_follow_the_period(harness: Harness, days: int) -> None:
    caller = await harness.caller()
    r = await caller.create_image()
    assert r.status_code == 200
    await wait_terminal(harness, caller.account_id)
    # A generation older than every period, written straight into the table.
    async with harness.services.db.read() as s:
        gen = await s.get(Generation, r.json()["data"]["generation_id"])
    assert gen is not None
    async with harness.services.db.write() as s:
        old = Generation(
            **{
                c.key: getattr(gen, c.key)
                for c in Generation.__table__.columns
                if c.key not in ("id", "created_at", "prediction_id")
            },
            id=gen.id + "-old",
            prediction_id="old",
            created_at=datetime.now(UTC) - timedelta(days=120),
        )
        s.add(old)
    d = success(await caller.get("/v1/usage", params={"days": days}))
    assert d["usage_total_generations"] == 1
    assert d["usage_period_days"] == days


async def test_user_billing_lists_the_low_balance_thresholds(harness: Harness) -> None:
    caller = await harness.caller(credits="12.345")
    assert success(await caller.get("/v1/user/billing"))["billing_low_balance_thresholds"] == [
        {"threshold": 0.5, "armed": True}  # every account starts with one
    ]
    await alerts.replace_thresholds(harness.services.db, caller.account_id, [20_000, 1_000])
    d = success(await caller.get("/v1/user/billing"))
    assert d["billing_low_balance_thresholds"] == [
        {"threshold": 1.0, "armed": True},
        {"threshold": 20.0, "armed": False},  # the balance is already below it
    ]
