"""The Python SDK (genplane.client) against a real ``genplane serve``, sync and async alike.

Retry timing is checked with scripted answers (httpx.MockTransport) and an injected sleep
function, never by timing; everything else talks to a live server in a subprocess.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from genplane.client import (
    AsyncClient,
    AuthenticationError,
    Client,
    ConflictError,
    GenerationFailedError,
    GenerationTimeoutError,
    GenplaneError,
    NetworkError,
    NotFoundError,
    RateLimitError,
    RequestValidationError,
    ServerError,
    WebhookVerificationError,
    verify_webhook,
)
from tests.client_live import DroppingProxy, fresh_account, operator, start_live
from tests.serve_process import Server
from tests.webhook_receiver import Receiver, until

IMAGE = "local/preview-image"
VIDEO = "local/preview-video"

Api = Client | AsyncClient


# -- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    server, key = start_live(tmp_path_factory.mktemp("sdk") / "data")
    try:
        yield server, key
    finally:
        server.stop()


class Recording(httpx.HTTPTransport):
    """The real network transport, remembering every request it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return super().handle_request(request)


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return await super().handle_async_request(request)


def make_client(kind: str, key: str, base_url: str, **kw: Any) -> tuple[Api, list[httpx.Request]]:
    """A client of ``kind`` ("sync" or "async") and the list of requests it sends."""
    if kind == "sync":
        transport = Recording()
        return Client(key, base_url=base_url, transport=transport, **kw), transport.sent
    atransport = AsyncRecording()
    return AsyncClient(key, base_url=base_url, transport=atransport, **kw), atransport.sent


async def done(value: Any) -> Any:
    """The value of a call on either client (awaited when it is awaitable)."""
    return await value if inspect.isawaitable(value) else value


async def collect(items: Iterator[Any] | AsyncIterator[Any]) -> list[Any]:
    if isinstance(items, AsyncIterator):
        return [item async for item in items]
    return list(items)


async def close(api: Api) -> None:
    await done(api.close())


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the 17 operations -----------------------------------------------------------------


