"""Idempotency-Key on the create operations, over HTTP against the real app and worker."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import select, update

from genplane.clock import utcnow
from genplane.contract.errors import ApiError
from genplane.credits.ledger import add_credits, balance_millis
from genplane.db.models import Generation, IdempotencyRecord, LedgerEntry
from genplane.generations import idempotency

from .conftest import Caller, Harness

IMAGE = "/v1/generate/image/local/preview-image"
VIDEO = "/v1/generate/video/local/preview-video"
BODY = {"generation_prompt": "a quiet harbour", "generation_output_number": 2, "generation_seed": 3}
COST = 4  # milli-credits: two 0.002 images


def key_header(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def data_bytes(r: httpx.Response) -> bytes:
    """The raw ``"data": {...}`` part of a success body (it is the envelope's last member)."""
    at = r.content.index(b'"data":')
    return r.content[at:]


def assert_error(r: httpx.Response, status: int, name: str, retryable: bool) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "error"
    assert body["error"] == name, body
    assert body["retryable"] is retryable
    assert r.headers["X-Request-Id"] == body["request_id"]
    assert "idempotency-replayed" not in r.headers
    return body


async def generations_of(harness: Harness, account_id: str) -> list[str]:
    async with harness.services.db.read() as s:
        rows = await s.scalars(select(Generation.id).where(Generation.account_id == account_id))
        return list(rows.all())


async def ledger_kinds(harness: Harness, account_id: str) -> list[str]:
    async with harness.services.db.read() as s:
        rows = await s.scalars(
            select(LedgerEntry.kind)
            .where(LedgerEntry.account_id == account_id, LedgerEntry.kind != "add")
            .order_by(LedgerEntry.id)
        )
        return list(rows.all())


async def list_total(caller: Caller) -> int:
    r = await caller.get("/v1/content/list")
    assert r.status_code == 200, r.text
    total: int = r.json()["total"]
    return total


async def check_each(cases: list[tuple[str, Callable[[], Awaitable[None]]]]) -> None:
    """Run every case on one app (starting an app per case is the slow part) and report all
    failing cases by name, not just the first."""
    failures = []
    for name, check in cases:
        try:
            await check()
        except AssertionError as exc:
            failures.append(f"[{name}] {exc}")
    assert not failures, "\n".join(failures)


def fingerprint(path: str, body: dict[str, Any]) -> str:
    return idempotency.request_fingerprint("POST", path, orjson.dumps(body))


# -- replay ----------------------------------------------------------------------------------


async def test_same_key_same_body_replays_first_response(harness: Harness) -> None:
    caller = await harness.caller(credits="1")
    first = await caller.create_image(BODY, headers=key_header("order-1"))
    assert first.status_code == 200, first.text
    assert "idempotency-replayed" not in first.headers
    gid = first.json()["data"]["generation_id"]
    assert first.json()["message"] == "Generation initialized"

    # Replayed while the job may still run, and again once it has finished.
    again = await caller.create_image(BODY, headers=key_header("order-1"))
    record = await caller.wait(gid)
    assert record["generation_status"] == "succeeded"
    late = await caller.create_image(BODY, headers=key_header("order-1"))
    for r in (again, late):
        assert r.status_code == 200, r.text
        assert r.headers["Idempotency-Replayed"] == "true"
        assert data_bytes(r) == data_bytes(first)
        assert r.json()["data"] == first.json()["data"]
        assert r.json()["status"] == "success"
        assert r.json()["message"] == "Generation initialized"
        assert r.headers["X-Request-Id"].startswith("req_")

    assert await generations_of(harness, caller.account_id) == [gid]
    assert await list_total(caller) == 1
    assert await ledger_kinds(harness, caller.account_id) == ["reserve", "charge"]
    assert await balance_millis(harness.services.db, caller.account_id) == 1000 - COST


async def test_same_json_with_other_spacing_and_key_order_replays(caller: Caller) -> None:
    first = await caller.post(
        IMAGE, content=b'{"generation_prompt":"x","generation_ratio":"16:9"}', headers=key_header("k1")
    )
    assert first.status_code == 200, first.text
    second = await caller.post(
        IMAGE,
        content=b'{\n  "generation_ratio" : "16:9",\n  "generation_prompt" : "x"\n}\n',
        headers={**key_header("k1"), "Content-Type": "application/json"},
    )
    assert second.status_code == 200, second.text
    assert second.headers["Idempotency-Replayed"] == "true"
    assert second.json()["data"] == first.json()["data"]
    assert await list_total(caller) == 1


async def test_requests_without_a_key_are_never_replayed(caller: Caller) -> None:
    a = await caller.create_image(BODY)
    b = await caller.create_image(BODY)
    assert a.status_code == b.status_code == 200
    assert "idempotency-replayed" not in a.headers and "idempotency-replayed" not in b.headers
    assert a.json()["data"]["generation_id"] != b.json()["data"]["generation_id"]
    assert await list_total(caller) == 2


# -- conflicts -------------------------------------------------------------------------------


REUSED_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("other_prompt", IMAGE, {**BODY, "generation_prompt": "another harbour"}),
    ("other_number", IMAGE, {**BODY, "generation_output_number": 1}),
    ("field_dropped", IMAGE, {k: v for k, v in BODY.items() if k != "generation_seed"}),
    ("other_route", VIDEO, {"generation_prompt": "a quiet harbour", "generation_duration": 1}),
]


