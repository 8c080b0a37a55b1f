"""The generation lifecycle over HTTP: create, poll, outputs, validation, isolation, list,
cancel, delete and the credits each step moves, against the real app and worker."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import av
import httpx
import orjson
from PIL import Image
from sqlalchemy import select

from genplane.credits.ledger import add_credits, balance_millis
from genplane.db.models import LedgerEntry

from .conftest import Caller, Harness

IMAGE = "/v1/generate/image/local/preview-image"
VIDEO = "/v1/generate/video/local/preview-video"
ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
TERMINAL = ("succeeded", "failed", "canceled")
IMAGE_PRICE_MILLIS = 2  # local/preview-image: 0.002 credits per output
PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}
RECORD_FIELDS = {
    "account_id",
    "generation_id",
    "model_identifier",
    "generation_status",
    "generation_provider_order",
    "generation_provider_used",
    "generation_prediction_id",
    "generation_prompt",
    "generation_ratio",
    "generation_output_format",
    "generation_output_number",
    "generation_input_file",
    "generation_output_file",
    "generation_created_at",
    "generation_started_at",
    "generation_completed_at",
    "generation_metrics_total_time",
    "generation_metrics_predict_time",
}
VIDEO_FIELDS = {"generation_duration", "generation_resolution", "generation_generate_audio"}


# -- helpers ---------------------------------------------------------------------------------


def ts(value: str) -> datetime:
    assert ISO_MS_Z.match(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def assert_success_envelope(r: httpx.Response, message: str | None = None) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "success"
    assert body["request_id"].startswith("req_")
    assert r.headers["X-Request-Id"] == body["request_id"]
    assert ISO_MS_Z.match(body["timestamp"]), body["timestamp"]
    if message is not None:
        assert body["message"] == message
    return body


def assert_error(r: httpx.Response, status: int, name: str, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "error"
    assert body["error"] == name, body
    assert body["code"].startswith("BSE")
    assert isinstance(body["retryable"], bool)
    assert isinstance(body["message"], str) and body["message"]
    assert r.headers["X-Request-Id"] == body["request_id"]
    if field is not None:
        assert body.get("details", {}).get("field") == field, body
    return body


async def api_balance(caller: Caller) -> float:
    r = await caller.get("/v1/user/billing")
    assert r.status_code == 200, r.text
    value: float = r.json()["data"]["billing_credit_balance"]
    return value


async def list_total(caller: Caller) -> int:
    r = await caller.get("/v1/content/list")
    assert r.status_code == 200, r.text
    total: int = r.json()["total"]
    assert total == len(r.json()["data"]["generations"])
    return total


async def ledger(harness: Harness, generation_id: str) -> list[tuple[str, int, int]]:
    async with harness.services.db.read() as s:
        rows = await s.scalars(
            select(LedgerEntry).where(LedgerEntry.generation_id == generation_id).order_by(LedgerEntry.id)
        )
        return [(e.kind, e.amount_millis, e.balance_after_millis) for e in rows.all()]


async def provider_usage(caller: Caller) -> dict[str, Any]:
    """The caller's /v1/usage row for the local provider (counted live from provider attempts)."""
    r = await caller.get("/v1/usage", params={"days": 1})
    assert r.status_code == 200, r.text
    rows = {p["provider"]: p for p in r.json()["data"]["usage_providers"]}
    row: dict[str, Any] = rows.get("local", {"total_submissions": 0, "used_count": 0, "cancelled_count": 0})
    return row


async def settle_worker(caller: Caller) -> None:
    """A later job of the same account finishing shows the worker has been through its queue and
    sweeps: whatever it would have done to earlier jobs, it has done."""
    gid = await create_ok(caller, {"generation_prompt": "marker"})
    assert (await caller.wait(gid))["generation_status"] in TERMINAL


async def create_ok(caller: Caller, body: dict[str, Any] | None = None, path: str = IMAGE) -> str:
    r = await caller.post(path, json=body or {"generation_prompt": "a red fox"})
    assert r.status_code == 200, r.text
    gid: str = r.json()["data"]["generation_id"]
    return gid


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_status(caller: Caller, gid: str, status: str, timeout: float = 10.0) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        r = await caller.get(f"/v1/content/{gid}")
        assert r.status_code == 200, r.text
        record: dict[str, Any] = r.json()["data"]
        if record["generation_status"] == status:
            return record
        assert record["generation_status"] not in TERMINAL, f"became {record['generation_status']}"
        return None

    result: dict[str, Any] = await wait_for(check, f"{gid} to be {status}", timeout)
    return result


async def fetch(caller: Caller, url: str) -> httpx.Response:
    return await caller.client.get(url)


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


# -- create and poll: image ------------------------------------------------------------------