async def test_every_operation(live: tuple[Server, str], kind: str) -> None:
    server, _ = live
    account = fresh_account(server, credits="5")
    api, sent = make_client(kind, account.key, server.base_url)
    try:
        status = await done(api.status())
        assert status.data.account_id == account.account_id
        assert status.data.apikey_prefix == account.key[:9] and status.request_id.startswith("req_")
        assert status.rate_limit is not None and status.rate_limit.limit and status.rate_limit.remaining

        me = await done(api.account())
        bill = await done(api.billing())
        assert me.data.account_id == bill.data.account_id == account.account_id
        assert bill.data.billing_credit_balance == 5.0

        est = await done(api.estimate(IMAGE, count=3))
        assert est.data.assets_count == 3 and est.data.model_type == "image"
        assert est.data.cost_total_consumed == pytest.approx(3 * est.data.cost_per_generation)
        video_est = await done(api.estimate(VIDEO, duration=3, resolution="720p", audio=True))
        assert video_est.data.model_type == "video" and video_est.data.resolution == "720p"
        assert video_est.data.duration_seconds == 3

        image = await done(api.generate(IMAGE, {"generation_prompt": "a red fox"}, generation_ratio="16:9"))
        assert image.data.generation_initialized and image.data.model_identifier == IMAGE
        create = next(r for r in sent if r.method == "POST")
        assert create.url.path == f"/v1/generate/image/{IMAGE}" and create.headers["Idempotency-Key"]

        video = await done(api.generate(VIDEO, generation_prompt="waves", generation_duration=3))
        assert sent[-1].url.path == f"/v1/generate/video/{VIDEO}"
        canceled = await done(api.cancel_generation(video.data.generation_id))
        assert canceled.data.generation_status == "canceled" and canceled.data.credits_refunded

        record = await done(api.get_generation(image.data.generation_id, wait=30))
        assert record.preference_applied is not None and record.data.generation_status == "succeeded"
        assert record.data.generation_ratio == "16:9" and record.data.generation_output_file

        page = await done(api.list_generations(limit=1, offset=0))
        assert page.total == 2 and page.limit == 1 and page.offset == 0
        assert [g.generation_id for g in page.data.generations] == [video.data.generation_id]

        deleted = await done(api.delete_generation(image.data.generation_id))
        assert deleted.data.generation_id == image.data.generation_id and deleted.data.files_deleted == 1
        with pytest.raises(NotFoundError):
            await done(api.get_generation(image.data.generation_id))

        usage = await done(api.usage(days=7))
        assert usage.data.usage_period_days == 7 and usage.data.account_id == account.account_id
        assert usage.data.usage_credit_balance <= 5.0

        providers = await done(api.library.providers())
        assert providers.data.providers_total == len(providers.data.providers)
        assert "local" in {p.provider_id for p in providers.data.providers}
        models = await done(api.library.models())
        by_id = {m.model_identifier: m for m in models.data.models}
        assert by_id[VIDEO].model_type == "video" and by_id[VIDEO].model_schema.generation_duration

        health = await done(api.health.providers())
        assert health.data.service == "providers"
        assert health.data.providers_total == len(health.data.providers)
        model_health = await done(api.health.models())
        assert model_health.data.models_total == len(models.data.models)
        storage = await done(api.health.storage())
        cache = await done(api.health.cache())
        assert storage.data.healthy and storage.data.service == "storage"
        assert cache.data.healthy and cache.data.service in ("memory", "redis")

        image_id, video_id = image.data.generation_id, video.data.generation_id
        assert {(r.method, r.url.path) for r in sent} == {
            ("GET", "/v1/status"), ("GET", "/v1/usage"), ("GET", "/v1/user/account"),
            ("GET", "/v1/user/billing"), ("GET", f"/v1/estimate/{IMAGE}"), ("GET", f"/v1/estimate/{VIDEO}"),
            ("POST", f"/v1/generate/image/{IMAGE}"), ("POST", f"/v1/generate/video/{VIDEO}"),
            ("GET", f"/v1/content/{image_id}"), ("GET", "/v1/content/list"),
            ("DELETE", f"/v1/content/{image_id}"), ("POST", f"/v1/content/generation/cancel/{video_id}"),
            ("GET", "/v1/library/providers"), ("GET", "/v1/library/models"),
            ("GET", "/v1/health/inference/providers"), ("GET", "/v1/health/inference/models"),
            ("GET", "/v1/health/storage"), ("GET", "/v1/health/cache"),
        }  # the 17 operations (estimate twice)
    finally:
        await close(api)


async def test_generate_replays_under_the_same_idempotency_key(live: tuple[Server, str], kind: str) -> None:
    server, _ = live
    account = fresh_account(server)
    api, _ = make_client(kind, account.key, server.base_url)
    try:
        first = await done(api.generate(IMAGE, generation_prompt="a heron", idempotency_key=f"heron-{kind}"))
        again = await done(api.generate(IMAGE, generation_prompt="a heron", idempotency_key=f"heron-{kind}"))
        assert not first.idempotency_replayed and again.idempotency_replayed
        assert again.data.generation_id == first.data.generation_id
        with pytest.raises(ConflictError) as reused:
            await done(api.generate(IMAGE, generation_prompt="an owl", idempotency_key=f"heron-{kind}"))
        assert reused.value.code == "BSE2015" and not reused.value.retryable
    finally:
        await close(api)


# -- typed errors ----------------------------------------------------------------------


