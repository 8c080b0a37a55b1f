"""``Prefer: wait``: reads and creates held open until the generation is terminal, woken by
the in-process notifier, never past N seconds, and nothing left behind by those that end."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import uvicorn

from genplane.accounts import service as accounts
from genplane.accounts.scopes import parse_scopes
from genplane.api.app import create_app
from genplane.api.firewall import compile_rules
from genplane.api.openapi import app_spec, route_table
from genplane.api.prefer_wait import extra_seconds, granted_wait, requested_wait
from genplane.contract.errors import ApiError
from genplane.credits.money import to_millis
from genplane.generations.waiters import LocalGenerationWaiters
from genplane.settings import Settings

from .conftest import Caller, Harness

IMAGE = "/v1/generate/image/local/preview-image"
TERMINAL = ("succeeded", "failed", "canceled")
SLOW = 3600.0  # a provider delay no test outlives: the generation stays processing until canceled
# No periodic re-read within any test: only a notification can wake a waiter early.
NOTIFIED_ONLY: dict[str, Any] = {"prefer_wait_recheck_seconds": 600.0}


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


async def create(caller: Caller, **kw: Any) -> str:
    r = await caller.create_image(**kw)
    assert r.status_code == 200, r.text
    generation_id: str = r.json()["data"]["generation_id"]
    return generation_id


def prefer(value: str) -> dict[str, str]:
    return {"Prefer": value}


async def timed_get(caller: Caller, generation_id: str, value: str) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = await caller.get(f"/v1/content/{generation_id}", headers=prefer(value))
    return r, time.monotonic() - started


# -- the header ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("wait=10", 10),
        ("wait=1", 1),
        ("wait=60", 60),
        ("WAIT = 7", 7),
        ("wait", 60),  # Replicate: a bare wait is 60 s
        ("wait=", 60),  # RFC 7240: an empty value is no value
        ('wait="5"', 5),
        ("wait=05", 5),
        ("wait=3; foo=bar", 3),
        ("respond-async, wait=4", 4),
        ("return=minimal", None),  # not understood: ignored
        ('foo="a, wait=0", wait=9', 9),  # a quoted comma does not split
        ("wait=8, wait=abc", 8),  # RFC 7240: the first instance counts
        ("waiting=0", None),
    ],
)
def test_requested_wait_parses_rfc_7240_preferences(value: str | None, seconds: int | None) -> None:
    assert requested_wait(value) == seconds


@pytest.mark.parametrize(
    "value", ["wait=0", "wait=61", "wait=100", "wait=-1", "wait=1.5", "wait=abc", "wait=5s"]
)
def test_requested_wait_refuses_a_wait_outside_1_to_60(value: str) -> None:
    with pytest.raises(ApiError) as caught:
        requested_wait(value)
    assert caught.value.name == "bse_invalid_input"
    assert caught.value.details == {"field": "Prefer"}


def test_granted_wait_is_bounded_by_the_setting_and_lengthens_the_timeout(tmp_path: Any) -> None:
    def settings(**kw: Any) -> Settings:
        return Settings(data_dir=tmp_path, **kw)

    assert granted_wait("wait", settings(request_timeout_seconds=30)) == 60
    assert granted_wait("wait=20", settings()) == 20
    assert granted_wait("wait=40", settings(prefer_wait_max_seconds=15)) == 15
    assert granted_wait("wait=40", settings(prefer_wait_max_seconds=0)) is None
    assert granted_wait("respond-async", settings()) is None
    # The edge's request timeout bounds the work; a request that may wait gets the wait on top.
    assert extra_seconds("wait=5", settings(prefer_wait_max_seconds=15)) == 15
    assert extra_seconds(None, settings()) == 0 and extra_seconds("respond-async", settings()) == 0


# -- the notifier ----------------------------------------------------------------------------


async def test_a_notification_between_subscribing_and_waiting_is_not_lost() -> None:
    waiters = LocalGenerationWaiters()
    async with waiters.subscribe("gen_a") as subscription:
        await waiters.notify("gen_a")
        assert await subscription.wait(5) is True
        # Spent: the next wait listens for the next notification.
        assert await subscription.wait(0.01) is False
        await waiters.notify("gen_a")
        assert await subscription.wait(5) is True
    assert len(waiters) == 0 and waiters.waiting == 0


async def test_the_table_holds_only_ids_someone_waits_on() -> None:
    waiters = LocalGenerationWaiters()
    await waiters.notify("nobody_waits")  # no entry made
    assert len(waiters) == 0
    async with waiters.subscribe("gen_a") as first, waiters.subscribe("gen_a"), waiters.subscribe("gen_b"):
        assert (len(waiters), waiters.waiting) == (2, 3)
        assert await first.wait(0.01) is False  # timed out: still listening
        assert (len(waiters), waiters.waiting) == (2, 3)
    assert (len(waiters), waiters.waiting) == (0, 0)

    task = asyncio.create_task(_wait_in_subscription(waiters, "gen_c", 30))
    await until(lambda: waiters.waiting == 1)
    task.cancel()  # a client that went away
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (len(waiters), waiters.waiting) == (0, 0)


async def _wait_in_subscription(waiters: LocalGenerationWaiters, generation_id: str, seconds: float) -> bool:
    async with waiters.subscribe(generation_id) as subscription:
        return await subscription.wait(seconds)


# -- reads -----------------------------------------------------------------------------------


async def test_get_answers_as_soon_as_the_generation_is_terminal(harness_factory: Any) -> None:
    delay, n = 0.5, 10
    h: Harness = await harness_factory(local_provider_delay_seconds=delay, **NOTIFIED_ONLY)
    caller = await h.caller()
    generation_id = await create(caller)
    r, elapsed = await timed_get(caller, generation_id, f"wait={n}")
    assert r.status_code == 200, r.text
    assert r.json()["data"]["generation_status"] == "succeeded"
    assert r.json()["data"]["generation_output_file"]
    assert r.headers["preference-applied"] == f"wait={n}"
    # Woken by the worker's commit, one provider delay after the create, not at N.
    assert elapsed < n / 2, elapsed
    assert len(h.services.waiters) == 0


async def test_get_of_a_terminal_generation_answers_at_once(harness: Harness, caller: Caller) -> None:
    generation_id = await create(caller)
    await caller.wait(generation_id)
    r, elapsed = await timed_get(caller, generation_id, "wait=30")
    assert r.status_code == 200 and r.json()["data"]["generation_status"] == "succeeded"
    assert r.headers["preference-applied"] == "wait=30"
    assert elapsed < 5
    assert len(harness.services.waiters) == 0


async def test_wait_ends_after_n_seconds_with_the_record_as_it_is(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=SLOW)
    caller = await h.caller()
    generation_id = await create(caller)
    r, elapsed = await timed_get(caller, generation_id, "wait=1")
    assert r.status_code == 200, r.text
    assert r.json()["data"]["generation_status"] in ("pending", "processing")
    assert r.headers["preference-applied"] == "wait=1"
    assert 1.0 <= elapsed < 3.0, elapsed
    assert (len(h.services.waiters), h.services.waiters.waiting) == (0, 0)


async def test_a_wait_longer_than_the_request_timeout_is_not_cut_short(harness_factory: Any) -> None:
    # The request timeout bounds the work; the wait a request asked for comes on top of it.
    h: Harness = await harness_factory(local_provider_delay_seconds=SLOW, request_timeout_seconds=1)
    caller = await h.caller()
    generation_id = await create(caller)
    r, elapsed = await timed_get(caller, generation_id, "wait=2")
    assert r.status_code == 200, r.text
    assert r.headers["preference-applied"] == "wait=2"
    assert 2.0 <= elapsed < 4.0, elapsed


async def test_cancel_wakes_the_waiters(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=SLOW, **NOTIFIED_ONLY)
    caller = await h.caller()
    generation_id = await create(caller)
    waiting = asyncio.create_task(timed_get(caller, generation_id, "wait=20"))
    await until(lambda: h.services.waiters.waiting == 1)
    r = await caller.post(f"/v1/content/generation/cancel/{generation_id}")
    assert r.status_code == 200, r.text
    r, elapsed = await waiting
    assert r.status_code == 200 and r.json()["data"]["generation_status"] == "canceled"
    assert elapsed < 10, elapsed
    assert len(h.services.waiters) == 0


async def test_fifty_waiters_of_one_generation_all_wake(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=SLOW, **NOTIFIED_ONLY)
    caller = await h.caller()
    generation_id = await create(caller)
    waiting = [asyncio.create_task(timed_get(caller, generation_id, "wait=25")) for _ in range(50)]
    waiters = h.services.waiters
    await until(lambda: waiters.waiting == 50)
    assert len(waiters) == 1  # one signal for the id, shared
    started = time.monotonic()
    r = await caller.post(f"/v1/content/generation/cancel/{generation_id}")
    assert r.status_code == 200, r.text
    answers = await asyncio.gather(*waiting)
    assert time.monotonic() - started < 10
    assert [a.json()["data"]["generation_status"] for a, _ in answers] == ["canceled"] * 50
    assert (len(waiters), waiters.waiting) == (0, 0)


async def test_the_row_is_read_again_right_after_subscribing(harness: Harness, caller: Caller) -> None:
    """The job ends between the first read and the subscription: no notification will come,
    and the re-read after subscribing answers at once instead of waiting out N."""
    generation_id = await create(caller)
    finished = await caller.wait(generation_id)
    generations = harness.services.generations
    real_get = generations.get
    reads = 0

    async def first_read_is_stale(account_id: str, gid: str) -> dict[str, Any]:
        nonlocal reads
        reads += 1
        record = await real_get(account_id, gid)
        return {**record, "generation_status": "processing"} if reads == 1 else record

    generations.get = first_read_is_stale  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        record = await generations.wait(caller.account_id, generation_id, 20)
    finally:
        del generations.get
    assert record == finished
    assert reads == 2
    assert time.monotonic() - started < 5


async def test_a_transition_no_one_here_is_told_of_is_found_by_the_recheck(harness_factory: Any) -> None:
    """Another process finished it (here: a worker whose notifications reach no waiter)."""
    h: Harness = await harness_factory(local_provider_delay_seconds=0.3, prefer_wait_recheck_seconds=0.2)
    h.services.worker.waiters = LocalGenerationWaiters()
    caller = await h.caller()
    generation_id = await create(caller)
    r, elapsed = await timed_get(caller, generation_id, "wait=20")
    assert r.json()["data"]["generation_status"] == "succeeded"
    assert elapsed < 10, elapsed


async def test_a_client_that_disconnects_ends_its_wait(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=SLOW, **NOTIFIED_ONLY)
    caller = await h.caller()
    generation_id = await create(caller)
    gone = asyncio.Event()
    requested = False
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/v1/content/{generation_id}",
        "raw_path": f"/v1/content/{generation_id}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {caller.key}".encode()),
            (b"prefer", b"wait=25"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    waiters = h.services.waiters
    started = time.monotonic()
    request = asyncio.create_task(h.app(scope, receive, send))
    await until(lambda: waiters.waiting == 1)
    gone.set()
    await asyncio.wait_for(request, 10)
    assert time.monotonic() - started < 10
    assert (len(waiters), waiters.waiting) == (0, 0)


async def test_without_the_header_nothing_waits(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=SLOW)
    caller = await h.caller()
    generation_id = await create(caller)
    r = await caller.get(f"/v1/content/{generation_id}")
    assert r.json()["data"]["generation_status"] in ("pending", "processing")
    assert "preference-applied" not in r.headers
    # Other preferences are ignored, and an operation that does not declare the header
    # (the list) is not refused for it: the firewall checks declared headers only.
    r = await caller.get(f"/v1/content/{generation_id}", headers=prefer("respond-async, return=minimal"))
    assert r.status_code == 200 and "preference-applied" not in r.headers
    r = await caller.get("/v1/content/list", headers=prefer("wait=5"))
    assert r.status_code == 200 and "preference-applied" not in r.headers
    assert len(h.services.waiters) == 0


async def test_a_deployment_may_turn_waiting_off(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=SLOW, prefer_wait_max_seconds=0)
    caller = await h.caller()
    generation_id = await create(caller)
    r, elapsed = await timed_get(caller, generation_id, "wait=5")
    assert r.status_code == 200 and "preference-applied" not in r.headers
    assert elapsed < 3


@pytest.mark.parametrize("firewall", [True, False])
@pytest.mark.parametrize("value", ["wait=0", "wait=61", "wait=abc"])
async def test_an_invalid_wait_is_refused_before_anything_happens(
    harness_factory: Any, firewall: bool, value: str
) -> None:
    h: Harness = await harness_factory(firewall_enabled=firewall)
    caller = await h.caller()
    generation_id = await create(caller)
    r = await caller.get(f"/v1/content/{generation_id}", headers=prefer(value))
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "bse_invalid_input"
    assert r.json()["details"]["field"] == "Prefer"
    r = await caller.create_image(headers=prefer(value))
    assert r.status_code == 400 and r.json()["details"]["field"] == "Prefer"
    r = await caller.get("/v1/content/list")
    assert r.json()["total"] == 1  # the refused create made nothing


async def test_a_waiting_read_is_counted_once_by_the_rate_limit(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=SLOW, rate_limit_per_minute=100)
    caller = await h.caller()
    generation_id = await create(caller)
    before = await caller.get(f"/v1/content/{generation_id}")
    waited, _ = await timed_get(caller, generation_id, "wait=1")
    after = await caller.get(f"/v1/content/{generation_id}")
    remaining = [int(r.headers["x-ratelimit-remaining"]) for r in (before, waited, after)]
    assert remaining[0] - remaining[1] == 1 and remaining[1] - remaining[2] == 1, remaining


# -- creates ---------------------------------------------------------------------------------


async def test_create_waits_and_still_answers_the_create_envelope(harness_factory: Any) -> None:
    delay, n = 0.5, 10
    h: Harness = await harness_factory(
        local_provider_delay_seconds=delay, max_inflight_generations=1, **NOTIFIED_ONLY
    )
    caller = await h.caller()
    started = time.monotonic()
    r = await caller.create_image(headers={**prefer(f"wait={n}"), "Idempotency-Key": "wait-once"})
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.headers["preference-applied"] == f"wait={n}"
    data = r.json()["data"]
    assert data["generation_initialized"] is True and "generation_status" not in data
    assert elapsed < n / 2, elapsed
    # Answered once terminal: the next read finds the record done, and the in-flight slot free.
    record = (await caller.get(f"/v1/content/{data['generation_id']}")).json()["data"]
    assert record["generation_status"] == "succeeded"
    assert (await caller.create_image()).status_code == 200  # the cap of 1 is not held
    # A replay is the stored answer, and it waits as the first did (here: terminal, so at once).
    replay = await caller.create_image(headers={**prefer(f"wait={n}"), "Idempotency-Key": "wait-once"})
    assert replay.status_code == 200 and replay.content == r.content
    assert replay.headers["idempotency-replayed"] == "true"
    assert replay.headers["preference-applied"] == f"wait={n}"
    assert len(h.services.waiters) == 0


async def test_a_create_whose_wait_runs_out_is_still_accepted(harness_factory: Any) -> None:
    h: Harness = await harness_factory(local_provider_delay_seconds=SLOW)
    caller = await h.caller()
    started = time.monotonic()
    r = await caller.create_image(headers=prefer("wait=1"))
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.json()["data"]["generation_initialized"] is True
    assert r.headers["preference-applied"] == "wait=1"
    assert 1.0 <= elapsed < 3.0, elapsed
    record = (await caller.get(f"/v1/content/{r.json()['data']['generation_id']}")).json()["data"]
    assert record["generation_status"] in ("pending", "processing")
    assert len(h.services.waiters) == 0


# -- the document ----------------------------------------------------------------------------


async def test_the_document_declares_prefer_and_the_firewall_knows_it(settings_factory: Any) -> None:
    app = create_app(settings_factory())
    doc = app_spec(app)
    declared = {}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            names = {p["name"] for p in op.get("parameters", []) if p.get("in") == "header"}
            declared[op["operationId"]] = "Prefer" in names
            if "Prefer" in names:
                param = next(p for p in op["parameters"] if p["name"] == "Prefer")
                assert param["required"] is False and param["schema"]["type"] == "string"
                assert "Preference-Applied" in param["description"], (path, method)
    assert {op for op, has in declared.items() if has} == {"getContent", "generateImage", "generateVideo"}
    rules = compile_rules(doc, (path for path, _, _ in route_table(app)))
    ops = {op.path + " " + op.method: op for op in rules.operations()}
    assert b"prefer" in ops["/v1/content/{generation_id} GET"].headers
    assert b"prefer" not in ops["/v1/content/{generation_id} GET"].required_headers


async def test_a_real_connection_closed_mid_wait_ends_it(settings_factory: Any) -> None:
    """Under uvicorn: closing the socket reaches the waiting handler as ``http.disconnect``."""
    settings = settings_factory(local_provider_delay_seconds=SLOW, **NOTIFIED_ONLY)
    setup = create_app(settings)
    async with setup.router.lifespan_context(setup):
        db = setup.state.services.db
        account = await accounts.create_account(db, "Waiter", None, credits_millis=to_millis("10"))
        issued = await accounts.create_key(db, settings, account.id, "k", parse_scopes("full_access", None))
    app = create_app(settings)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        await until(lambda: server.started, timeout=30)
        waiters: LocalGenerationWaiters = app.state.services.waiters
        headers = {"Authorization": f"Bearer {issued.key}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            r = await client.post(IMAGE, json={"generation_prompt": "a fox"})
            assert r.status_code == 200, r.text
            generation_id = r.json()["data"]["generation_id"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"GET /v1/content/{generation_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {issued.key}\r\nPrefer: wait=25\r\n\r\n".encode()
        )
        await writer.drain()
        await until(lambda: waiters.waiting == 1)
        started = time.monotonic()
        writer.close()
        await until(lambda: waiters.waiting == 0 and len(waiters) == 0)
        assert time.monotonic() - started < 5
        assert await reader.read() == b""  # nothing was answered on the closed connection
    finally:
        server.should_exit = True
        await asyncio.get_running_loop().run_in_executor(None, thread.join, 30)
