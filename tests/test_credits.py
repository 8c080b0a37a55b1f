"""Credits over HTTP: atomic reservations under concurrency, the ledger, estimates, the in-flight cap.

Sign convention of the ledger (src/genplane/credits/ledger.py): ``amount_millis`` is
always positive; ``add`` and ``refund`` raise the balance by it, ``reserve`` lowers it,
and ``charge`` records the settlement of a reservation without moving the balance.
"""

from __future__ import annotations

import asyncio
import time
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy import select

from genplane.catalog.loader import DATA_DIR
from genplane.db.models import Generation, LedgerEntry
from genplane.providers.base import ProviderError, ProviderJob, ProviderResult
from genplane.providers.local import LocalProvider
from tests.conftest import Caller, Harness

IMAGE = "local/preview-image"
VIDEO = "local/preview-video"
TERMINAL = {"succeeded", "failed", "canceled"}


def _catalogue() -> dict[str, dict[str, Any]]:
    """The packaged catalogue read straight from its YAML files, independent of the pricing code."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(DATA_DIR).glob("*.yaml")):
        for m in (yaml.safe_load(path.read_text()) or {}).get("models", []):
            out[m["model_identifier"]] = m
    return out


CATALOGUE = _catalogue()


def millis(credits: Any) -> int:
    """Credits (a YAML or JSON number) to integer milli-credits, exactly."""
    value = Decimal(str(credits)) * 1000
    assert value == value.to_integral_value(), f"{credits} has more than three decimals"
    return int(value)


def credits_str(m: int) -> str:
    return str(Decimal(m) / 1000)


IMAGE_PRICE = millis(CATALOGUE[IMAGE]["model_pricing"])


# -- database helpers -----------------------------------------------------------------------


async def ledger(h: Harness, account_id: str) -> list[LedgerEntry]:
    async with h.services.db.read() as s:
        rows = await s.scalars(
            select(LedgerEntry).where(LedgerEntry.account_id == account_id).order_by(LedgerEntry.id)
        )
        return list(rows.all())


async def generations(h: Harness, account_id: str) -> list[Generation]:
    async with h.services.db.read() as s:
        rows = await s.scalars(select(Generation).where(Generation.account_id == account_id))
        return list(rows.all())


async def wait_settled(h: Harness, account_id: str, timeout: float = 20.0) -> list[Generation]:
    """Poll the database until every generation of the account is terminal and settled."""
    deadline = time.monotonic() + timeout
    while True:
        gens = await generations(h, account_id)
        if all(g.status in TERMINAL and g.credits_settled for g in gens):
            return gens
        if time.monotonic() > deadline:
            pending = [(g.id, g.status, g.credits_settled) for g in gens if g.status not in TERMINAL]
            raise AssertionError(f"generations not settled after {timeout}s: {pending}")
        await asyncio.sleep(0.05)


async def balance(caller: Caller) -> int:
    r = await caller.get("/v1/user/billing")
    assert r.status_code == 200, r.text
    return millis(r.json()["data"]["billing_credit_balance"])


def check_ledger(rows: list[LedgerEntry], gens: list[Generation], final_balance: int) -> None:
    """Every invariant the contract puts on the ledger, checked row by row."""
    delta = {"add": 1, "refund": 1, "reserve": -1, "charge": 0}
    running = 0
    previous_time = None
    for row in rows:
        assert row.kind in delta, row.kind
        assert row.amount_millis >= 0, (row.kind, row.amount_millis)
        running += delta[row.kind] * row.amount_millis
        assert row.balance_after_millis == running, (
            f"row {row.id} ({row.kind} {row.amount_millis}) says balance_after "
            f"{row.balance_after_millis}, the chain gives {running}"
        )
        assert row.balance_after_millis >= 0, "the balance went negative"
        if previous_time is not None:
            assert row.created_at >= previous_time, "ledger rows out of time order"
        previous_time = row.created_at
    assert running == final_balance, (running, final_balance)
    assert sum(delta[r.kind] * r.amount_millis for r in rows) == final_balance

    by_generation: dict[str, list[LedgerEntry]] = {}
    for row in rows:
        if row.kind == "add":
            assert row.generation_id is None
        else:
            assert row.generation_id is not None, row.kind
            by_generation.setdefault(row.generation_id, []).append(row)
    assert set(by_generation) == {g.id for g in gens}, "ledger rows without a generation, or the reverse"
    for g in gens:
        amounts = {r.kind: r.amount_millis for r in by_generation[g.id]}
        kinds = sorted(r.kind for r in by_generation[g.id])
        partial = g.status == "succeeded" and (g.output_delivered or 0) < g.output_number
        if partial:
            # Fewer outputs than asked: the delivered share charged, the rest refunded.
            assert kinds == ["charge", "refund", "reserve"], (g.id, g.status, kinds)
            assert amounts["charge"] + amounts["refund"] == g.cost_millis, (g.id, amounts)
            assert amounts["reserve"] == g.cost_millis, (g.id, amounts)
        else:
            expected_settlement = "charge" if g.status == "succeeded" else "refund"
            assert kinds == sorted(["reserve", expected_settlement]), (g.id, g.status, kinds)
            for r in by_generation[g.id]:
                assert r.amount_millis == g.cost_millis, (g.id, r.kind, r.amount_millis, g.cost_millis)
        reserve_row = next(r for r in by_generation[g.id] if r.kind == "reserve")
        settle_rows = [r for r in by_generation[g.id] if r.kind != "reserve"]
        assert all(reserve_row.id < r.id for r in settle_rows), "settled before it was reserved"


def assert_error(r: httpx.Response, status: int, name: str, code: str, retryable: bool) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "error"
    assert body["error"] == name
    assert body["code"] == code
    assert body["retryable"] is retryable
    assert isinstance(body["message"], str) and body["message"]
    assert r.headers["X-Request-Id"] == body["request_id"]
    return body


# -- concurrent reservations ------------------------------------------------------------------


async def _burst_property(
    h: Harness, n: int, affordable: int, remainder: int, body: dict[str, Any] | None = None
) -> None:
    price = IMAGE_PRICE * ((body or {}).get("generation_output_number") or 1)
    assert 0 <= remainder < price
    start = affordable * price + remainder
    caller = await h.caller(credits=credits_str(start))
    assert await balance(caller) == start

    responses = await asyncio.gather(*(caller.create_image(body) for _ in range(n)))

    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == affordable, [r.status_code for r in responses]
    for r in refused:
        body_ = assert_error(r, 402, "bse_insufficient_credits", "BSE1004", False)
        assert "generation_id" not in r.text
        assert body_["request_id"].startswith("req_")
    ids = [r.json()["data"]["generation_id"] for r in ok]
    assert len(set(ids)) == affordable
    for r in ok:
        data = r.json()["data"]
        assert data["generation_initialized"] is True
        assert data["model_identifier"] == IMAGE

    # Right after the burst: everything affordable is reserved, nothing more, never below zero.
    after_burst = await balance(caller)
    assert after_burst == remainder
    assert after_burst >= 0

    gens = await wait_settled(h, caller.account_id)
    assert sorted(g.id for g in gens) == sorted(ids), "a refused request left a generation behind"
    assert all(g.status == "succeeded" for g in gens), [g.status for g in gens]
    assert all(g.cost_millis == price for g in gens)

    final = await balance(caller)
    assert final == remainder, "a success must charge the reservation, not refund it"
    rows = await ledger(h, caller.account_id)
    check_ledger(rows, gens, final)
    expected_rows = (1 if start else 0) + 2 * affordable
    assert len(rows) == expected_rows, [(r.kind, r.amount_millis) for r in rows]


@pytest.mark.parametrize(
    ("affordable", "remainder"),
    [
        pytest.param(7, IMAGE_PRICE - 1, id="k=7-with-remainder"),
        pytest.param(0, 0, id="zero-balance"),
        pytest.param(0, IMAGE_PRICE - 1, id="balance-just-below-price"),
        pytest.param(1, 0, id="balance-equals-price"),
        pytest.param(13, 0, id="balance-exactly-k-prices"),
    ],
)
async def test_concurrent_creates_reserve_exactly_what_the_balance_affords(
    harness: Harness, affordable: int, remainder: int
) -> None:
    await _burst_property(harness, 50, affordable, remainder)


async def test_concurrent_creates_with_several_outputs(harness: Harness) -> None:
    """The reservation is price x outputs; 4 outputs cost 4 prices, checked under the same burst."""
    await _burst_property(
        harness, 50, 5, 3 * IMAGE_PRICE, {"generation_prompt": "four foxes", "generation_output_number": 4}
    )


async def test_only_credits_limit_when_the_inflight_cap_is_large(harness_factory: Any) -> None:
    """More reservations than the default cap of 50 are all in flight at once; credits alone decide."""
    h: Harness = await harness_factory(max_inflight_generations=100_000, local_provider_delay_seconds=0.3)
    await _burst_property(h, 80, 60, 1)


async def test_ledger_invariants_with_charges_refunds_and_cancels(harness: Harness) -> None:
    """Successes charge, failures and cancels refund, and the ledger chains through all of them."""

    class Scripted(LocalProvider):
        async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
            if job.prompt.startswith("fail"):
                raise ProviderError("bse_provider_error", "scripted failure", retryable=False)
            if job.prompt.startswith("slow"):
                await asyncio.sleep(30)
            return await super().wait(job, prediction_id)

    harness.services.providers["local"] = Scripted()
    caller = await harness.caller(credits="1")
    bodies = (
        [{"generation_prompt": f"ok {i}", "generation_output_number": 1 + i % 4} for i in range(8)]
        + [{"generation_prompt": f"fail {i}", "generation_output_number": 1 + i % 3} for i in range(5)]
        + [{"generation_prompt": f"slow {i}"} for i in range(4)]
    )
    responses = await asyncio.gather(*(caller.create_image(b) for b in bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies)
    ids = [r.json()["data"]["generation_id"] for r in responses]
    slow_ids = ids[-4:]

    # Cancel the slow ones once a worker runs them (or before: both must refund once).
    for gid in slow_ids:
        r = await caller.post(f"/v1/content/generation/cancel/{gid}")
        assert r.status_code == 200, r.text
        assert r.json()["data"]["credits_refunded"] is True
        again = await caller.post(f"/v1/content/generation/cancel/{gid}")
        assert_error(again, 409, "bse_generation_not_cancelable", "BSE2012", False)

    gens = await wait_settled(harness, caller.account_id)
    status = {g.id: g.status for g in gens}
    assert [status[i] for i in ids[:8]] == ["succeeded"] * 8
    assert [status[i] for i in ids[8:13]] == ["failed"] * 5
    assert [status[i] for i in slow_ids] == ["canceled"] * 4

    spent = sum(IMAGE_PRICE * (1 + i % 4) for i in range(8))
    final = await balance(caller)
    assert final == 1000 - spent
    check_ledger(await ledger(harness, caller.account_id), gens, final)


# -- estimate -------------------------------------------------------------------------------


async def estimate(caller: Caller, model: str, **params: Any) -> httpx.Response:
    return await caller.get(f"/v1/estimate/{model}", params=params)


async def test_estimate_image_defaults_and_count_clamping(harness: Harness) -> None:
    caller = await harness.caller(credits="0.015")
    price = IMAGE_PRICE

    r = await estimate(caller, IMAGE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["request_id"] == r.headers["X-Request-Id"]
    d = body["data"]
    assert d["model_identifier"] == IMAGE
    assert d["model_type"] == "image"
    assert d["assets_count"] == 1
    assert millis(d["cost_per_generation"]) == price
    assert millis(d["cost_total_consumed"]) == price
    assert millis(d["credit_balance"]) == 15
    assert d["credit_balance_can_afford"] is True
    assert d["credit_balance_max_affordable"] == 15 // price
    for video_only in ("cost_per_second", "duration_seconds", "resolution"):
        assert video_only not in d

    for count, expected in [(0, 1), (-3, 1), (1, 1), (7, 7), (8, 8), (100, 100), (101, 100), (1000, 100)]:
        r = await estimate(caller, IMAGE, count=count)
        assert r.status_code == 200, (count, r.text)
        d = r.json()["data"]
        assert d["assets_count"] == expected, count
        assert millis(d["cost_per_generation"]) == price
        assert millis(d["cost_total_consumed"]) == price * expected, count
        assert d["credit_balance_can_afford"] is (15 >= price * expected), count
        assert d["credit_balance_max_affordable"] == 7


async def test_estimate_with_zero_balance_and_exact_balance(harness: Harness) -> None:
    broke = await harness.caller(credits="0")
    d = (await estimate(broke, IMAGE, count=1)).json()["data"]
    assert millis(d["credit_balance"]) == 0
    assert d["credit_balance_can_afford"] is False
    assert d["credit_balance_max_affordable"] == 0

    exact = await harness.caller(credits=credits_str(3 * IMAGE_PRICE))
    d = (await estimate(exact, IMAGE, count=3)).json()["data"]
    assert d["credit_balance_can_afford"] is True
    assert d["credit_balance_max_affordable"] == 3
    d = (await estimate(exact, IMAGE, count=4)).json()["data"]
    assert d["credit_balance_can_afford"] is False
    assert d["credit_balance_max_affordable"] == 3


async def test_estimate_video_pricing_matches_the_catalogue(harness: Harness) -> None:
    caller = await harness.caller(credits="0.02")
    entry = CATALOGUE[VIDEO]
    pricing = entry["model_pricing"]
    schema = entry["schema"]
    assert isinstance(pricing, dict)

    r = await estimate(caller, VIDEO)
    assert r.status_code == 200, r.text
    d = r.json()["data"]
    first_res, first_duration = schema["generation_resolution"][0], schema["generation_duration"][0]
    assert d["model_type"] == "video"
    assert d["resolution"] == first_res
    assert d["duration_seconds"] == first_duration
    assert millis(d["cost_per_second"]) == millis(pricing[first_res])
    assert millis(d["cost_per_generation"]) == millis(pricing[first_res]) * first_duration

    for resolution in schema["generation_resolution"]:
        for duration in schema["generation_duration"]:
            for audio in (False, True):
                price = Decimal(str(pricing[f"{resolution}_audio" if audio else resolution]))
                r = await estimate(
                    caller, VIDEO, duration=duration, resolution=resolution, audio=str(audio).lower(), count=2
                )
                assert r.status_code == 200, r.text
                d = r.json()["data"]
                # The exact price times the seconds, rounded once (never the unit price first).
                per_generation = int((price * duration * 1000).quantize(Decimal(1), ROUND_HALF_UP))
                assert d["resolution"] == resolution and d["duration_seconds"] == duration
                assert d["assets_count"] == 2
                assert Decimal(str(d["cost_per_second"])) == price
                assert millis(d["cost_per_generation"]) == per_generation
                assert millis(d["cost_total_consumed"]) == 2 * per_generation
                assert d["credit_balance_can_afford"] is (20 >= 2 * per_generation)
                assert d["credit_balance_max_affordable"] == 20 // per_generation


def _sub_milli_prices() -> list[tuple[str, str, bool, Decimal]]:
    entry = CATALOGUE[VIDEO]
    out = []
    for res in entry["schema"]["generation_resolution"]:
        for audio in (False, True):
            price = Decimal(str(entry["model_pricing"][f"{res}_audio" if audio else res]))
            if (price * 1000) % 1:
                out.append((VIDEO, res, audio, price))
    return out


async def test_video_cost_is_price_times_seconds_without_rounding_the_unit_price(harness: Harness) -> None:
    caller = await harness.caller(credits="1")
    combos = _sub_milli_prices()
    assert combos, "the catalogue has no sub-milli-credit per-second price any more"
    for model, resolution, audio, price in combos:
        for duration in CATALOGUE[model]["schema"]["generation_duration"]:
            exact = price * 1000 * duration  # milli-credits, possibly fractional
            d = (
                await estimate(
                    caller, model, duration=duration, resolution=resolution, audio=str(audio).lower()
                )
            ).json()["data"]
            # Three decimals on the wire: the total may differ from the exact product by rounding only.
            assert abs(millis(d["cost_per_generation"]) - exact) <= Decimal("0.5"), (
                resolution,
                audio,
                duration,
                d["cost_per_generation"],
                exact,
            )
            body = {
                "generation_prompt": "waves",
                "generation_duration": duration,
                "generation_resolution": resolution,
                "generation_generate_audio": audio,
            }
            r = await caller.post(f"/v1/generate/video/{model}", json=body)
            assert r.status_code == 200, r.text
            gid = r.json()["data"]["generation_id"]
            reserve = next(
                row
                for row in await ledger(harness, caller.account_id)
                if row.generation_id == gid and row.kind == "reserve"
            )
            assert abs(reserve.amount_millis - exact) <= Decimal("0.5"), (duration, reserve.amount_millis)
    await wait_settled(harness, caller.account_id, timeout=40)


async def test_estimate_image_price_matches_the_catalogue_for_every_image_model(harness: Harness) -> None:
    caller = await harness.caller(credits="10")
    images = [m for m in CATALOGUE.values() if m["model_type"] == "image"]
    assert images
    for m in images:
        price = Decimal(str(m["model_pricing"]))
        d = (await estimate(caller, m["model_identifier"], count=3)).json()["data"]
        one = int((price * 1000).quantize(Decimal(1), ROUND_HALF_UP))
        assert millis(d["cost_per_generation"]) == one
        assert millis(d["cost_total_consumed"]) == 3 * one


async def test_estimate_errors(harness: Harness) -> None:
    caller = await harness.caller()
    r = await estimate(caller, "nobody/no-such-model")
    assert_error(r, 404, "bse_model_not_found", "BSE3001", False)

    durations = CATALOGUE[VIDEO]["schema"]["generation_duration"]
    bad = max(durations) + 1
    r = await estimate(caller, VIDEO, duration=bad)
    body = assert_error(r, 422, "bse_parameter_out_of_range", "BSE2008", False)
    assert body["details"]["field"] == "duration"

    r = await estimate(caller, VIDEO, resolution="4320p")
    body = assert_error(r, 422, "bse_parameter_out_of_range", "BSE2008", False)
    assert body["details"]["field"] == "resolution"

    r = await estimate(caller, IMAGE, audio="true")
    assert_error(r, 422, "bse_unsupported_parameter", "BSE3003", False)
    r = await estimate(caller, IMAGE, duration=2)
    assert_error(r, 422, "bse_unsupported_parameter", "BSE3003", False)
    r = await estimate(caller, IMAGE, resolution="720p")
    assert_error(r, 422, "bse_unsupported_parameter", "BSE3003", False)

    r = await estimate(caller, IMAGE, count="many")
    body = assert_error(r, 400, "bse_invalid_input", "BSE2001", False)
    assert body["details"]["field"] == "count"


async def test_estimate_audio_on_image_names_the_audio_field(harness: Harness) -> None:
    caller = await harness.caller()
    r = await estimate(caller, IMAGE, audio="true")
    body = assert_error(r, 422, "bse_unsupported_parameter", "BSE3003", False)
    assert body["details"]["field"] == "audio"


async def _reserved_by_create(h: Harness, caller: Caller, path: str, body: dict[str, Any]) -> int:
    before = await balance(caller)
    r = await caller.post(path, json=body)
    assert r.status_code == 200, r.text
    gid = r.json()["data"]["generation_id"]
    reserve = [row for row in await ledger(h, caller.account_id) if row.generation_id == gid]
    assert [row.kind for row in reserve][:1] == ["reserve"]
    # The balance drop right after the create is the reservation (success only charges it).
    assert before - await balance(caller) == reserve[0].amount_millis
    return reserve[0].amount_millis


async def test_estimate_equals_what_create_reserves(harness: Harness) -> None:
    caller = await harness.caller(credits="5")
    for outputs in (1, 2, 4):
        d = (await estimate(caller, IMAGE, count=outputs)).json()["data"]
        reserved = await _reserved_by_create(
            harness,
            caller,
            f"/v1/generate/image/{IMAGE}",
            {"generation_prompt": "fox", "generation_output_number": outputs},
        )
        assert reserved == millis(d["cost_total_consumed"]), outputs

    for duration, resolution, audio in [
        (1, None, False),
        (3, "720p", True),
        (5, "480p", True),
        (2, "720p", False),
    ]:
        params: dict[str, Any] = {"duration": duration, "audio": str(audio).lower()}
        body: dict[str, Any] = {"generation_prompt": "waves", "generation_duration": duration}
        if resolution:
            params["resolution"] = resolution
            body["generation_resolution"] = resolution
        if audio:
            body["generation_generate_audio"] = True
        d = (await estimate(caller, VIDEO, **params)).json()["data"]
        reserved = await _reserved_by_create(harness, caller, f"/v1/generate/video/{VIDEO}", body)
        assert reserved == millis(d["cost_per_generation"]), (duration, resolution, audio)
        assert reserved == millis(d["cost_total_consumed"])

    gens = await wait_settled(harness, caller.account_id, timeout=40)
    assert all(g.status == "succeeded" for g in gens)
    check_ledger(await ledger(harness, caller.account_id), gens, await balance(caller))


async def test_estimate_balance_follows_reservations(harness: Harness) -> None:
    caller = await harness.caller(credits=credits_str(2 * IMAGE_PRICE))
    d = (await estimate(caller, IMAGE)).json()["data"]
    assert d["credit_balance_max_affordable"] == 2
    r = await caller.create_image()
    assert r.status_code == 200
    d = (await estimate(caller, IMAGE)).json()["data"]
    assert millis(d["credit_balance"]) == IMAGE_PRICE
    assert d["credit_balance_max_affordable"] == 1
    assert (await caller.create_image()).status_code == 200
    d = (await estimate(caller, IMAGE)).json()["data"]
    assert d["credit_balance_can_afford"] is False and d["credit_balance_max_affordable"] == 0
    assert_error(await caller.create_image(), 402, "bse_insufficient_credits", "BSE1004", False)


# -- in-flight cap ----------------------------------------------------------------------------


async def test_third_create_over_the_inflight_cap_is_refused_and_reserves_nothing(
    harness_factory: Any,
) -> None:
    h: Harness = await harness_factory(max_inflight_generations=2, local_provider_delay_seconds=1.5)
    caller = await h.caller(credits="1")
    first = await caller.create_image()
    second = await caller.create_image()
    assert first.status_code == 200 and second.status_code == 200
    balance_before = await balance(caller)
    rows_before = await ledger(h, caller.account_id)

    third = await caller.create_image()
    body = assert_error(third, 429, "bse_concurrency_limit_exceeded", "BSE1009", True)
    assert body["details"]["limit"] == 2
    for header in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"):
        assert header in third.headers

    assert await balance(caller) == balance_before == 1000 - 2 * IMAGE_PRICE
    assert [(r.id, r.kind) for r in await ledger(h, caller.account_id)] == [
        (r.id, r.kind) for r in rows_before
    ]
    assert len(await generations(h, caller.account_id)) == 2

    # Another account is not limited by this one's in-flight work.
    other = await h.caller(credits="1")
    assert (await other.create_image()).status_code == 200

    # Once the two finish, the cap frees up again.
    for r in (first, second):
        assert (await caller.wait(r.json()["data"]["generation_id"]))["generation_status"] == "succeeded"
    fourth = await caller.create_image()
    assert fourth.status_code == 200, fourth.text
    gens = await wait_settled(h, caller.account_id)
    check_ledger(await ledger(h, caller.account_id), gens, await balance(caller))


async def test_inflight_cap_429_carries_retry_after(harness_factory: Any) -> None:
    h: Harness = await harness_factory(max_inflight_generations=1, local_provider_delay_seconds=1.0)
    caller = await h.caller(credits="1")
    assert (await caller.create_image()).status_code == 200
    r = await caller.create_image()
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1


async def test_concurrent_creates_respect_the_inflight_cap(harness_factory: Any) -> None:
    h: Harness = await harness_factory(max_inflight_generations=3, local_provider_delay_seconds=1.0)
    caller = await h.caller(credits="1")
    responses = await asyncio.gather(*(caller.create_image() for _ in range(20)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 3 + [429] * 17, codes
    for r in responses:
        if r.status_code == 429:
            assert_error(r, 429, "bse_concurrency_limit_exceeded", "BSE1009", True)
    assert await balance(caller) == 1000 - 3 * IMAGE_PRICE
    gens = await wait_settled(h, caller.account_id)
    assert len(gens) == 3
    check_ledger(await ledger(h, caller.account_id), gens, await balance(caller))