async def test_create_image_envelope_and_lifecycle_to_succeeded(harness_factory: Any) -> None:
    # No worker at first: the record is observably pending; then a slow provider keeps it processing.
    h: Harness = await harness_factory(run_worker=False, local_provider_delay_seconds=0.4)
    caller = await h.caller()
    before = time.time()
    r = await caller.create_image(
        {
            "generation_prompt": "a lighthouse at dusk",
            "generation_ratio": "16:9",
            "generation_output_format": "jpg",
            "generation_output_number": 3,
            "generation_seed": 7,
            "generation_negative_prompt": "fog",
        }
    )
    body = assert_success_envelope(r, "Generation initialized")
    assert abs(ts(body["timestamp"]).timestamp() - before) < 5
    data = body["data"]
    assert set(data) == {
        "model_identifier",
        "generation_provider_order",
        "generation_prediction_id",
        "generation_id",
        "generation_initialized",
    }
    assert data["model_identifier"] == "local/preview-image"
    assert data["generation_provider_order"] == ["local"]
    assert data["generation_initialized"] is True
    assert isinstance(data["generation_prediction_id"], str) and data["generation_prediction_id"]
    gid = data["generation_id"]
    assert isinstance(gid, str) and len(gid) >= 16

    r = await caller.get(f"/v1/content/{gid}")
    pending = assert_success_envelope(r)["data"]
    assert pending["generation_status"] == "pending"
    assert pending["generation_started_at"] is None
    assert pending["generation_completed_at"] is None
    assert pending["generation_provider_used"] is None
    assert pending["generation_output_file"] is None

    worker = h.services.worker
    await worker.start()
    try:
        seen = ["pending"]
        deadline = time.monotonic() + 15
        record: dict[str, Any] = pending
        while record["generation_status"] not in TERMINAL:
            assert time.monotonic() < deadline, f"still {record['generation_status']}"
            await asyncio.sleep(0.02)
            record = (await caller.get(f"/v1/content/{gid}")).json()["data"]
            if record["generation_status"] != seen[-1]:
                seen.append(record["generation_status"])
            if record["generation_status"] == "processing":
                assert record["generation_started_at"] is not None
                assert record["generation_completed_at"] is None
                assert record["generation_output_file"] is None
                assert record["generation_provider_used"] is None
    finally:
        await worker.stop()
    assert seen == ["pending", "processing", "succeeded"]

    assert RECORD_FIELDS <= set(record)
    assert not VIDEO_FIELDS & set(record)
    assert "generation_error" not in record and "generation_error_code" not in record
    assert record["account_id"] == caller.account_id
    assert record["generation_id"] == gid
    assert record["model_identifier"] == "local/preview-image"
    assert record["generation_provider_order"] == ["local"]
    assert record["generation_provider_used"] == "local"
    assert record["generation_prediction_id"] == data["generation_prediction_id"]
    assert record["generation_prompt"] == "a lighthouse at dusk"
    assert record["generation_ratio"] == "16:9"
    assert record["generation_output_format"] == "jpg"
    assert record["generation_output_number"] == 3
    assert record["generation_input_file"] is None
    assert record["generation_seed"] == 7
    assert record["generation_negative_prompt"] == "fog"
    created = ts(record["generation_created_at"])
    started = ts(record["generation_started_at"])
    completed = ts(record["generation_completed_at"])
    assert created <= started <= completed
    # The provider slept 0.4 s inside the job, so the times cover at least that.
    assert (completed - started).total_seconds() >= 0.35
    total, predict = record["generation_metrics_total_time"], record["generation_metrics_predict_time"]
    assert isinstance(total, float | int) and isinstance(predict, float | int)
    assert 0 <= predict <= total
    assert total >= 0.35
    assert abs(total - (completed - created).total_seconds()) < 0.5

    urls = record["generation_output_file"]
    assert isinstance(urls, list) and len(urls) == 3
    assert len(set(urls)) == 3
    for url in urls:
        resp = await fetch(caller, url)
        assert resp.status_code == 200, url
        assert resp.headers["content-type"] == "image/jpeg"
        img = Image.open(io.BytesIO(resp.content))
        assert img.format == "JPEG"
        img.load()
        width, height = img.size
        assert abs(width / height - 16 / 9) / (16 / 9) < 0.03, img.size


IMAGE_VARIANTS = [("1:1", "png"), ("9:16", "webp"), ("21:9", "png"), ("3:4", "jpg"), ("3:2", "webp")]


async def test_image_outputs_decode_as_requested_format_and_ratio(caller: Caller) -> None:
    gids = {
        variant: await create_ok(
            caller,
            {
                "generation_prompt": "a cat",
                "generation_ratio": variant[0],
                "generation_output_format": variant[1],
            },
        )
        for variant in IMAGE_VARIANTS
    }

    def case(ratio: str, fmt: str) -> Callable[[], Awaitable[None]]:
        return lambda: _check_image_output(caller, gids[(ratio, fmt)], ratio, fmt)

    await check_each([(f"{r} {f}", case(r, f)) for r, f in IMAGE_VARIANTS])


async def _check_image_output(caller: Caller, gid: str, ratio: str, fmt: str) -> None:
    record = await caller.wait(gid)
    assert record["generation_status"] == "succeeded", record
    assert record["generation_ratio"] == ratio
    assert record["generation_output_format"] == fmt
    (url,) = record["generation_output_file"]
    assert urlsplit(url).path.endswith(f".{fmt}")
    resp = await fetch(caller, url)
    assert resp.status_code == 200
    img = Image.open(io.BytesIO(resp.content))
    assert img.format == PIL_FORMATS[fmt]
    img.load()
    rw, rh = (int(x) for x in ratio.split(":"))
    assert abs(img.size[0] / img.size[1] - rw / rh) / (rw / rh) < 0.03, img.size


async def test_image_defaults_when_only_prompt_is_sent(caller: Caller) -> None:
    gid = await create_ok(caller, {"generation_prompt": "defaults"})
    record = await caller.wait(gid)
    assert record["generation_status"] == "succeeded"
    assert record["generation_ratio"] == "1:1"
    assert record["generation_output_format"] == "png"
    assert record["generation_output_number"] == 1
    assert len(record["generation_output_file"]) == 1
    assert "generation_seed" not in record  # model-specific fields appear only when sent