async def test_same_key_other_body_is_key_reused(harness: Harness) -> None:
    def case(path: str, body: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        return lambda: _check_key_reused(harness, path, body)

    await check_each([(name, case(path, body)) for name, path, body in REUSED_CASES])


async def _check_key_reused(harness: Harness, path: str, body: dict[str, Any]) -> None:
    caller = await harness.caller(credits="1")
    first = await caller.create_image(BODY, headers=key_header("reused"))
    assert first.status_code == 200, first.text
    balance = await balance_millis(harness.services.db, caller.account_id)

    r = await caller.post(path, json=body, headers=key_header("reused"))
    assert_error(r, 409, "bse_idempotency_key_reused", retryable=False)
    assert await generations_of(harness, caller.account_id) == [first.json()["data"]["generation_id"]]
    assert await balance_millis(harness.services.db, caller.account_id) == balance
    # The key still replays its own request afterwards.
    replay = await caller.create_image(BODY, headers=key_header("reused"))
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert replay.json()["data"] == first.json()["data"]


async def test_same_key_while_first_is_in_flight_is_in_progress(harness: Harness) -> None:
    caller = await harness.caller(credits="1")
    svc = harness.services
    # Hold the claim exactly as a first request that is still being handled would.
    claim = await idempotency.begin(
        svc.db, svc.settings, caller.account_id, "busy-1", fingerprint(IMAGE, BODY)
    )
    assert claim is None

    r = await caller.create_image(BODY, headers=key_header("busy-1"))
    body = assert_error(r, 409, "bse_idempotency_in_progress", retryable=True)
    assert body["code"] == "BSE2016"
    # Another body under the held key is a conflict of its own kind.
    other = await caller.create_image({"generation_prompt": "else"}, headers=key_header("busy-1"))
    assert_error(other, 409, "bse_idempotency_key_reused", retryable=False)
    assert await generations_of(harness, caller.account_id) == []
    assert await balance_millis(svc.db, caller.account_id) == 1000

    # Once the first request gives the key back, the retry goes through and is not a replay.
    await idempotency.release(svc.db, caller.account_id, "busy-1")
    r = await caller.create_image(BODY, headers=key_header("busy-1"))
    assert r.status_code == 200, r.text
    assert "idempotency-replayed" not in r.headers
    assert await generations_of(harness, caller.account_id) == [r.json()["data"]["generation_id"]]


async def abandon(harness: Harness, account_id: str, key: str) -> None:
    """Age the key's claim past the stale time, as a request that died long ago leaves it."""
    old = utcnow() - timedelta(seconds=harness.services.settings.idempotency_stale_seconds + 5)
    async with harness.services.db.write() as s:
        await s.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.account_id == account_id, IdempotencyRecord.key == key)
            .values(updated_at=old)
        )


async def test_abandoned_claim_is_taken_over_after_stale_time(
    database: dict[str, Any], harness_factory: Any
) -> None:
    harness: Harness = await harness_factory(**database)
    caller = await harness.caller(credits="1")
    svc = harness.services
    await idempotency.begin(svc.db, svc.settings, caller.account_id, "crashed", fingerprint(IMAGE, BODY))
    r = await caller.create_image(BODY, headers=key_header("crashed"))
    assert_error(r, 409, "bse_idempotency_in_progress", retryable=True)
    await abandon(harness, caller.account_id, "crashed")  # the request that claimed it died long ago
    r = await caller.create_image(BODY, headers=key_header("crashed"))
    assert r.status_code == 200, r.text
    assert "idempotency-replayed" not in r.headers
    replay = await caller.create_image(BODY, headers=key_header("crashed"))
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert replay.json()["data"] == r.json()["data"]
    assert len(await generations_of(harness, caller.account_id)) == 1