class NestedShape(httpx.HTTPTransport):
    """Sends the official SDK's header, so the server answers errors in the nested shape."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["X-BabySea-SDK-Name"] = "babysea"
        return super().handle_request(request)


@pytest.mark.parametrize("shape", ["flat", "nested"])
def test_typed_errors_from_either_wire_shape(live: tuple[Server, str], shape: str) -> None:
    server, key = live
    transport = NestedShape() if shape == "nested" else None

    with Client("bye_us_" + "x" * 43, base_url=server.base_url, transport=transport) as bad:
        with pytest.raises(AuthenticationError) as auth:
            bad.status()
    e = auth.value
    assert (e.status, e.code, e.name) == (401, "BSE1002", "bse_invalid_api_key")
    assert e.type == "authentication_failed"
    assert e.request_id and e.request_id.startswith("req_") and e.message and e.retryable is False

    with Client(key, base_url=server.base_url, transport=transport) as client:
        with pytest.raises(NotFoundError) as missing:
            client.get_generation("00000000-0000-0000-0000-000000000000")
        m = missing.value
        assert (m.status, m.code, m.name, m.type) == (404, "BSE2011", "bse_generation_not_found",
                                                      "generation_not_found")
        assert m.rate_limit is not None and m.rate_limit.limit is not None  # an authenticated answer

        with pytest.raises(RequestValidationError) as invalid:
            client.list_generations(limit=1000)
        v = invalid.value
        assert (v.status, v.code, v.name, v.type) == (400, "BSE2001", "bse_invalid_input", "invalid_input")
        assert v.details.get("field") == "limit"
        assert "BSE2001 bse_invalid_input" in str(v)


# -- retries (scripted answers) --------------------------------------------------------


def scripted(*answers: httpx.Response | Exception) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """A transport answering each request with the next of ``answers`` (an exception is raised)."""
    seen: list[httpx.Request] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handler), seen


def error(status: int, name: str, code: str, retryable: bool, **headers: str) -> httpx.Response:
    body = {"status": "error", "request_id": "req_scripted", "error": name, "code": code,
            "message": "scripted", "retryable": retryable}
    return httpx.Response(status, json=body, headers=headers)


def ok(data: dict[str, Any], **headers: str) -> httpx.Response:
    body = {"status": "success", "request_id": "req_ok", "message": "ok", "timestamp": "", "data": data}
    return httpx.Response(200, json=body, headers=headers)


STATUS = {"account_id": "a", "apikey_id": "k"}
CREATED = {"generation_id": "g1", "model_identifier": IMAGE, "generation_provider_order": ["local"],
           "generation_prediction_id": "p", "generation_initialized": True}


def test_429_is_retried_after_exactly_retry_after() -> None:
    transport, seen = scripted(
        error(429, "bse_rate_limit_exceeded", "BSE1005", True, **{"Retry-After": "7"}),
        error(429, "bse_rate_limit_exceeded", "BSE1005", True, **{"Retry-After": "3"}),
        ok(STATUS),
    )
    slept: list[float] = []
    with Client("bye_us_k", base_url="http://api.test", transport=transport, sleep=slept.append) as client:
        assert client.status().data.account_id == "a"
    assert len(seen) == 3 and slept == [7.0, 3.0]


def test_503_with_an_http_date_retry_after_waits_until_that_date() -> None:
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=40)
    transport, seen = scripted(
        error(503, "bse_provider_unavailable", "BSE4005", True,
              **{"Retry-After": format_datetime(when, usegmt=True)}),
        ok(STATUS),
    )
    slept: list[float] = []
    with Client("bye_us_k", base_url="http://api.test", transport=transport, sleep=slept.append) as client:
        client.status()
    assert len(seen) == 2 and len(slept) == 1 and 35 <= slept[0] <= 40


async def test_async_client_retries_alike_and_resends_the_same_idempotency_key() -> None:
    transport, seen = scripted(
        error(503, "bse_provider_unavailable", "BSE4005", True, **{"Retry-After": "2"}),
        error(409, "bse_idempotency_in_progress", "BSE2016", True, **{"Retry-After": "1"}),
        ok(CREATED),
    )
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async with AsyncClient("bye_us_k", base_url="http://api.test", transport=transport,
                           sleep=sleep) as client:
        created = await client.generate(IMAGE, generation_prompt="a fox")
    assert created.data.generation_id == "g1" and slept == [2.0, 1.0]
    keys = {r.headers["Idempotency-Key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1 and keys.pop().startswith("genplane-py-")


@pytest.mark.parametrize(
    ("answer", "raised"),
    [
        (error(400, "bse_invalid_input", "BSE2001", False), RequestValidationError),
        (error(500, "bse_internal_error", "BSE5001", False), ServerError),
        (error(502, "bse_provider_credits_exhausted", "BSE4010", False), ServerError),
        # a 4xx is final even if a body claimed otherwise
        (error(422, "bse_parameter_out_of_range", "BSE2008", True), RequestValidationError),
        # a Retry-After beyond what the policy waits out is raised at once
        (error(403, "bse_request_blocked", "BSE1090", True, **{"Retry-After": "300"}), GenplaneError),
        (error(429, "bse_rate_limit_exceeded", "BSE1005", True, **{"Retry-After": "300"}), RateLimitError),
    ],
)
def test_final_answers_are_not_retried(answer: httpx.Response, raised: type[GenplaneError]) -> None:
    transport, seen = scripted(answer, ok(STATUS))
    slept: list[float] = []
    with Client("bye_us_k", base_url="http://api.test", transport=transport, sleep=slept.append) as client:
        with pytest.raises(raised):
            client.status()
    assert len(seen) == 1 and slept == []


def test_retryable_5xx_backs_off_with_jitter_then_gives_up() -> None:
    transport, seen = scripted(*[error(502, "bse_all_providers_failed", "BSE4003", True)] * 4)
    slept: list[float] = []
    with Client("bye_us_k", base_url="http://api.test", transport=transport, sleep=slept.append,
                max_retries=3) as client:
        with pytest.raises(ServerError) as failed:
            client.status()
    assert failed.value.retryable and len(seen) == 4 and len(slept) == 3
    assert all(0 <= s <= ceiling for s, ceiling in zip(slept, (0.5, 1.0, 2.0), strict=True))


def test_a_post_without_an_idempotency_key_is_never_retried() -> None:
    transport, seen = scripted(error(503, "bse_provider_unavailable", "BSE4005", True), ok({}))
    slept: list[float] = []
    with Client("bye_us_k", base_url="http://api.test", transport=transport, sleep=slept.append) as client:
        with pytest.raises(ServerError):
            client.cancel_generation("g1")
        transport2, seen2 = scripted(httpx.ConnectError("refused"), ok(STATUS))
    with Client("bye_us_k", base_url="http://api.test", transport=transport2, sleep=slept.append) as client:
        assert client.status().data.account_id == "a"  # a GET after a connection error: retried
    assert len(seen) == 1 and len(seen2) == 2


def test_connection_errors_become_network_errors() -> None:
    transport, seen = scripted(*[httpx.ConnectError("refused")] * 3)
    with Client("bye_us_k", base_url="http://api.test", transport=transport, sleep=lambda s: None) as client:
        with pytest.raises(NetworkError) as failed:
            client.status()
    assert len(seen) == 3 and isinstance(failed.value.__cause__, httpx.ConnectError)


def test_a_create_whose_answer_was_lost_runs_once(live: tuple[Server, str]) -> None:
    server, _ = live
    account = fresh_account(server)
    proxy = DroppingProxy(server.port)
    try:
        with Client(account.key, base_url=proxy.base_url, sleep=lambda s: None) as client:
            created = client.generate(IMAGE, generation_prompt="a lost answer")
        assert len(proxy.dropped) == 1 and proxy.dropped[0].startswith(b"HTTP/1.1 200")
        assert created.idempotency_replayed  # the server answered the retry from the first request
        with Client(account.key, base_url=server.base_url) as direct:
            listed = direct.list_generations()
        assert listed.total == 1 and listed.data.generations[0].generation_id == created.data.generation_id
    finally:
        proxy.close()


# -- waiting, downloading, paging ------------------------------------------------------


async def test_generate_and_wait_then_download_saves_the_served_bytes(
    live: tuple[Server, str], kind: str, tmp_path: Path
) -> None:
    server, key = live
    api, _ = make_client(kind, key, server.base_url)
    try:
        finished = await done(api.generate_and_wait(IMAGE, {"generation_prompt": "two boats"},
                                                    generation_output_number=2, timeout=60))
        assert finished.data.generation_status == "succeeded"
        paths = await done(api.download(finished, tmp_path / "out"))
        urls = finished.data.generation_output_file
        assert len(paths) == len(urls) == 2
        for path, url in zip(paths, urls, strict=True):
            assert path.parent == tmp_path / "out" and path.suffix == ".png"
            assert path.read_bytes() == httpx.get(url).content and path.stat().st_size > 0
        assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".part")]
        again = await done(api.download(finished.data.generation_id, tmp_path / "again"))
        assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
    finally:
        await close(api)


async def test_wait_long_polls_with_prefer_wait(live: tuple[Server, str], kind: str) -> None:
    server, key = live
    api, sent = make_client(kind, key, server.base_url)
    try:
        created = await done(api.generate(VIDEO, generation_prompt="slow waves", generation_duration=3))
        started = time.monotonic()
        finished = await done(api.wait(created.data.generation_id, timeout=60, interval=0.5))
        took = time.monotonic() - started
    finally:
        await close(api)
    assert finished.data.generation_status == "succeeded"
    gets = [r for r in sent if r.method == "GET"]
    # Polling every 0.5 s would have taken took/0.5 GETs; the server held one instead.
    assert took >= 1.0 and len(gets) == 1
    assert gets[0].headers["Prefer"] in ("wait=59", "wait=60")


def test_wait_falls_back_to_polling_when_the_server_ignores_prefer() -> None:
    record = {"generation_id": "g1", "generation_status": "processing"}
    transport, seen = scripted(ok(record), ok(record), ok({**record, "generation_status": "succeeded"}))
    slept: list[float] = []
    with Client("bye_us_k", base_url="http://api.test", transport=transport, sleep=slept.append) as client:
        assert client.wait_for_generation("g1", timeout=60, interval=1).data.generation_status == "succeeded"
    assert [r.headers.get("Prefer") for r in seen] == ["wait=60", None, None]
    assert slept == [1.0, 1.5]  # back-off polling


def test_wait_raises_typed_errors_for_failed_and_unfinished_generations() -> None:
    failed = {"generation_id": "g1", "generation_status": "failed",
              "generation_error": "every provider failed",
              "generation_error_code": "BSE4003", "generation_error_name": "bse_all_providers_failed"}
    transport, _ = scripted(ok(failed, **{"Preference-Applied": "wait=60"}))
    with Client("bye_us_k", base_url="http://api.test", transport=transport) as client:
        with pytest.raises(GenerationFailedError) as err:
            client.wait("g1")
    assert (err.value.code, err.value.name, err.value.type) == ("BSE4003", "bse_all_providers_failed",
                                                                "all_providers_failed")
    assert err.value.generation.generation_status == "failed"

    transport, seen = scripted(ok({"generation_id": "g1", "generation_status": "pending"}))
    with Client("bye_us_k", base_url="http://api.test", transport=transport) as client:
        with pytest.raises(GenerationTimeoutError) as late:
            client.wait("g1", timeout=0)
    assert late.value.last_status == "pending" and len(seen) == 1


async def test_wait_on_a_canceled_generation_raises_generation_failed(
    live: tuple[Server, str], kind: str
) -> None:
    server, key = live
    api, _ = make_client(kind, key, server.base_url)
    try:
        created = await done(api.generate(VIDEO, generation_prompt="never mind", generation_duration=3))
        await done(api.cancel_generation(created.data.generation_id))
        with pytest.raises(GenerationFailedError) as err:
            await done(api.wait(created.data.generation_id, timeout=30))
        assert err.value.generation_status == "canceled"
    finally:
        await close(api)


async def test_iter_generations_pages_until_exhausted(live: tuple[Server, str], kind: str) -> None:
    server, _ = live
    account = fresh_account(server)
    api, sent = make_client(kind, account.key, server.base_url)
    try:
        made = [(await done(api.generate(IMAGE, generation_prompt=f"fox {n}"))).data.generation_id
                for n in range(5)]
        listed = await collect(api.iter_generations(page_size=2))
    finally:
        await close(api)
    assert [g.generation_id for g in listed] == made[::-1]  # newest first, each once
    pages = [r for r in sent if r.url.path == "/v1/content/list"]
    asked = [(r.url.params["limit"], r.url.params["offset"]) for r in pages]
    assert asked == [("2", "0"), ("2", "2"), ("2", "4")]


# -- webhooks --------------------------------------------------------------------------


def test_verify_webhook_accepts_real_deliveries_in_both_schemes(live: tuple[Server, str]) -> None:
    server, _ = live
    account = fresh_account(server)
    receiver = Receiver()
    receiver.start()
    try:
        added = operator(server, "webhooks", "add", "--account", account.account_id, "--url", receiver.url,
                         "--event", "generation.completed")
        secret = next(word for word in added.split() if word.startswith("whsec_"))
        with Client(account.key, base_url=server.base_url) as client:
            created = client.generate(IMAGE, generation_prompt="a signed fox")
        hook = asyncio.run(until(lambda: receiver.delivered(), timeout=30, what="a delivery"))[0]
    finally:
        receiver.stop()

    headers = hook.headers
    event = verify_webhook(hook.body, headers, secret)
    assert event.webhook_event == "generation.completed"
    assert event.webhook_data["generation_id"] == created.data.generation_id
    babysea_only = {k: v for k, v in headers.items() if not k.startswith("webhook-")}
    standard_only = {k: v for k, v in headers.items() if k != "x-babysea-signature"}
    assert verify_webhook(hook.body, babysea_only, secret).webhook_delivery_id == hook.delivery_id
    assert verify_webhook(hook.body.decode(), standard_only, secret).webhook_delivery_id == hook.delivery_id

    tampered = hook.body.replace(created.data.generation_id.encode(), b"0" * 36)
    other_secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
    sent_at = int(headers["webhook-timestamp"])
    for scheme in (babysea_only, standard_only):
        with pytest.raises(WebhookVerificationError, match="does not match"):
            verify_webhook(tampered, scheme, secret)
        with pytest.raises(WebhookVerificationError, match="does not match"):
            verify_webhook(hook.body, scheme, other_secret)
        with pytest.raises(WebhookVerificationError, match="stale"):
            verify_webhook(hook.body, scheme, secret, now=sent_at + 301)
        verify_webhook(hook.body, scheme, secret, now=sent_at + 299)  # inside the tolerance
    with pytest.raises(WebhookVerificationError, match="no signature"):
        verify_webhook(hook.body, {"content-type": "application/json"}, secret)
    assert json.loads(hook.body)["webhook_delivery_id"] == hook.delivery_id


def test_bad_arguments_fail_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENPLANE_API_KEY", raising=False)
    with pytest.raises(ValueError, match="API key"):
        Client(base_url="http://api.test")
    transport, seen = scripted()
    with Client("bye_us_k", base_url="http://api.test", transport=transport) as client:
        with pytest.raises(ValueError, match="wait"):
            client.get_generation("g1", wait=61)
        with pytest.raises(ValueError, match="generation_prompt"):
            client.generate(IMAGE)
    assert seen == []
    monkeypatch.setenv("GENPLANE_PUBLIC_DOMAIN", "example.test")
    assert Client("bye_us_k", region="eu").config.base_url == "https://api.eu.example.test"
    monkeypatch.setenv("GENPLANE_BASE_URL", "http://10.0.0.5:8000/")
    assert Client("bye_us_k").config.base_url == "http://10.0.0.5:8000"
    assert "bye_us_kkkkkkk" not in repr(Client("bye_us_kkkkkkkkkkkkk").config)


def test_the_sdk_imports_nothing_of_the_server() -> None:
    """Installed in an application, the SDK must not pull in the server's dependencies."""
    server_only = ["fastapi", "starlette", "sqlalchemy", "alembic", "uvicorn", "orjson", "typer", "rich",
                   "standardwebhooks", "structlog", "genplane.settings", "genplane.api", "genplane.db"]
    code = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in server_only) + (
        "import genplane.client as c\nassert c.Client and c.AsyncClient and c.verify_webhook\n"
    )
    done_ = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done_.returncode == 0, done_.stderr
