"""The provider chain end to end: real adapters, fake providers on their real protocols.

A model served by Replicate and fal; each test breaks one of them in one way and
checks the record a client sees, the attempts recorded, the files stored and the money.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, update

from genplane.clock import utcnow
from genplane.db.models import Generation, LedgerEntry, ProviderAttempt
from tests.conftest import Caller, Harness
from tests.fakes.fal import CDN_HOST as FAL_CDN
from tests.fakes.fal import FakeFal
from tests.fakes.network import FakeNetwork
from tests.fakes.replicate import CDN_HOST as REPLICATE_CDN
from tests.fakes.replicate import FakeReplicate

MODEL = "test/flux-schnell"
CATALOG = f"""
models:
  - model_identifier: {MODEL}
    model_type: image
    model_pricing: 0.003
    schema:
      generation_ratio: ["1:1", "16:9"]
      generation_output_format: [png, jpg, webp]
      generation_output_number: 4
    specific_schema: [generation_seed]
    providers:
      replicate: {{model_id: black-forest-labs/flux-schnell}}
      fal: {{model_id: fal-ai/flux/schnell}}
  - model_identifier: test/jpeg-only
    model_type: image
    model_pricing: 0.003
    schema:
      generation_ratio: ["1:1"]
      generation_output_format: [png, webp]
      generation_output_number: 1
    providers:
      fal: {{model_id: fal-ai/flux/schnell, fields: {{generation_output_format: ""}}}}