async def test_concurrent_duplicates_create_exactly_one_generation(
    database: dict[str, Any], harness_factory: Any
) -> None:
    """On PostgreSQL a get-then-insert let duplicates collide on the key (500 bse_database_error)."""
    harness: Harness = await harness_factory(**database)
    caller = await harness.caller(credits="1")
    responses = await asyncio.gather(
        *(caller.create_image(BODY, headers=key_header("burst")) for _ in range(10))
    )
    created = [r for r in responses if r.status_code == 200 and "idempotency-replayed" not in r.headers]
    replayed = [r for r in responses if r.status_code == 200 and "idempotency-replayed" in r.headers]
    busy = [r for r in responses if r.status_code != 200]
    assert len(created) == 1, [r.text for r in responses]
    for r in replayed:
        assert r.json()["data"] == created[0].json()["data"]
    for r in busy:
        assert_error(r, 409, "bse_idempotency_in_progress", retryable=True)
    gid = created[0].json()["data"]["generation_id"]
    assert await generations_of(harness, caller.account_id) == [gid]
    assert (await caller.wait(gid))["generation_status"] == "succeeded"
    assert await ledger_kinds(harness, caller.account_id) == ["reserve", "charge"]
    assert await balance_millis(harness.services.db, caller.account_id) == 1000 - COST


async def test_concurrent_takeovers_of_an_abandoned_claim_let_one_through(
    database: dict[str, Any], harness_factory: Any
) -> None:
    harness: Harness = await harness_factory(**database)
    caller = await harness.caller(credits="1")
    svc = harness.services
    await idempotency.begin(svc.db, svc.settings, caller.account_id, "dead", fingerprint(IMAGE, BODY))
    await abandon(harness, caller.account_id, "dead")
    claims = await asyncio.gather(
        *(
            idempotency.begin(svc.db, svc.settings, caller.account_id, "dead", fingerprint(IMAGE, BODY))
            for _ in range(6)
        ),
        return_exceptions=True,
    )
    assert claims.count(None) == 1, claims
    refused = [c for c in claims if c is not None]
    assert all(isinstance(c, ApiError) and c.name == "bse_idempotency_in_progress" for c in refused)


# -- key format ------------------------------------------------------------------------------


MALFORMED_KEYS = ["", "k" * 256, "has space", "a/b", "semi;colon", "star*", "quote'", "tab\tkey", "k" * 1000]


