"""The worker's path from a provider's answer to ``succeeded``, made cheap without losing a guarantee.

- An output already in the requested format is stored byte for byte, never decoded: its
  header and framing are read instead (``mediatypes.image_size``); one cut short or with
  no image behind its magic still fails the attempt, and one in another format is
  re-encoded.
- A job is claimed and ended with one UPDATE each that returns what the event needs; the
  charge or refund happens once, in the ending transaction, on SQLite and PostgreSQL.
- A synchronous provider's prediction is not noted when the note could change nothing
  (the result is in hand and the provider is where a restart would begin anyway); any
  prediction that is waited for is noted before the wait goes on.
- The worker runs as many jobs at once as the in-flight caps admit, not 16.
"""

from __future__ import annotations

import asyncio
import io
import random
import struct
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import event, select, text

from genplane.accounts import service as accounts
from genplane.accounts.scopes import parse_scopes
from genplane.api.app import create_app
from genplane.credits.money import to_millis
from genplane.db.models import Account, Generation, LedgerEntry, WebhookDelivery, WebhookEvent
from genplane.generations import lifecycle
from genplane.jobs import media
from genplane.jobs.fetch import FileFetcher
from genplane.jobs.media import in_requested_format
from genplane.jobs.worker import concurrency
from genplane.mediatypes import image_size
from genplane.net.fetch import PinnedFetcher
from genplane.providers.base import ProviderError, ProviderJob, ProviderOutput, ProviderResult
from genplane.settings import Settings
from genplane.webhooks import outbox
from genplane.webhooks.endpoints import add_endpoint, set_enabled
from genplane.webhooks.outbox import emit

from .conftest import Harness, make_settings


def encoded(fmt: str, width: int = 40, height: int = 30, mode: str = "RGB", **options: Any) -> bytes:
    noise = random.Random(7).randbytes(width * height * len(mode))
    out = io.BytesIO()
    Image.frombytes(mode, (width, height), noise).save(out, fmt, **options)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG's framing (signature, IHDR, IEND) claiming ``width`` x ``height``, with no pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# -- an image's size and framing, without decoding ------------------------------------------------

FORMATS = [
    ("PNG", {}, "RGB"),
    ("PNG", {}, "RGBA"),
    ("PNG", {}, "L"),
    ("JPEG", {}, "RGB"),
    ("JPEG", {"progressive": True, "quality": 95}, "RGB"),
    ("JPEG", {}, "L"),
    ("WEBP", {}, "RGB"),
    ("WEBP", {"lossless": True}, "RGBA"),
    ("WEBP", {"exif": b"Exif\x00\x00MM"}, "RGBA"),  # the extended (VP8X) layout
]


@pytest.mark.parametrize(("fmt", "options", "mode"), FORMATS)
@pytest.mark.parametrize(("width", "height"), [(1, 1), (82, 82), (640, 17)])
def test_image_size_reads_whole_images_and_refuses_cut_ones(
    fmt: str, options: dict[str, Any], mode: str, width: int, height: int
) -> None:
    data = encoded(fmt, width, height, mode, **options)
    assert image_size(data) == (width, height)
    for end in (len(data) - 1, len(data) - 20, len(data) // 2, 40, 12):
        if 0 < end < len(data):
            assert image_size(data[:end]) is None, end


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n" + b"garbage" * 20,
        b"\xff\xd8\xff" + b"\x00" * 64,
        b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 40,
        b"GIF89a" + b"\x00" * 40,
        b"",
    ],
    ids=["png-garbage", "jpeg-garbage", "webp-garbage", "gif", "empty"],
)
def test_image_size_of_no_image_is_none(data: bytes) -> None:
    assert image_size(data) is None


# -- stored as sent, or re-encoded -----------------------------------------------------------------