"""


@dataclass
class Rig:
    harness: Harness
    replicate: FakeReplicate
    fal: FakeFal
    network: FakeNetwork

    async def attempts(self, generation_id: str) -> list[tuple[str, str, str | None]]:
        async with self.harness.services.db.read() as s:
            rows = await s.scalars(
                select(ProviderAttempt)
                .where(ProviderAttempt.generation_id == generation_id)
                .order_by(ProviderAttempt.id)
            )
            return [(a.provider, a.outcome, a.error_code) for a in rows.all()]

    async def ledger(self, generation_id: str) -> list[tuple[str, int]]:
        async with self.harness.services.db.read() as s:
            rows = await s.scalars(
                select(LedgerEntry).where(LedgerEntry.generation_id == generation_id).order_by(LedgerEntry.id)
            )
            return [(e.kind, e.amount_millis) for e in rows.all()]

    async def balance(self, caller: Caller) -> float:
        r = await caller.get("/v1/user/billing")
        return float(r.json()["data"]["billing_credit_balance"])


@pytest.fixture
async def rig_factory(harness_factory: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    (catalog_dir / "test.yaml").write_text(CATALOG)

    async def make(**overrides: Any) -> Rig:
        network = FakeNetwork()
        replicate, fal = FakeReplicate(), FakeFal()
        replicate.install(network)
        fal.install(network)
        settings: dict[str, Any] = {
            "catalog_dir": catalog_dir,
            "replicate_api_token": replicate.token,
            "fal_key": fal.key,
            "provider_poll_interval_seconds": 0.01,
            "fetch_allow_hosts": [REPLICATE_CDN, FAL_CDN],
            "image_attempt_deadline_seconds": 5,
        }
        settings.update(overrides)
        harness = await harness_factory(transport=network, **settings)
        return Rig(harness, replicate, fal, network)

    return make


async def create(caller: Caller, **body: Any) -> str:
    r = await caller.create_image({"generation_prompt": "a fox", **body}, model=MODEL)
    assert r.status_code == 200, r.text
    return str(r.json()["data"]["generation_id"])


async def assert_files(caller: Caller, record: dict[str, Any], count: int) -> None:
    files = record["generation_output_file"]
    assert len(files) == count
    for url in files:
        got = await caller.client.get(url)
        assert got.status_code == 200
        assert got.content[:4] in (b"\x89PNG", b"RIFF", b"\xff\xd8\xff\xe0", b"\xff\xd8\xff\xdb")


async def test_explicit_chain_succeeds_on_the_first_provider(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()
    caller = await rig.harness.caller(credits="1")
    gid = await create(caller, generation_provider_order="replicate, fal", generation_output_number=2)
    record = await caller.wait(gid)
    assert record["generation_status"] == "succeeded"
    assert record["generation_provider_used"] == "replicate"
    assert record["generation_provider_order"] == ["replicate", "fal"]
    await assert_files(caller, record, 2)
    assert await rig.attempts(gid) == [("replicate", "used", None)]
    assert await rig.ledger(gid) == [("reserve", 6), ("charge", 6)]
    assert not rig.network.requests_to("queue.fal.run")


@pytest.mark.parametrize("breakage", ["http_500", "hang", "read_timeout"])
async def test_first_provider_broken_fails_over_to_the_second(
    rig_factory: Callable[..., Any], breakage: str
) -> None:
    overrides: dict[str, Any] = {}
    if breakage == "hang":
        overrides["image_attempt_deadline_seconds"] = 0.5  # the worker's deadline ends it
    if breakage == "read_timeout":
        overrides["provider_request_timeout_seconds"] = 0.3  # the client's read timeout ends it
    rig = await rig_factory(**overrides)
    if breakage == "http_500":
        rig.replicate.submit_error_status = 500
    else:
        rig.replicate.hang_submits = 1
    caller = await rig.harness.caller(credits="1")
    before = await rig.balance(caller)
    gid = await create(caller, generation_provider_order="replicate, fal")
    record = await caller.wait(gid)
    assert record["generation_status"] == "succeeded", record
    assert record["generation_provider_used"] == "fal"
    await assert_files(caller, record, 1)
    expected_error = "bse_provider_error" if breakage == "http_500" else "bse_provider_timeout"
    assert await rig.attempts(gid) == [("replicate", "failed", expected_error), ("fal", "used", None)]
    assert await rig.ledger(gid) == [("reserve", 3), ("charge", 3)]
    assert await rig.balance(caller) == pytest.approx(before - 0.003)


async def test_moderation_refusal_does_not_fail_over(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()
    rig.replicate.moderate = True
    caller = await rig.harness.caller(credits="1")
    before = await rig.balance(caller)
    gid = await create(caller, generation_provider_order="replicate, fal")
    record = await caller.wait(gid)
    assert record["generation_status"] == "failed"
    assert record["generation_error_name"] == "bse_content_policy_violation"
    assert record["generation_output_file"] is None
    assert await rig.attempts(gid) == [("replicate", "failed", "bse_content_policy_violation")]
    assert not rig.network.requests_to("queue.fal.run")
    assert await rig.ledger(gid) == [("reserve", 3), ("refund", 3)]
    assert await rig.balance(caller) == pytest.approx(before)


async def test_every_provider_failing_refunds_and_lists_each_error(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()
    rig.replicate.submit_error_status = 503
    rig.fal.fail_error = "CUDA out of memory"
    caller = await rig.harness.caller(credits="1")
    before = await rig.balance(caller)
    gid = await create(caller, generation_provider_order="replicate, fal")
    record = await caller.wait(gid)
    assert record["generation_status"] == "failed"
    assert record["generation_error_name"] == "bse_all_providers_failed"
    async with rig.harness.services.db.read() as s:
        gen = await s.get(Generation, gid)
    assert gen is not None and gen.provider_errors is not None
    assert [e["provider"] for e in gen.provider_errors] == ["replicate", "fal"]
    assert all(e["retryable"] for e in gen.provider_errors)
    assert gen.provider_errors[0]["error"] == "bse_provider_unavailable"
    assert [a[:2] for a in await rig.attempts(gid)] == [("replicate", "failed"), ("fal", "failed")]
    assert await rig.ledger(gid) == [("reserve", 3), ("refund", 3)]
    assert await rig.balance(caller) == pytest.approx(before)


async def test_rate_limited_submit_is_retried_after_retry_after(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()
    rig.replicate.rate_limited_submits = 1
    rig.replicate.retry_after = "0.2"
    caller = await rig.harness.caller(credits="1")
    gid = await create(caller, generation_provider_order="replicate, fal")
    record = await caller.wait(gid)
    assert record["generation_provider_used"] == "replicate"
    assert await rig.attempts(gid) == [("replicate", "used", None)]


async def test_output_download_retried_after_the_provider_finished(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()
    rig.replicate.files.fail_next = 2  # the CDN answers 503 twice, then serves the file
    caller = await rig.harness.caller(credits="1")
    gid = await create(caller, generation_provider_order="replicate, fal")
    record = await caller.wait(gid)
    assert record["generation_status"] == "succeeded"
    assert record["generation_provider_used"] == "replicate"
    assert len(rig.replicate.created) == 1  # the output was fetched again, not paid for again
    await assert_files(caller, record, 1)


async def test_expired_output_url_fails_the_attempt_and_moves_on(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()
    rig.replicate.files.ttl_seconds = -1  # the signed URL is already expired when fetched
    caller = await rig.harness.caller(credits="1")
    gid = await create(caller, generation_provider_order="replicate, fal")
    record = await caller.wait(gid)
    assert record["generation_provider_used"] == "fal"
    attempts = await rig.attempts(gid)
    assert attempts[0] == ("replicate", "failed", "bse_provider_error")


async def test_fastest_prefers_the_provider_with_the_better_record(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()
    caller = await rig.harness.caller(credits="1")
    rig.replicate.queued_polls = 3  # replicate is slower
    first = [await create(caller, generation_provider_order="replicate") for _ in range(3)]
    second = [await create(caller, generation_provider_order="fal") for _ in range(3)]
    for gid in first + second:
        assert (await caller.wait(gid))["generation_status"] == "succeeded"
    async with rig.harness.services.db.write() as s:  # make replicate clearly the slower one
        slow = await s.scalars(select(ProviderAttempt).where(ProviderAttempt.provider == "replicate"))
        for attempt in slow.all():
            attempt.latency_ms = 9000.0
    rig.harness.services.generations.ranker.invalidate()
    r = await caller.create_image({"generation_prompt": "ranked"}, model=MODEL)
    assert r.json()["data"]["generation_provider_order"] == ["fal", "replicate"]
    record = await caller.wait(r.json()["data"]["generation_id"])
    assert record["generation_provider_used"] == "fal"


async def test_fastest_skips_a_provider_whose_breaker_is_open(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()
    rig.fal.fail_error = "runner crashed"
    caller = await rig.harness.caller(credits="1")
    for _ in range(5):
        gid = await create(caller, generation_provider_order="fal")
        assert (await caller.wait(gid))["generation_status"] == "failed"
    rig.harness.services.generations.ranker.invalidate()
    r = await caller.create_image({"generation_prompt": "skip fal"}, model=MODEL)
    assert r.json()["data"]["generation_provider_order"] == ["replicate"]


async def test_cancel_stops_the_upstream_prediction(rig_factory: Callable[..., Any]) -> None:
    rig = await rig_factory()
    rig.replicate.queued_polls = 10_000  # never finishes on its own
    caller = await rig.harness.caller(credits="1")
    gid = await create(caller, generation_provider_order="replicate")
    for _ in range(200):
        if rig.replicate.created:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.1)  # let the worker record the prediction id
    r = await caller.post(f"/v1/content/generation/cancel/{gid}")
    assert r.status_code == 200, r.text
    assert r.json()["data"]["provider_cancel_sent"] is True
    assert r.json()["data"]["credits_refunded"] is True
    assert list(rig.replicate.predictions) == rig.replicate.canceled
    for _ in range(100):
        if ("replicate", "canceled", None) in await rig.attempts(gid):
            break
        await asyncio.sleep(0.02)
    assert await rig.attempts(gid) == [("replicate", "canceled", None)]


async def test_model_without_a_configured_provider_is_refused_at_create(
    rig_factory: Callable[..., Any],
) -> None:
    rig = await rig_factory(replicate_api_token=None, fal_key=None)
    caller = await rig.harness.caller(credits="1")
    before = await rig.balance(caller)
    r = await caller.create_image({"generation_prompt": "nobody serves this"}, model=MODEL)
    assert r.status_code == 503
    assert r.json()["error"] == "bse_provider_unavailable"
    assert await rig.balance(caller) == pytest.approx(before)


async def test_restart_resumes_waiting_on_the_same_prediction(tmp_path: Path) -> None:
    """A job interrupted by a restart polls the prediction it started; it never pays twice."""
    import httpx

    from genplane.accounts import service as accounts
    from genplane.accounts.scopes import parse_scopes
    from genplane.api.app import create_app
    from genplane.credits.money import to_millis
    from tests.conftest import make_settings

    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    (catalog_dir / "test.yaml").write_text(CATALOG)
    network = FakeNetwork()
    replicate = FakeReplicate(queued_polls=10_000)
    replicate.install(network)
    settings = make_settings(
        tmp_path / "data",
        catalog_dir=catalog_dir,
        replicate_api_token=replicate.token,
        provider_poll_interval_seconds=0.01,
        fetch_allow_hosts=[REPLICATE_CDN],
    )

    async def started() -> tuple[Any, Any, httpx.AsyncClient]:
        app = create_app(settings, transport=network)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        return app, ctx, client

    app, ctx, client = await started()
    db = app.state.services.db
    account = await accounts.create_account(db, "A", credits_millis=to_millis("1"))
    key = (await accounts.create_key(db, settings, account.id, "k", parse_scopes("full_access", None))).key
    headers = {"Authorization": f"Bearer {key}"}
    r = await client.post(
        f"/v1/generate/image/{MODEL}", headers=headers, json={"generation_prompt": "resume me"}
    )
    gid = r.json()["data"]["generation_id"]
    for _ in range(300):
        async with db.read() as s:
            gen = await s.get(Generation, gid)
        if gen is not None and gen.provider_state:
            break
        await asyncio.sleep(0.02)
    assert gen is not None and gen.provider_state is not None
    prediction_id = gen.provider_state["prediction_id"]
    await client.aclose()
    await ctx.__aexit__(None, None, None)  # the process stops mid-job

    replicate.queued_polls = 0  # upstream finishes while we are down
    app, ctx, client = await started()
    try:
        for _ in range(300):
            record = (await client.get(f"/v1/content/{gid}", headers=headers)).json()["data"]
            if record["generation_status"] != "processing" and record["generation_status"] != "pending":
                break
            await asyncio.sleep(0.05)
        assert record["generation_status"] == "succeeded", record
        assert len(replicate.created) == 1  # resumed, not resubmitted
        assert list(replicate.predictions) == [prediction_id]
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)


async def test_outputs_are_stored_in_the_requested_format(rig_factory: Callable[..., Any]) -> None:
    """A binding that cannot ask for a format gets fal's default JPEG; the client still gets PNG."""
    rig = await rig_factory()
    caller = await rig.harness.caller(credits="1")
    r = await caller.create_image(
        {"generation_prompt": "a fox", "generation_output_format": "png"}, model="test/jpeg-only"
    )
    record = await caller.wait(r.json()["data"]["generation_id"])
    assert "output_format" not in orjson.loads(rig.network.requests_to("queue.fal.run")[0].body)
    assert record["generation_status"] == "succeeded"
    body = (await caller.client.get(record["generation_output_file"][0])).content
    assert body.startswith(b"\x89PNG")
    assert record["generation_output_file"][0].endswith(".png")