async def test_output_urls_are_unguessable(harness: Harness, caller: Caller) -> None:
    gids = [
        await create_ok(caller, {"generation_prompt": "p", "generation_output_number": 2}) for _ in range(2)
    ]
    records = [await caller.wait(g) for g in gids]
    urls = [u for rec in records for u in rec["generation_output_file"]]
    assert len(urls) == 4 and len(set(urls)) == 4
    tokens = set()
    for rec in records:
        for url in rec["generation_output_file"]:
            parts = urlsplit(url)
            assert url.startswith("http://testserver/")
            segments = parts.path.strip("/").split("/")
            random_parts = [
                s for s in segments if s != rec["generation_id"] and re.fullmatch(r"[A-Za-z0-9_-]{22,}", s)
            ]
            assert random_parts, f"no long random component in {url}"
            tokens.update(random_parts)
    assert len(tokens) == 4  # every file has its own secret
    # Knowing the generation id and the output index is not enough.
    for rec in records:
        gid = rec["generation_id"]
        for guess in (f"/files/{gid}/0.png", f"/files/{gid}/1.png", f"/files/{gid}"):
            assert (await fetch(caller, guess)).status_code == 404
    # Tampering with the random part fails too.
    url = records[0]["generation_output_file"][0]
    parts = urlsplit(url).path.split("/")
    parts[-2] = parts[-2][:-1] + ("A" if parts[-2][-1] != "A" else "B")
    assert (await fetch(caller, "/".join(parts))).status_code == 404


# -- create and poll: video ------------------------------------------------------------------


def _probe_mp4(data: bytes) -> tuple[float, tuple[int, int], bool]:
    with av.open(io.BytesIO(data), mode="r") as container:
        assert container.format is not None and "mp4" in container.format.name
        assert container.duration is not None
        duration = container.duration / av.time_base
        video = container.streams.video[0]
        size = (video.codec_context.width, video.codec_context.height)
        has_audio = len(container.streams.audio) > 0
        frames = sum(1 for _ in container.decode(video=0))
        assert frames > 0
    return duration, size, has_audio


VIDEO_VARIANTS: list[tuple[int, str | None, bool, str, int]] = [
    # duration, resolution (None: the default), audio, ratio, milli-credits per second
    (2, "720p", True, "16:9", 3),
    (1, "720p", False, "9:16", 2),
    (3, None, False, "1:1", 1),
    (1, "480p", True, "9:16", 2),
]


async def test_create_video_succeeds_with_playable_mp4(harness: Harness) -> None:
    def case(variant: tuple[int, str | None, bool, str, int]) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            caller = await harness.caller(credits="1")
            await _check_video(harness, caller, *variant)

        return run

    await check_each([(str(v), case(v)) for v in VIDEO_VARIANTS])


async def _check_video(
    harness: Harness,
    caller: Caller,
    duration: int,
    resolution: str | None,
    audio: bool,
    ratio: str,
    price_per_second: int,
) -> None:
    body: dict[str, Any] = {
        "generation_prompt": "waves on a beach",
        "generation_duration": duration,
        "generation_ratio": ratio,
        "generation_generate_audio": audio,
    }
    if resolution is not None:
        body["generation_resolution"] = resolution
    start_millis = await balance_millis(harness.services.db, caller.account_id)
    r = await caller.post(VIDEO, json=body)
    data = assert_success_envelope(r, "Generation initialized")["data"]
    assert data["model_identifier"] == "local/preview-video"
    assert data["generation_initialized"] is True
    record = await caller.wait(data["generation_id"], timeout=30)
    assert record["generation_status"] == "succeeded", record
    assert RECORD_FIELDS | VIDEO_FIELDS <= set(record)
    expected_resolution = resolution or "480p"
    assert record["generation_duration"] == duration
    assert record["generation_resolution"] == expected_resolution
    assert record["generation_generate_audio"] is audio
    assert record["generation_output_format"] == "mp4"
    assert record["generation_output_number"] == 1
    assert record["generation_provider_used"] == "local"
    (url,) = record["generation_output_file"]
    resp = await fetch(caller, url)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "video/mp4"
    seconds, (width, height), has_audio = _probe_mp4(resp.content)
    assert abs(seconds - duration) < 0.25, seconds
    assert has_audio is audio
    rw, rh = (int(x) for x in ratio.split(":"))
    assert min(width, height) == int(expected_resolution[:-1])
    assert abs(width / height - rw / rh) / (rw / rh) < 0.01
    cost = price_per_second * duration  # milli-credits
    assert await ledger(harness, record["generation_id"]) == [
        ("reserve", cost, start_millis - cost),
        ("charge", cost, start_millis - cost),
    ]
    assert await balance_millis(harness.services.db, caller.account_id) == start_millis - cost


async def test_video_cost_is_price_times_seconds(harness: Harness) -> None:
    for duration, millis in [(2, 3), (4, 6)]:
        caller = await harness.caller(credits="1")
        r = await caller.post(
            VIDEO,
            json={
                "generation_prompt": "x",
                "generation_duration": duration,
                "generation_resolution": "480p",
                "generation_generate_audio": True,
            },
        )
        assert r.status_code == 200, r.text
        entries = await ledger(harness, r.json()["data"]["generation_id"])
        assert entries[0] == ("reserve", millis, 1000 - millis), duration


# -- validation: nothing is created, nothing is charged -------------------------------------


def _raw(body: Any) -> bytes:
    return orjson.dumps(body)