async def as_requested(data: bytes, fmt: str) -> ProviderOutput:
    output = ProviderOutput(ext="png", content_type="image/png", data=data)
    return await in_requested_format(output, "image", fmt)


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
async def test_an_image_in_the_requested_format_is_stored_byte_identical_without_decoding(
    monkeypatch: pytest.MonkeyPatch, fmt: str, ext: str
) -> None:
    data = encoded(fmt, 64, 48)

    def no_decoding(*args: Any, **kw: Any) -> Any:
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(media.Image, "open", no_decoding)
    out = await in_requested_format(ProviderOutput(ext="bin", content_type="x/y", data=data), "image", ext)
    assert out.data == data and out.ext == ext
    assert out.content_type == {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[ext]


@pytest.mark.parametrize(("source", "target", "pil"), [("JPEG", "png", "PNG"), ("PNG", "jpg", "JPEG"),
                                                        ("PNG", "webp", "WEBP"), ("WEBP", "jpg", "JPEG")])
async def test_an_image_in_another_format_is_reencoded(source: str, target: str, pil: str) -> None:
    data = encoded(source, 64, 48, "RGBA" if source == "PNG" else "RGB")
    out = await as_requested(data, target)
    assert out.ext == target and out.data != data
    with Image.open(io.BytesIO(out.data)) as img:
        assert img.format == pil and img.size == (64, 48)


@pytest.mark.parametrize("target", ["png", "jpg"])
@pytest.mark.parametrize(
    "data",
    [encoded("PNG", 64, 48)[:-20], encoded("PNG", 64, 48)[:300], b"\x89PNG\r\n\x1a\n" + b"\x07" * 200],
    ids=["cut-late", "cut-early", "garbage"],
)
async def test_an_undecodable_image_fails_the_attempt_in_any_format(data: bytes, target: str) -> None:
    with pytest.raises(ProviderError) as info:
        await as_requested(data, target)
    assert info.value.error == "bse_provider_error" and info.value.retryable
    assert info.value.message == "The provider's png image could not be decoded."


async def test_an_image_whose_framing_is_odd_but_decodes_is_stored_as_sent() -> None:
    padded = encoded("PNG", 64, 48) + b"\x00" * 4096  # IEND no longer near the end; Pillow reads it
    assert image_size(padded) is None
    out = await as_requested(padded, "png")
    assert out.data == padded


async def test_an_image_over_the_pixel_limit_is_stored_as_sent_but_not_converted() -> None:
    huge = png_header_only(20_000, 20_000)
    kept = await as_requested(huge, "png")
    assert kept.data == huge
    with pytest.raises(ProviderError) as info:
        await as_requested(huge, "jpg")
    assert "20000x20000, too large to convert" in info.value.message


# -- downloaded outputs: framing checked, decoded only when it is not confirmed ---------------------


def file_server(body: bytes) -> FileFetcher:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"image/png")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    return FileFetcher(client, allow_hosts=["cdn.test"])


async def test_a_downloaded_output_is_not_decoded_when_its_framing_is_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import genplane.jobs.fetch as fetch

    def no_decoding(*args: Any) -> Any:
        raise AssertionError("the output was decoded")

    monkeypatch.setattr(fetch, "_inspect_image", no_decoding)
    data = encoded("WEBP", 120, 80)
    got = await file_server(data).fetch_output("http://cdn.test/out.webp", max_bytes=10_000_000, kind="image")
    assert (got.data, got.ext, got.width, got.height) == (data, "webp", 120, 80)


async def test_a_downloaded_output_cut_short_is_unusable() -> None:
    fetcher = file_server(encoded("PNG", 120, 80)[:-30])
    with pytest.raises(ProviderError) as info:
        await fetcher.fetch_output("http://cdn.test/out.png", max_bytes=10_000_000, kind="image")
    assert info.value.message.startswith("the provider's output is unusable: ") and info.value.retryable


async def test_a_downloaded_output_over_the_pixel_limit_is_refused_undecoded() -> None:
    fetcher = file_server(png_header_only(20_000, 20_000))
    with pytest.raises(ProviderError) as info:
        await fetcher.fetch_output("http://cdn.test/out.png", max_bytes=10_000_000, kind="image")
    assert "20000x20000, over 100 megapixels" in info.value.message