async def test_malformed_key_is_invalid_input(harness: Harness) -> None:
    caller = await harness.caller(credits="1")

    def case(key: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            r = await caller.create_image(BODY, headers=key_header(key))
            body = assert_error(r, 400, "bse_invalid_input", retryable=False)
            assert body["details"]["field"] == "Idempotency-Key"
            assert await generations_of(harness, caller.account_id) == []
            assert await balance_millis(harness.services.db, caller.account_id) == 1000

        return run

    await check_each([(repr(k[:20]) + f" ({len(k)} chars)", case(k)) for k in MALFORMED_KEYS])
    # None of them reserved the key: a valid request afterwards is a plain first request.
    r = await caller.create_image(BODY, headers=key_header("k" * 255))
    assert r.status_code == 200, r.text
    assert "idempotency-replayed" not in r.headers


WELL_FORMED_KEYS = ["k", "K" * 255, "abc_DEF-123:xyz.v2", "2024-01-01T00:00:00.000", "0"]


async def test_well_formed_keys_are_accepted_and_replay(harness: Harness) -> None:
    def case(key: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            caller = await harness.caller(credits="1")
            first = await caller.create_image(BODY, headers=key_header(key))
            assert first.status_code == 200, first.text
            second = await caller.create_image(BODY, headers=key_header(key))
            assert second.headers.get("Idempotency-Replayed") == "true", second.text
            assert second.json()["data"] == first.json()["data"]
            assert await list_total(caller) == 1

        return run

    await check_each([(repr(k[:20]) + f" ({len(k)} chars)", case(k)) for k in WELL_FORMED_KEYS])


async def test_keys_are_case_sensitive(caller: Caller) -> None:
    a = await caller.create_image(BODY, headers=key_header("Order-7"))
    b = await caller.create_image(BODY, headers=key_header("order-7"))
    assert a.status_code == b.status_code == 200
    assert "idempotency-replayed" not in b.headers
    assert a.json()["data"]["generation_id"] != b.json()["data"]["generation_id"]


# -- scope -----------------------------------------------------------------------------------


async def test_keys_are_per_account(harness: Harness) -> None:
    alice = await harness.caller(credits="1")
    bob = await harness.caller(credits="1")
    a = await alice.create_image(BODY, headers=key_header("shared-key"))
    b = await bob.create_image(BODY, headers=key_header("shared-key"))
    assert a.status_code == b.status_code == 200
    assert "idempotency-replayed" not in b.headers
    ga, gb = a.json()["data"]["generation_id"], b.json()["data"]["generation_id"]
    assert ga != gb
    assert await generations_of(harness, alice.account_id) == [ga]
    assert await generations_of(harness, bob.account_id) == [gb]
    # A different body from bob is not a conflict with alice's request either.
    c = await bob.create_image({"generation_prompt": "bob only"}, headers=key_header("other"))
    d = await alice.create_image({"generation_prompt": "alice only"}, headers=key_header("other"))
    assert c.status_code == d.status_code == 200
    for caller, gid in ((alice, ga), (bob, gb)):
        assert (await caller.wait(gid))["generation_status"] == "succeeded"
    for caller in (alice, bob):
        assert await balance_millis(harness.services.db, caller.account_id) == 1000 - COST - 2
    # Bob's replay shows his own generation, never alice's.
    rb = await bob.create_image(BODY, headers=key_header("shared-key"))
    assert rb.headers["Idempotency-Replayed"] == "true"
    assert rb.json()["data"]["generation_id"] == gb


async def test_same_key_from_two_keys_of_one_account_replays(harness: Harness) -> None:
    first_key = await harness.caller(credits="1")
    second_key = await harness.key_for(first_key, preset="generate_only")
    a = await first_key.create_image(BODY, headers=key_header("acct-scope"))
    b = await second_key.create_image(BODY, headers=key_header("acct-scope"))
    assert b.headers["Idempotency-Replayed"] == "true"
    assert b.json()["data"] == a.json()["data"]
    assert len(await generations_of(harness, first_key.account_id)) == 1


# -- failures do not poison the key ----------------------------------------------------------


REJECTED_CASES: list[tuple[str, str, bytes, int, str]] = [
    ("not_json", IMAGE, b"{broken", 400, "bse_invalid_input"),
    ("missing_prompt", IMAGE, orjson.dumps({"generation_ratio": "1:1"}), 400, "bse_invalid_input"),
    (
        "out_of_range",
        IMAGE,
        orjson.dumps({**BODY, "generation_output_number": 9}),
        422,
        "bse_parameter_out_of_range",
    ),
    ("unsupported", IMAGE, orjson.dumps({**BODY, "generation_fps": 24}), 422, "bse_unsupported_parameter"),
    ("unknown_model", "/v1/generate/image/acme/none", orjson.dumps(BODY), 404, "bse_model_not_found"),
    (
        "wrong_route",
        "/v1/generate/video/local/preview-image",
        orjson.dumps(BODY),
        422,
        "bse_model_type_mismatch",
    ),
    (
        "video_without_duration",
        VIDEO,
        orjson.dumps({"generation_prompt": "no duration"}),
        400,
        "bse_invalid_input",
    ),
]


async def test_rejected_request_does_not_poison_the_key(harness: Harness) -> None:
    def case(path: str, raw: bytes, status: int, error: str) -> Callable[[], Awaitable[None]]:
        return lambda: _check_not_poisoned(harness, path, raw, status, error)

    await check_each([(c[0], case(*c[1:])) for c in REJECTED_CASES])


async def _check_not_poisoned(harness: Harness, path: str, raw: bytes, status: int, error: str) -> None:
    caller = await harness.caller(credits="1")
    headers = {**key_header("retry-me"), "Content-Type": "application/json"}
    r = await caller.post(path, content=raw, headers=headers)
    assert_error(r, status, error, retryable=False)
    # Repeating the bad request gives the same answer (it was never stored) ...
    again = await caller.post(path, content=raw, headers=headers)
    assert_error(again, status, error, retryable=False)
    # ... and the corrected request under the same key runs, rather than conflicting.
    ok = await caller.create_image(BODY, headers=key_header("retry-me"))
    assert ok.status_code == 200, ok.text
    assert "idempotency-replayed" not in ok.headers
    assert await generations_of(harness, caller.account_id) == [ok.json()["data"]["generation_id"]]


async def test_insufficient_credits_does_not_poison_the_key(harness: Harness) -> None:
    caller = await harness.caller(credits="0.003")  # one image fits, two do not
    r = await caller.create_image(BODY, headers=key_header("topup"))
    assert_error(r, 402, "bse_insufficient_credits", retryable=False)
    assert await generations_of(harness, caller.account_id) == []
    assert await ledger_kinds(harness, caller.account_id) == []
    # The same request still fails the same way (not a stored failure, not "in progress") ...
    r = await caller.create_image(BODY, headers=key_header("topup"))
    assert_error(r, 402, "bse_insufficient_credits", retryable=False)
    # ... and after a top-up the very same request with the same key creates the generation.
    await add_credits(harness.services.db, caller.account_id, 10)
    ok = await caller.create_image(BODY, headers=key_header("topup"))
    assert ok.status_code == 200, ok.text
    assert "idempotency-replayed" not in ok.headers
    gid = ok.json()["data"]["generation_id"]
    assert (await caller.wait(gid))["generation_status"] == "succeeded"
    replay = await caller.create_image(BODY, headers=key_header("topup"))
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert replay.json()["data"]["generation_id"] == gid
    assert await ledger_kinds(harness, caller.account_id) == ["reserve", "charge"]
    assert await balance_millis(harness.services.db, caller.account_id) == 3 + 10 - COST


async def test_concurrency_limit_does_not_poison_the_key(harness_factory: Any) -> None:
    h: Harness = await harness_factory(run_worker=False, max_inflight_generations=1)
    caller = await h.caller(credits="1")
    blocker = await caller.create_image({"generation_prompt": "first"})
    assert blocker.status_code == 200, blocker.text
    r = await caller.create_image(BODY, headers=key_header("later"))
    assert_error(r, 429, "bse_concurrency_limit_exceeded", retryable=True)
    cancel = await caller.post(f"/v1/content/generation/cancel/{blocker.json()['data']['generation_id']}")
    assert cancel.status_code == 200, cancel.text
    ok = await caller.create_image(BODY, headers=key_header("later"))
    assert ok.status_code == 200, ok.text
    assert "idempotency-replayed" not in ok.headers


async def test_replay_depends_only_on_the_stored_answer(
    harness: Harness, monkeypatch: Any
) -> None:
    """The provider was unconfigured since the first create: the retry still gets the first
    answer, since nothing but the stored answer is consulted."""
    caller = await harness.caller(credits="1")
    first = await caller.create_image(BODY, headers=key_header("stable-1"))
    assert first.status_code == 200, first.text
    await caller.wait(first.json()["data"]["generation_id"])
    monkeypatch.setattr(harness.services.providers["local"], "configured", lambda: False)
    unrelated = await caller.create_image(BODY, headers=key_header("stable-2"))
    assert_error(unrelated, 503, "bse_provider_unavailable", True)
    again = await caller.create_image(BODY, headers=key_header("stable-1"))
    assert again.status_code == 200, again.text
    assert again.headers["Idempotency-Replayed"] == "true"
    assert data_bytes(again) == data_bytes(first)


async def test_replay_of_a_canceled_generation_keeps_the_first_answer_and_get_tells_the_truth(
    harness_factory: Any,
) -> None:
    """The product's docs: a replay returns the original response even if the generation has
    changed since. The record is where its state is read, and it must say canceled."""
    h: Harness = await harness_factory(run_worker=False)
    caller = await h.caller(credits="1")
    first = await caller.create_image(BODY, headers=key_header("cancel-me"))
    assert first.status_code == 200, first.text
    gid = first.json()["data"]["generation_id"]
    cancel = await caller.post(f"/v1/content/generation/cancel/{gid}")
    assert cancel.status_code == 200, cancel.text

    replay = await caller.create_image(BODY, headers=key_header("cancel-me"))
    assert replay.status_code == 200, replay.text
    assert replay.headers["Idempotency-Replayed"] == "true"
    assert data_bytes(replay) == data_bytes(first)  # the original body, as it was before the cancel
    record = await caller.get(f"/v1/content/{gid}")
    assert record.status_code == 200, record.text
    assert record.json()["data"]["generation_status"] == "canceled"
    assert await generations_of(h, caller.account_id) == [gid]