P = {"generation_prompt": "ok"}
V = {"generation_prompt": "ok", "generation_duration": 2}

# fmt: off
INVALID_CASES: list[tuple[str, str, bytes, int, str, str | None]] = [
    # (id, path, raw body, status, error, details.field)
    ("not_json", IMAGE, b"{not json", 400, "bse_invalid_input", "body"),
    ("empty_body", IMAGE, b"", 400, "bse_invalid_input", "body"),
    ("json_array", IMAGE, b'[{"generation_prompt": "x"}]', 400, "bse_invalid_input", "body"),
    ("json_string", IMAGE, b'"generation_prompt"', 400, "bse_invalid_input", "body"),
    ("json_null", IMAGE, b"null", 400, "bse_invalid_input", "body"),
    ("missing_prompt", IMAGE, _raw({"generation_ratio": "1:1"}), 400, "bse_invalid_input",
     "generation_prompt"),
    ("empty_prompt", IMAGE, _raw({"generation_prompt": ""}), 400, "bse_invalid_input", "generation_prompt"),
    ("prompt_5001", IMAGE, _raw({"generation_prompt": "x" * 5001}), 400, "bse_invalid_input",
     "generation_prompt"),
    ("prompt_number", IMAGE, _raw({"generation_prompt": 5}), 400, "bse_invalid_input", "generation_prompt"),
    ("ratio_number", IMAGE, _raw({**P, "generation_ratio": 1.5}), 400, "bse_invalid_input",
     "generation_ratio"),
    ("output_number_string", IMAGE, _raw({**P, "generation_output_number": "2"}), 400, "bse_invalid_input",
     "generation_output_number"),
    ("output_number_bool", IMAGE, _raw({**P, "generation_output_number": True}), 400, "bse_invalid_input",
     "generation_output_number"),
    ("output_number_float", IMAGE, _raw({**P, "generation_output_number": 2.5}), 400, "bse_invalid_input",
     "generation_output_number"),
    ("output_number_zero", IMAGE, _raw({**P, "generation_output_number": 0}), 400, "bse_invalid_input",
     "generation_output_number"),
    ("seed_bool", IMAGE, _raw({**P, "generation_seed": False}), 400, "bse_invalid_input", "generation_seed"),
    ("format_list", IMAGE, _raw({**P, "generation_output_format": ["png"]}), 400, "bse_invalid_input",
     "generation_output_format"),
    ("duration_string", VIDEO, _raw({**V, "generation_duration": "2"}), 400, "bse_invalid_input",
     "generation_duration"),
    ("audio_string", VIDEO, _raw({**V, "generation_generate_audio": "yes"}), 400, "bse_invalid_input",
     "generation_generate_audio"),
    ("unknown_field", IMAGE, _raw({**P, "generation_style": "noir"}), 422, "bse_unsupported_parameter",
     "generation_style"),
    ("field_of_other_model", IMAGE, _raw({**P, "generation_guidance_scale": 3.5}), 422,
     "bse_unsupported_parameter", "generation_guidance_scale"),
    ("video_field_on_image", IMAGE, _raw({**P, "generation_resolution": "480p"}), 422,
     "bse_unsupported_parameter", "generation_resolution"),
    ("input_file_not_accepted", IMAGE, _raw({**P, "generation_input_file": ["https://example.com/a.png"]}),
     422, "bse_unsupported_parameter", "generation_input_file"),
    ("negative_prompt_on_video", VIDEO, _raw({**V, "generation_negative_prompt": "x"}), 422,
     "bse_unsupported_parameter", "generation_negative_prompt"),
    ("ratio_not_listed", IMAGE, _raw({**P, "generation_ratio": "5:4"}), 422, "bse_parameter_out_of_range",
     "generation_ratio"),
    ("format_not_listed", IMAGE, _raw({**P, "generation_output_format": "gif"}), 422,
     "bse_parameter_out_of_range", "generation_output_format"),
    ("mp4_for_image", IMAGE, _raw({**P, "generation_output_format": "mp4"}), 422,
     "bse_parameter_out_of_range", "generation_output_format"),
    ("output_number_over_model_max", IMAGE, _raw({**P, "generation_output_number": 5}), 422,
     "bse_parameter_out_of_range", "generation_output_number"),
    ("video_ratio_not_listed", VIDEO, _raw({**V, "generation_ratio": "21:9"}), 422,
     "bse_parameter_out_of_range", "generation_ratio"),
    ("png_for_video", VIDEO, _raw({**V, "generation_output_format": "png"}), 422,
     "bse_parameter_out_of_range", "generation_output_format"),
    ("video_two_outputs", VIDEO, _raw({**V, "generation_output_number": 2}), 422,
     "bse_parameter_out_of_range", "generation_output_number"),
    ("duration_not_listed", VIDEO, _raw({**V, "generation_duration": 6}), 422, "bse_parameter_out_of_range",
     "generation_duration"),
    ("resolution_not_listed", VIDEO, _raw({**V, "generation_resolution": "1080p"}), 422,
     "bse_parameter_out_of_range", "generation_resolution"),
    ("video_without_duration", VIDEO, _raw({"generation_prompt": "x"}), 400, "bse_invalid_input",
     "generation_duration"),
    ("provider_not_serving", IMAGE, _raw({**P, "generation_provider_order": "fal"}), 422,
     "bse_parameter_out_of_range", "generation_provider_order"),
    ("provider_chain_with_stranger", IMAGE, _raw({**P, "generation_provider_order": "local, replicate"}), 422,
     "bse_parameter_out_of_range", "generation_provider_order"),
    ("provider_order_repeated", IMAGE, _raw({**P, "generation_provider_order": "local,local"}), 400,
     "bse_invalid_input", "generation_provider_order"),
    ("provider_order_empty_chain", IMAGE, _raw({**P, "generation_provider_order": " , "}), 400,
     "bse_invalid_input", "generation_provider_order"),
    ("unknown_model", "/v1/generate/image/acme/nothing", _raw(P), 404, "bse_model_not_found", None),
    ("unknown_model_no_slash", "/v1/generate/video/nothing", _raw(V), 404, "bse_model_not_found", None),
    ("video_model_on_image_route", "/v1/generate/image/local/preview-video", _raw(V), 422,
     "bse_model_type_mismatch", None),
    ("image_model_on_video_route", "/v1/generate/video/local/preview-image", _raw(P), 422,
     "bse_model_type_mismatch", None),
]
# fmt: on