async def test_overall_deadline_stops_the_chain(rig_factory: Callable[..., Any]) -> None:
    """Each provider hangs within its own deadline, but the chain as a whole runs out first."""
    rig = await rig_factory(image_attempt_deadline_seconds=5, generation_deadline_seconds=0.6)
    rig.replicate.hang_submits = 1
    rig.fal.hang_submits = 1
    caller = await rig.harness.caller(credits="1")
    before = await rig.balance(caller)
    gid = await create(caller, generation_provider_order="replicate, fal")
    record = await caller.wait(gid, timeout=10)
    assert record["generation_status"] == "failed"
    assert record["generation_error_name"] == "bse_provider_timeout"
    assert [a[:2] for a in await rig.attempts(gid)] == [("replicate", "failed")]
    assert await rig.balance(caller) == pytest.approx(before)


async def test_restart_during_a_synchronous_call_submits_again_without_a_failure(tmp_path: Path) -> None:
    """A synchronous provider's answer died with the process that held it: the next process
    asks the same provider again; no failed attempt, no failover, one success."""
    import httpx

    from genplane.accounts import service as accounts
    from genplane.accounts.scopes import parse_scopes
    from genplane.api.app import create_app
    from genplane.credits.money import to_millis
    from tests.conftest import make_settings
    from tests.fakes.cloudflare import BASE_URL as CF_BASE_URL
    from tests.fakes.cloudflare import FakeCloudflare

    network = FakeNetwork()
    cloudflare = FakeCloudflare()
    cloudflare.mount(network)
    settings = make_settings(
        tmp_path / "data",
        cloudflare_api_token=cloudflare.token,
        cloudflare_account_id=cloudflare.account_id,
        cloudflare_base_url=CF_BASE_URL,
        lease_seconds=0.5,
    )

    async def started(**overrides: Any) -> tuple[Any, Any, httpx.AsyncClient]:
        app = create_app(settings.model_copy(update=overrides), transport=network)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        return app, ctx, client

    app, ctx, client = await started(run_worker=False)
    db = app.state.services.db
    account = await accounts.create_account(db, "A", credits_millis=to_millis("1"))
    key = (await accounts.create_key(db, settings, account.id, "k", parse_scopes("full_access", None))).key
    headers = {"Authorization": f"Bearer {key}"}
    r = await client.post(
        "/v1/generate/image/leonardo/lucid-origin", headers=headers, json={"generation_prompt": "resubmit me"}
    )
    assert r.status_code == 200, r.text
    gid = r.json()["data"]["generation_id"]
    # As a process that died inside the call leaves it: claimed, the prediction noted, lease lapsing.
    async with db.write() as s:
        await s.execute(
            update(Generation)
            .where(Generation.id == gid)
            .values(
                status="processing",
                claims=1,
                lease_owner="dead-process",
                lease_expires_at=utcnow(),
                started_at=utcnow(),
                provider_state={"provider": "cloudflare", "prediction_id": "held-by-the-dead-process"},
            )
        )
    await client.aclose()
    await ctx.__aexit__(None, None, None)

    app, ctx, client = await started()
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            record = (await client.get(f"/v1/content/{gid}", headers=headers)).json()["data"]
            if record["generation_status"] in ("succeeded", "failed", "canceled"):
                break
            assert asyncio.get_running_loop().time() < deadline, record
            await asyncio.sleep(0.05)
        assert record["generation_status"] == "succeeded", record
        assert len(cloudflare.calls) == 1
        async with app.state.services.db.read() as s:
            outcomes = (
                await s.scalars(select(ProviderAttempt.outcome).where(ProviderAttempt.generation_id == gid))
            ).all()
        assert list(outcomes) == ["used"]
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