# -- the worker's transactions, on both databases ---------------------------------------------------


async def ledger_of(h: Harness, gid: str) -> dict[str, tuple[int, int]]:
    async with h.services.db.read() as s:
        rows = (await s.execute(select(LedgerEntry).where(LedgerEntry.generation_id == gid))).scalars().all()
    kinds = [r.kind for r in rows]
    assert len(kinds) == len(set(kinds)), kinds
    return {r.kind: (r.amount_millis, r.balance_after_millis) for r in rows}


async def balance(h: Harness, account_id: str) -> int:
    async with h.services.db.read() as s:
        return int(await s.scalar(select(Account.balance_millis).where(Account.id == account_id)) or 0)


async def all_events(h: Harness) -> list[WebhookEvent]:
    async with h.services.db.read() as s:
        return list((await s.execute(select(WebhookEvent))).scalars().all())


async def events_of(h: Harness, gid: str) -> dict[str, dict[str, Any]]:
    return {e.type: e.data for e in await all_events(h) if e.data.get("generation_id") == gid}


async def test_a_generation_is_charged_once_with_its_events_written(
    database: dict[str, Any], harness_factory: Callable[..., Any]
) -> None:
    h: Harness = await harness_factory(**database)
    caller = await h.caller(credits="1")
    svc = h.services
    guard = PinnedFetcher(svc.http, ["127.0.0.1"])
    endpoint = await add_endpoint(svc.db, svc.settings, guard, caller.account_id, "http://127.0.0.1:9/hook")
    r = await caller.create_image()
    gid = r.json()["data"]["generation_id"]
    record = await caller.wait(gid)
    assert record["generation_status"] == "succeeded"

    ledger = await ledger_of(h, gid)
    cost = ledger["reserve"][0]
    assert set(ledger) == {"reserve", "charge"}
    assert ledger["charge"] == (cost, await balance(h, caller.account_id)) == (cost, to_millis("1") - cost)

    events = await events_of(h, gid)
    assert set(events) == {"generation.started", "generation.completed"}
    assert events["generation.started"]["generation_status"] == "processing"
    done = events["generation.completed"]
    assert done["generation_status"] == "succeeded"
    assert done["generation_output_file"] == record["generation_output_file"]
    assert done["generation_provider_used"] == "local" and "credits_refunded" not in done
    async with svc.db.read() as s:
        deliveries = (await s.execute(select(WebhookDelivery))).scalars().all()
    assert {d.endpoint_id for d in deliveries} == {endpoint.endpoint.id}
    assert sorted(d.event_id for d in deliveries) == sorted(  # one per event, to the one endpoint
        e.id for e in await all_events(h) if e.data.get("generation_id") == gid
    )

    # Ending it again, either way, writes nothing: the first ending won.
    async with svc.db.write() as s:
        gen = await s.get(Generation, gid)
        assert gen is not None
        assert not await lifecycle.succeed(s, gen, gen.lease_owner or "x", "local", [], None)
        assert not await lifecycle.fail(s, gen, "bse_provider_error", "late", None)
    assert await ledger_of(h, gid) == ledger
    assert set(await events_of(h, gid)) == {"generation.started", "generation.completed"}