async def test_invalid_create_is_rejected_and_creates_nothing(harness: Harness) -> None:
    caller = await harness.caller()
    balance = await api_balance(caller)

    def case(
        path: str, raw: bytes, status: int, error: str, field: str | None
    ) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            r = await caller.post(path, content=raw, headers={"Content-Type": "application/json"})
            assert_error(r, status, error, field)
            assert r.json()["retryable"] is False
            assert await list_total(caller) == 0
            assert await api_balance(caller) == balance
            async with harness.services.db.read() as s:
                assert (await s.scalars(select(LedgerEntry).where(LedgerEntry.kind != "add"))).all() == []

        return run

    await check_each([(c[0], case(*c[1:])) for c in INVALID_CASES])


async def test_prompt_of_5000_chars_is_accepted(caller: Caller) -> None:
    prompt = "é" * 4000 + "x" * 1000  # 5000 characters, more bytes
    gid = await create_ok(caller, {"generation_prompt": prompt})
    record = await caller.wait(gid)
    assert record["generation_status"] == "succeeded"
    assert record["generation_prompt"] == prompt


async def test_model_limits_at_their_edges_are_accepted(caller: Caller) -> None:
    gid = await create_ok(caller, {"generation_prompt": "x", "generation_output_number": 4})
    assert len((await caller.wait(gid))["generation_output_file"]) == 4
    for order in ("fastest", "local", " local "):
        r = await caller.create_image({"generation_prompt": "x", "generation_provider_order": order})
        assert r.status_code == 200, (order, r.text)
        assert r.json()["data"]["generation_provider_order"] == ["local"]
    r = await caller.post(VIDEO, json={"generation_prompt": "x", "generation_duration": 5})
    assert r.status_code == 200, r.text


MAX_BODY = 100 * 1024


def _padded(size: int) -> bytes:
    """A valid body of exactly ``size`` bytes (JSON allows trailing whitespace)."""
    core = b'{"generation_prompt": "padded"}'
    return core + b" " * (size - len(core))


async def _chunks(data: bytes, size: int = 8192) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_body_of_exactly_100_kb_is_accepted(caller: Caller) -> None:
    r = await caller.post(IMAGE, content=_padded(MAX_BODY), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    r = await caller.post(
        IMAGE, content=_chunks(_padded(MAX_BODY)), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in r.request.headers
    assert r.status_code == 200, r.text
    assert await list_total(caller) == 2


async def test_body_over_100_kb_is_413(caller: Caller) -> None:
    def case(streamed: bool, size: int) -> Callable[[], Awaitable[None]]:
        return lambda: _check_too_large(caller, streamed, size)

    await check_each(
        [
            (f"{'chunked' if streamed else 'content-length'} {size}", case(streamed, size))
            for streamed in (False, True)
            for size in (MAX_BODY + 1, 3 * MAX_BODY)
        ]
    )


async def _check_too_large(caller: Caller, streamed: bool, size: int) -> None:
    balance = await api_balance(caller)
    raw = _padded(size)
    content: Any = _chunks(raw) if streamed else raw
    r = await caller.post(IMAGE, content=content, headers={"Content-Type": "application/json"})
    if streamed:
        assert "content-length" not in r.request.headers
        assert r.request.headers.get("transfer-encoding") == "chunked"
    else:
        assert r.request.headers["content-length"] == str(size)
    assert_error(r, 413, "bse_payload_too_large")
    assert await list_total(caller) == 0
    assert await api_balance(caller) == balance


async def test_insufficient_credits_creates_nothing(harness: Harness) -> None:
    caller = await harness.caller(credits="0.005")
    r = await caller.create_image({"generation_prompt": "x", "generation_output_number": 3})
    body = assert_error(r, 402, "bse_insufficient_credits")
    assert body["retryable"] is False
    assert await list_total(caller) == 0
    assert await api_balance(caller) == 0.005
    gid = await create_ok(caller, {"generation_prompt": "x", "generation_output_number": 2})
    assert (await caller.wait(gid))["generation_status"] == "succeeded"
    assert await api_balance(caller) == 0.001


# -- isolation between accounts --------------------------------------------------------------


async def test_other_accounts_generation_is_invisible(harness: Harness) -> None:
    owner = await harness.caller()
    other = await harness.caller()
    gid = await create_ok(owner, {"generation_prompt": "secret prompt 4711", "generation_output_number": 2})
    record = await owner.wait(gid)
    assert record["generation_status"] == "succeeded"
    urls = record["generation_output_file"]
    other_balance = await api_balance(other)
    owner_balance = await api_balance(owner)

    for r in (
        await other.get(f"/v1/content/{gid}"),
        await other.delete(f"/v1/content/{gid}"),
        await other.post(f"/v1/content/generation/cancel/{gid}"),
    ):
        assert_error(r, 404, "bse_generation_not_found")
        for secret in ("secret prompt 4711", owner.account_id, *urls, record["generation_prediction_id"]):
            assert secret not in r.text
    # Same answer as for an id that never existed: nothing tells the two apart.
    unknown = await other.get("/v1/content/00000000-0000-4000-8000-000000000000")
    mine = await other.get(f"/v1/content/{gid}")
    assert unknown.json()["error"] == mine.json()["error"]
    assert unknown.json()["message"] == mine.json()["message"]

    r = await other.get("/v1/content/list")
    assert r.json()["total"] == 0 and r.json()["data"]["generations"] == []
    r = await owner.get("/v1/content/list")
    assert r.json()["total"] == 1
    assert [g["generation_id"] for g in r.json()["data"]["generations"]] == [gid]

    # Nothing was touched: the record, its files and both balances are as they were.
    assert (await owner.get(f"/v1/content/{gid}")).json()["data"] == record
    for url in urls:
        assert (await fetch(owner, url)).status_code == 200
    assert await api_balance(other) == other_balance
    assert await api_balance(owner) == owner_balance


async def test_other_account_cannot_cancel_or_delete_a_running_generation(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=0.5)
    owner = await h.caller()
    other = await h.caller()
    gid = await create_ok(owner)
    await wait_status(owner, gid, "processing")
    assert_error(await other.post(f"/v1/content/generation/cancel/{gid}"), 404, "bse_generation_not_found")
    assert_error(await other.delete(f"/v1/content/{gid}"), 404, "bse_generation_not_found")
    record = await owner.wait(gid)
    assert record["generation_status"] == "succeeded"
    assert [k for k, _, _ in await ledger(h, gid)] == ["reserve", "charge"]


# -- list ------------------------------------------------------------------------------------


async def test_list_newest_first_with_paging(caller: Caller) -> None:
    gids = []
    for i in range(5):
        gids.append(await create_ok(caller, {"generation_prompt": f"item {i}"}))
    newest_first = list(reversed(gids))

    r = await caller.get("/v1/content/list")
    body = assert_success_envelope(r)
    assert (body["total"], body["limit"], body["offset"]) == (5, 50, 0)
    assert set(body) >= {"status", "request_id", "message", "timestamp", "data", "total", "limit", "offset"}
    listed = body["data"]["generations"]
    assert [g["generation_id"] for g in listed] == newest_first
    created = [ts(g["generation_created_at"]) for g in listed]
    assert created == sorted(created, reverse=True)
    for g in listed:
        assert RECORD_FIELDS <= set(g)
        assert g["account_id"] == caller.account_id

    pages: list[str] = []
    for offset in (0, 2, 4):
        r = await caller.get("/v1/content/list", params={"limit": 2, "offset": offset})
        body = assert_success_envelope(r)
        assert (body["total"], body["limit"], body["offset"]) == (5, 2, offset)
        pages += [g["generation_id"] for g in body["data"]["generations"]]
    assert pages == newest_first

    r = await caller.get("/v1/content/list", params={"limit": 100, "offset": 5})
    body = assert_success_envelope(r)
    assert (body["total"], body["limit"], body["offset"]) == (5, 100, 5)
    assert body["data"]["generations"] == []

    # Records in the list are the same records GET returns.
    for gid in gids:
        await caller.wait(gid)
    listed = (await caller.get("/v1/content/list")).json()["data"]["generations"]
    for g in listed:
        assert (await caller.get(f"/v1/content/{g['generation_id']}")).json()["data"] == g


async def test_list_rejects_out_of_bounds_paging(caller: Caller) -> None:
    def case(params: dict[str, Any], field: str) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            r = await caller.get("/v1/content/list", params=params)
            assert_error(r, 400, "bse_invalid_input", field)

        return run

    cases: list[tuple[dict[str, Any], str]] = [
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "x"}, "offset"),
    ]
    await check_each([(str(p), case(p, f)) for p, f in cases])


# -- cancel ----------------------------------------------------------------------------------

DELAY = 1.0


async def test_cancel_running_generation_refunds_and_stays_canceled(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=DELAY)
    caller = await h.caller(credits="1")
    start = await balance_millis(h.services.db, caller.account_id)
    gid = await create_ok(caller, {"generation_prompt": "x", "generation_output_number": 2})
    created_at = time.monotonic()
    assert await balance_millis(h.services.db, caller.account_id) == start - 2 * IMAGE_PRICE_MILLIS
    await wait_status(caller, gid, "processing")

    r = await caller.post(f"/v1/content/generation/cancel/{gid}")
    data = assert_success_envelope(r)["data"]
    assert set(data) == {"generation_id", "generation_status", "provider_cancel_sent", "credits_refunded"}
    assert data["generation_id"] == gid
    assert data["generation_status"] == "canceled"
    assert data["provider_cancel_sent"] is True  # the job was running in a provider
    assert data["credits_refunded"] is True
    assert await api_balance(caller) == 1.0
    assert await balance_millis(h.services.db, caller.account_id) == start

    record = (await caller.get(f"/v1/content/{gid}")).json()["data"]
    assert record["generation_status"] == "canceled"
    assert record["generation_output_file"] is None
    assert record["generation_completed_at"] is not None
    assert "generation_error_code" not in record

    # The worker stopped the provider job (usage counts it as a cancelled submission) ...
    async def attempt_cancelled() -> bool:
        return bool((await provider_usage(caller))["cancelled_count"] == 1)

    await wait_for(attempt_cancelled, "the worker to record the cancelled attempt")
    # ... and well past the time the provider would have finished, nothing flips.
    while time.monotonic() < created_at + DELAY + 0.5:
        r = await caller.get(f"/v1/content/{gid}")
        assert r.json()["data"] == record
        await asyncio.sleep(0.1)
    usage = await provider_usage(caller)
    assert (usage["total_submissions"], usage["used_count"], usage["cancelled_count"]) == (1, 0, 1)
    assert not (h.services.settings.files_dir / gid).exists()
    assert await ledger(h, gid) == [
        ("reserve", 4, start - 4),
        ("refund", 4, start),
    ]

    again = await caller.post(f"/v1/content/generation/cancel/{gid}")
    body = assert_error(again, 409, "bse_generation_not_cancelable")
    assert body["retryable"] is False
    assert await ledger(h, gid) == [("reserve", 4, start - 4), ("refund", 4, start)]
    assert await balance_millis(h.services.db, caller.account_id) == start