async def test_claim_succeed_and_fail_move_the_row_once_and_settle_once(
    database: dict[str, Any], harness_factory: Callable[..., Any]
) -> None:
    h: Harness = await harness_factory(run_worker=False, **database)
    caller = await h.caller(credits="1")
    db = h.services.db
    ids = [(await caller.create_image()).json()["data"]["generation_id"] for _ in range(2)]
    reserved = await balance(h, caller.account_id)

    async with db.write() as s:
        first = await lifecycle.claim(s, ids[0], "worker-a", 30)
    assert first is not None and first.claims == 1 and first.status == "processing"
    assert first.lease_owner == "worker-a" and first.started_at is not None and first.prompt == "a red fox"
    async with db.write() as s:
        assert await lifecycle.claim(s, ids[0], "worker-b", 30) is None  # the lease is live
    async with db.write() as s:
        assert not await lifecycle.succeed(s, first, "worker-b", "local", [], 0.1)  # not its lease
        assert await lifecycle.succeed(s, first, "worker-a", "local", [{"url": "u", "key": "k"}], 0.1)
    async with db.read() as s:
        row = await s.get(Generation, ids[0])
    assert row is not None and row.status == "succeeded" and row.credits_settled
    assert row.output_files == [{"url": "u", "key": "k"}] and row.lease_owner is None
    assert row.metrics_predict_time == 0.1 and row.metrics_total_time is not None

    async with db.write() as s:
        second = await lifecycle.claim(s, ids[1], "worker-a", 30)
    assert second is not None
    async with db.write() as s:
        assert await lifecycle.fail(s, second, "bse_provider_error", "it broke", None)
    async with db.write() as s:
        assert not await lifecycle.fail(s, second, "bse_provider_error", "again", None)
    cost = (await ledger_of(h, ids[1]))["reserve"][0]
    assert await ledger_of(h, ids[1]) == {"reserve": (cost, reserved), "refund": (cost, reserved + cost)}
    async with db.read() as s:
        # No provider errors is SQL NULL, as it always was, not a JSON null.
        nulls = await s.scalar(
            text("SELECT count(*) FROM generations WHERE id = :id AND provider_errors IS NULL"),
            {"id": ids[1]},
        )
        row = await s.get(Generation, ids[1])
    assert nulls == 1 and row is not None
    assert (row.error, row.error_code) == ("it broke", "bse_provider_error")


async def test_outbox_builds_an_event_only_for_endpoints_that_want_it(
    database: dict[str, Any], harness_factory: Callable[..., Any]
) -> None:
    h: Harness = await harness_factory(run_worker=False, **database)
    caller = await h.caller()
    svc = h.services
    built: list[str] = []

    def data() -> dict[str, Any]:
        built.append("built")
        return {"x": 1}

    async with svc.db.write() as s:
        assert await emit(s, caller.account_id, "generation.completed", data) is None
    assert built == []  # nobody listens: nothing built, nothing written

    guard = PinnedFetcher(svc.http, ["127.0.0.1"])
    only_failed = await add_endpoint(
        svc.db, svc.settings, guard, caller.account_id, "http://127.0.0.1:9/a", ["generation.failed"]
    )
    everything = await add_endpoint(svc.db, svc.settings, guard, caller.account_id, "http://127.0.0.1:9/b")
    await set_enabled(svc.db, everything.endpoint.id, False)
    async with svc.db.write() as s:
        event_id = await emit(s, caller.account_id, "generation.completed", data)
    assert event_id is not None and built == ["built"]
    async with svc.db.read() as s:
        event = await s.get(WebhookEvent, event_id)
        deliveries = (
            await s.execute(select(WebhookDelivery).where(WebhookDelivery.event_id == event_id))
        ).scalars().all()
    assert event is not None and event.data == {"x": 1} and event.type == "generation.completed"
    # The disabled endpoint's delivery goes straight to the dead letters; the other is not subscribed.
    assert [(d.endpoint_id, d.status, d.last_error) for d in deliveries] == [
        (everything.endpoint.id, "dead", "the endpoint is disabled")
    ]
    async with svc.db.write() as s:  # one endpoint named: whatever it subscribes to
        one = await emit(s, caller.account_id, "webhook.test", {"y": 2}, endpoint_id=only_failed.endpoint.id)
    async with svc.db.read() as s:
        query = select(WebhookDelivery).where(WebhookDelivery.event_id == one)
        targeted = (await s.execute(query)).scalars().all()
    assert [(d.endpoint_id, d.status) for d in targeted] == [(only_failed.endpoint.id, "pending")]