async def test_cancel_pending_generation_never_runs(harness_factory: Any) -> None:
    h: Harness = await harness_factory(run_worker=False)
    caller = await h.caller(credits="1")
    gid = await create_ok(caller)
    r = await caller.post(f"/v1/content/generation/cancel/{gid}")
    data = assert_success_envelope(r)["data"]
    assert data["generation_status"] == "canceled"
    assert data["credits_refunded"] is True
    assert data["provider_cancel_sent"] is False  # nothing was running anywhere
    worker = h.services.worker
    await worker.start()
    worker.enqueue(gid)  # a stale hint for the canceled job: claiming it must find nothing to run
    try:
        await settle_worker(caller)
    finally:
        await worker.stop()
    record = (await caller.get(f"/v1/content/{gid}")).json()["data"]
    assert record["generation_status"] == "canceled"
    assert record["generation_started_at"] is None
    usage = await provider_usage(caller)
    assert (usage["total_submissions"], usage["used_count"]) == (1, 1)  # the marker job only
    assert [k for k, _, _ in await ledger(h, gid)] == ["reserve", "refund"]
    assert await api_balance(caller) == 0.998  # only the marker job was paid for


async def test_cancel_terminal_generations_is_409(harness_factory: Any, harness: Harness) -> None:
    caller = await harness.caller()
    gid = await create_ok(caller)
    assert (await caller.wait(gid))["generation_status"] == "succeeded"
    balance = await api_balance(caller)
    body = assert_error(
        await caller.post(f"/v1/content/generation/cancel/{gid}"), 409, "bse_generation_not_cancelable"
    )
    assert body["retryable"] is False
    record = (await caller.get(f"/v1/content/{gid}")).json()["data"]
    assert record["generation_status"] == "succeeded"
    assert await api_balance(caller) == balance
    assert [k for k, _, _ in await ledger(harness, gid)] == ["reserve", "charge"]
    for url in record["generation_output_file"]:
        assert (await fetch(caller, url)).status_code == 200

    assert_error(
        await caller.post("/v1/content/generation/cancel/00000000-0000-4000-8000-000000000000"),
        404,
        "bse_generation_not_found",
    )


# -- failure refunds -------------------------------------------------------------------------


async def test_failed_generation_refunds_exactly_once(harness_factory: Any) -> None:
    # The provider takes longer than the attempt deadline: the chain fails, the money comes back.
    h: Harness = await harness_factory(local_provider_delay_seconds=3, image_attempt_deadline_seconds=0.2)
    caller = await h.caller(credits="1")
    start = await balance_millis(h.services.db, caller.account_id)
    gid = await create_ok(caller, {"generation_prompt": "x", "generation_output_number": 4})
    record = await caller.wait(gid)
    assert record["generation_status"] == "failed"
    assert record["generation_error_name"] == "bse_all_providers_failed"
    assert isinstance(record["generation_error"], str) and record["generation_error"]
    assert record["generation_output_file"] is None
    assert record["generation_completed_at"] is not None
    cost = 4 * IMAGE_PRICE_MILLIS
    assert await ledger(h, gid) == [("reserve", cost, start - cost), ("refund", cost, start)]
    assert await api_balance(caller) == 1.0
    # Terminal: cannot be canceled, and sweeps after the failure change nothing.
    assert_error(
        await caller.post(f"/v1/content/generation/cancel/{gid}"), 409, "bse_generation_not_cancelable"
    )
    await settle_worker(caller)
    assert (await caller.get(f"/v1/content/{gid}")).json()["data"] == record
    assert await ledger(h, gid) == [("reserve", cost, start - cost), ("refund", cost, start)]


# -- delete ----------------------------------------------------------------------------------


async def test_delete_removes_record_and_files(harness: Harness, caller: Caller) -> None:
    keep = await create_ok(caller)
    gid = await create_ok(caller, {"generation_prompt": "x", "generation_output_number": 3})
    record = await caller.wait(gid)
    kept = await caller.wait(keep)
    urls = record["generation_output_file"]
    for url in urls:
        assert (await fetch(caller, url)).status_code == 200
    balance = await api_balance(caller)

    r = await caller.delete(f"/v1/content/{gid}")
    data = assert_success_envelope(r)["data"]
    assert data == {"generation_id": gid, "files_deleted": 3}

    assert_error(await caller.get(f"/v1/content/{gid}"), 404, "bse_generation_not_found")
    for url in urls:
        assert (await fetch(caller, url)).status_code == 404
    assert not (harness.services.settings.files_dir / gid).exists()
    listed = (await caller.get("/v1/content/list")).json()
    assert listed["total"] == 1
    assert [g["generation_id"] for g in listed["data"]["generations"]] == [keep]
    # Deleting a finished generation is not a refund.
    assert await api_balance(caller) == balance
    # The other generation is untouched.
    assert (await caller.get(f"/v1/content/{keep}")).json()["data"] == kept
    for url in kept["generation_output_file"]:
        assert (await fetch(caller, url)).status_code == 200

    assert_error(await caller.delete(f"/v1/content/{gid}"), 404, "bse_generation_not_found")
    assert_error(await caller.post(f"/v1/content/generation/cancel/{gid}"), 404, "bse_generation_not_found")


async def test_delete_running_generation_cancels_and_refunds_first(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=DELAY)
    caller = await h.caller(credits="1")
    start = await balance_millis(h.services.db, caller.account_id)
    gid = await create_ok(caller, {"generation_prompt": "x", "generation_output_number": 2})
    created_at = time.monotonic()
    await wait_status(caller, gid, "processing")

    r = await caller.delete(f"/v1/content/{gid}")
    assert assert_success_envelope(r)["data"] == {"generation_id": gid, "files_deleted": 0}
    assert await balance_millis(h.services.db, caller.account_id) == start
    assert await ledger(h, gid) == [("reserve", 4, start - 4), ("refund", 4, start)]
    assert_error(await caller.get(f"/v1/content/{gid}"), 404, "bse_generation_not_found")

    # Past the provider's delay no output lands in storage and no money moves.
    while time.monotonic() < created_at + DELAY + 0.5:
        assert (await caller.get(f"/v1/content/{gid}")).status_code == 404
        await asyncio.sleep(0.1)
    assert not (h.services.settings.files_dir / gid).exists()
    assert await ledger(h, gid) == [("reserve", 4, start - 4), ("refund", 4, start)]
    assert await list_total(caller) == 0
    assert await api_balance(caller) == 1.0


async def test_delete_pending_generation(harness_factory: Any) -> None:
    h: Harness = await harness_factory(run_worker=False)
    caller = await h.caller(credits="1")
    gid = await create_ok(caller)
    r = await caller.delete(f"/v1/content/{gid}")
    assert assert_success_envelope(r)["data"] == {"generation_id": gid, "files_deleted": 0}
    assert [k for k, _, _ in await ledger(h, gid)] == ["reserve", "refund"]
    assert await api_balance(caller) == 1.0
    assert await list_total(caller) == 0


# -- credits ---------------------------------------------------------------------------------


async def test_success_charges_exactly_the_price_once(harness: Harness) -> None:
    caller = await harness.caller(credits="1")
    start = await balance_millis(harness.services.db, caller.account_id)
    gids = [
        await create_ok(caller, {"generation_prompt": "x", "generation_output_number": n}) for n in (1, 2, 4)
    ]
    for gid in gids:
        assert (await caller.wait(gid))["generation_status"] == "succeeded"
    spent = 0
    for gid, n in zip(gids, (1, 2, 4), strict=True):
        entries = await ledger(harness, gid)
        cost = n * IMAGE_PRICE_MILLIS
        assert [(k, a) for k, a, _ in entries] == [("reserve", cost), ("charge", cost)]
        spent += cost
    assert spent == 14
    assert await balance_millis(harness.services.db, caller.account_id) == start - spent
    assert await api_balance(caller) == 0.986
    # Later work and sweeps of finished jobs never charge twice.
    await settle_worker(caller)
    for gid in gids:
        assert [k for k, _, _ in await ledger(harness, gid)] == ["reserve", "charge"]


async def test_balance_never_goes_negative_under_concurrent_creates(harness: Harness) -> None:
    caller = await harness.caller(credits="0.005")  # room for two 0.002 images, not three
    responses = await asyncio.gather(*(caller.create_image() for _ in range(8)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(ok) == 2, [r.text for r in responses]
    for r in refused:
        assert_error(r, 402, "bse_insufficient_credits")
    for r in ok:
        assert (await caller.wait(r.json()["data"]["generation_id"]))["generation_status"] == "succeeded"
    assert await list_total(caller) == 2
    assert await balance_millis(harness.services.db, caller.account_id) == 1
    async with harness.services.db.read() as s:
        rows = (await s.scalars(select(LedgerEntry).where(LedgerEntry.account_id == caller.account_id))).all()
    assert all(e.balance_after_millis >= 0 for e in rows)
    assert sorted(e.kind for e in rows) == ["add", "charge", "charge", "reserve", "reserve"]
    # Topping up makes the same request possible again.
    await add_credits(harness.services.db, caller.account_id, 3)
    assert (await caller.create_image()).status_code == 200


async def test_image_to_video_model_without_an_input_image_is_refused_upfront(harness: Harness) -> None:
    """runway/gen4-turbo animates an image: without one the request is refused before any money moves."""
    caller = await harness.caller(credits="5")
    r = await caller.post(
        "/v1/generate/video/runway/gen4-turbo",
        json={"generation_prompt": "waves", "generation_duration": 5},
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bse_invalid_input"
    assert r.json()["details"]["field"] == "generation_input_file"
    billing = (await caller.get("/v1/user/billing")).json()["data"]
    assert billing["billing_credit_balance"] == 5.0