async def test_an_account_without_endpoints_costs_its_events_no_lookup(
    database: dict[str, Any], harness_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    h: Harness = await harness_factory(run_worker=False, **database)
    listening, quiet = await h.caller(), await h.caller()
    svc = h.services
    guard = PinnedFetcher(svc.http, ["127.0.0.1"])
    await add_endpoint(svc.db, svc.settings, guard, listening.account_id, "http://127.0.0.1:9/hook")
    gids = {}
    for caller in (listening, quiet):
        gids[caller.account_id] = (await caller.create_image()).json()["data"]["generation_id"]
    looked_up: list[str] = []
    real = outbox.subscribers

    async def counted(s: Any, account_id: str, event_type: str, **kw: Any) -> Any:
        looked_up.append(account_id)
        return await real(s, account_id, event_type, **kw)

    monkeypatch.setattr(outbox, "subscribers", counted)
    for gid in gids.values():
        async with svc.db.write() as s:
            gen = await lifecycle.claim(s, gid, "worker-a", 30)
            assert gen is not None
            assert await lifecycle.succeed(s, gen, "worker-a", "local", [], None)
    # Only the account with an endpoint was looked up (for both of its events), and got them.
    assert looked_up == [listening.account_id, listening.account_id]
    events = await events_of(h, gids[listening.account_id])
    assert set(events) == {"generation.started", "generation.completed"}
    assert await events_of(h, gids[quiet.account_id]) == {}


# -- noting predictions ---------------------------------------------------------------------------

CATALOG = """
models:
  - model_identifier: test/image
    model_type: image
    model_pricing: 0.01
    schema:
      generation_ratio: ["1:1"]
      generation_output_format: [png, jpg]
      generation_output_number: 1
    providers:
      openai: {model_id: one}
      google: {model_id: two}
"""


class FakeAdapter:
    """A provider whose ``wait`` answers at once (a synchronous provider's held result) or after
    a pause (a job polled upstream); ``fail`` makes its submit refuse, retryably."""

    def __init__(self, provider_id: str, *, waits: bool = False, fail: bool = False) -> None:
        self.provider_id = provider_id
        self.waits = waits
        self.fail = fail
        self.states_seen: list[Any] = []
        self.db: Any = None

    def configured(self) -> bool:
        return True

    async def submit(self, job: ProviderJob) -> str:
        if self.fail:
            raise ProviderError("bse_provider_error", f"{self.provider_id} is down", retryable=True)
        return f"{self.provider_id}-prediction"

    async def wait(self, job: ProviderJob, prediction_id: str) -> ProviderResult:
        if self.waits:
            for _ in range(100):  # the row is what a restart or a cancel reads while we wait
                async with self.db.read() as s:
                    gen = await s.get(Generation, job.generation_id, populate_existing=True)
                if gen.provider_state:
                    break
                await asyncio.sleep(0.01)
            self.states_seen.append(gen.provider_state)
        data = encoded("PNG", 32, 32)
        return ProviderResult([ProviderOutput(ext="png", content_type="image/png", data=data)], 0.01)

    async def cancel(self, prediction_id: str) -> bool:
        return False


async def run_one(tmp_path: Path, adapters: list[FakeAdapter], order: str) -> Generation:
    catalog = tmp_path / "catalog"
    catalog.mkdir(exist_ok=True)
    (catalog / "test.yaml").write_text(CATALOG)
    settings = make_settings(tmp_path / f"data-{uuid.uuid4().hex[:6]}", catalog_dir=catalog)
    app = create_app(settings, providers={a.provider_id: a for a in adapters})
    ctx = app.router.lifespan_context(app)
    await ctx.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    try:
        db = app.state.services.db
        for a in adapters:
            a.db = db
        account = await accounts.create_account(db, "A", credits_millis=to_millis("1"))
        issued = await accounts.create_key(db, settings, account.id, "k", parse_scopes("full_access", None))
        key = issued.key
        r = await client.post(
            "/v1/generate/image/test/image",
            headers={"Authorization": f"Bearer {key}"},
            json={"generation_prompt": "note me", "generation_provider_order": order},
        )
        assert r.status_code == 200, r.text
        gid = r.json()["data"]["generation_id"]
        for _ in range(500):
            async with db.read() as s:
                gen = await s.get(Generation, gid, populate_existing=True)
            assert gen is not None
            if gen.status not in ("pending", "processing"):
                return gen
            await asyncio.sleep(0.02)
        raise AssertionError(f"still {gen.status}")
    finally:
        await client.aclose()
        await ctx.__aexit__(None, None, None)


async def test_a_result_in_hand_from_the_first_provider_is_not_noted(tmp_path: Path) -> None:
    gen = await run_one(tmp_path, [FakeAdapter("openai"), FakeAdapter("google")], "openai,google")
    assert gen.status == "succeeded" and gen.provider_used == "openai"
    assert gen.provider_state is None  # nothing a restart or a cancel could use was worth a transaction


async def test_a_prediction_that_is_waited_for_is_noted_before_the_wait_goes_on(tmp_path: Path) -> None:
    polled = FakeAdapter("openai", waits=True)
    gen = await run_one(tmp_path, [polled, FakeAdapter("google")], "openai,google")
    assert gen.status == "succeeded"
    assert polled.states_seen == [{"provider": "openai", "prediction_id": "openai-prediction"}]
    assert gen.provider_state == {"provider": "openai", "prediction_id": "openai-prediction"}


async def test_a_later_provider_is_noted_so_a_restart_starts_there(tmp_path: Path) -> None:
    gen = await run_one(tmp_path, [FakeAdapter("openai", fail=True), FakeAdapter("google")], "openai,google")
    assert gen.status == "succeeded" and gen.provider_used == "google"
    assert gen.provider_state == {"provider": "google", "prediction_id": "google-prediction"}


# -- how many jobs run at once ---------------------------------------------------------------------


def test_concurrency_follows_the_in_flight_caps(tmp_path: Path) -> None:
    def settings(**values: Any) -> Settings:
        return Settings(data_dir=tmp_path, **values)

    assert concurrency(settings()) == 512  # the floor, over the default cap of 50
    assert concurrency(settings(max_inflight_generations_by_plan={"pro": 2000, "*": 10})) == 2000
    assert concurrency(settings(max_inflight_generations=100_000_000)) == 16384
    assert concurrency(settings(worker_concurrency=3, max_inflight_generations=5000)) == 3
    assert settings().worker_concurrency is None


async def test_the_worker_runs_every_admitted_job_at_once(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(
        run_worker=False, local_provider_delay_seconds=0.5, max_inflight_generations=40
    )
    caller = await h.caller(credits="10")
    ids = [(await caller.create_image()).json()["data"]["generation_id"] for _ in range(40)]
    worker, most = h.services.worker, 0
    await worker.start()  # its first sweep finds every pending job
    try:
        for _ in range(200):
            most = max(most, worker.in_flight)
            if most == 40:
                break
            await asyncio.sleep(0.005)
        assert most == 40  # with the old default of 16, 24 of them would have waited
        for gid in ids:
            assert (await caller.wait(gid))["generation_status"] == "succeeded"
        assert worker.in_flight == 0
    finally:
        await worker.stop()


async def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


async def test_one_heartbeat_renews_every_lease_and_stops_jobs_ended_elsewhere(
    database: dict[str, Any], harness_factory: Callable[..., Any]
) -> None:
    """The worker's heartbeat is one UPDATE for all its jobs; a job canceled by another process
    (its row ended, this process's worker not told) is stopped at the next beat, unpaid."""
    h: Harness = await harness_factory(local_provider_delay_seconds=60, lease_seconds=600, **database)
    caller = await h.caller(credits="1")
    worker = h.services.worker
    ids = [(await caller.create_image()).json()["data"]["generation_id"] for _ in range(3)]
    await eventually(lambda: set(ids) <= worker._leased)
    async with h.services.db.read() as s:
        before = dict((await s.execute(select(Generation.id, Generation.lease_expires_at))).all())

    statements: list[str] = []

    def seen(_c: Any, _cur: Any, sql: str, *_: Any) -> None:
        statements.append(sql)

    engine = h.services.db.lease_engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        await worker.heartbeat()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    updates = [sql for sql in statements if sql.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 1 and "lease_owner" in updates[0]  # one statement for the three jobs
    async with h.services.db.read() as s:
        after = dict((await s.execute(select(Generation.id, Generation.lease_expires_at))).all())
    assert all(after[gid] > before[gid] for gid in ids)

    # Another process cancels the first job: only the row changes, this worker hears nothing.
    async with h.services.db.write() as s:
        await lifecycle.cancel(s, caller.account_id, ids[0])
    job = worker._running[ids[0]]
    await worker.heartbeat()
    await eventually(job.done)
    assert job.cancelled() and ids[0] not in worker._running
    assert set(ids[1:]) <= worker._leased  # the others run on
    assert all(not worker._running[gid].done() for gid in ids[1:])
    record = await caller.wait(ids[0])
    assert record["generation_status"] == "canceled"
    assert set(await ledger_of(h, ids[0])) == {"reserve", "refund"}


async def test_leases_are_renewed_while_jobs_hold_every_pooled_connection(
    database_url: str, harness_factory: Callable[..., Any]
) -> None:
    """On PostgreSQL the heartbeat has a connection of its own: queued behind a busy pool for
    longer than the lease, it would let leases lapse and another worker run the jobs again."""
    h: Harness = await harness_factory(
        database_url=database_url, database_pool_size=2, local_provider_delay_seconds=60,
        lease_seconds=600,
    )
    caller = await h.caller(credits="1")
    worker = h.services.worker
    gid = (await caller.create_image()).json()["data"]["generation_id"]
    await eventually(lambda: gid in worker._leased)
    db = h.services.db
    async with db.read() as s:
        before = await s.scalar(select(Generation.lease_expires_at).where(Generation.id == gid))
    held = [await db.write_engine.connect() for _ in range(2)]  # the whole shared pool
    try:
        await asyncio.wait_for(worker.heartbeat(), 10)
    except TimeoutError:
        raise AssertionError("the heartbeat waited for the shared pool") from None
    finally:
        for conn in held:
            await conn.close()
    async with db.read() as s:
        after = await s.scalar(select(Generation.lease_expires_at).where(Generation.id == gid))
    assert before is not None and after is not None and after > before
    assert gid in worker._leased


async def test_a_burst_of_queued_jobs_is_claimed_a_few_at_a_time(
    database_url: str, harness_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of queued jobs claimed all at once would all wait for a pooled connection
    together, the claimed ones' leases running; claims go half a pool at a time instead."""
    h: Harness = await harness_factory(database_url=database_url, database_pool_size=4, run_worker=False)
    caller = await h.caller(credits="1")
    ids = [(await caller.create_image()).json()["data"]["generation_id"] for _ in range(12)]
    inside, most = 0, 0
    claim = lifecycle.claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        try:
            return await claim(*args, **kwargs)
        finally:
            inside -= 1

    monkeypatch.setattr(lifecycle, "claim", counted)
    worker = h.services.worker
    await worker.start()
    try:
        for gid in ids:
            worker.enqueue(gid)
        records = [await caller.wait(gid) for gid in ids]
    finally:
        await worker.stop()
    assert {r["generation_status"] for r in records} == {"succeeded"}
    assert 1 <= most <= 2


async def test_an_api_only_process_queues_nothing(harness_factory: Callable[..., Any]) -> None:
    """With run_worker=false nobody consumes this process's queue: a hint kept there per
    create would only grow. The rows stay pending for the workers that sweep them."""
    h: Harness = await harness_factory(run_worker=False)
    caller = await h.caller()
    for _ in range(5):
        assert (await caller.create_image()).status_code == 200
    worker = h.services.worker
    assert worker._queue.qsize() == 0 and not worker._queued
    async with h.services.db.read() as s:
        statuses = (await s.scalars(select(Generation.status))).all()
    assert list(statuses) == ["pending"] * 5
