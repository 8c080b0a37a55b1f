"""Sequence analytics bound to the key: each key's requests kept in a ring buffer, patterns flagged
(id enumeration, polling storms, failed-create bursts), flags stored and listed by
``genplane keys anomalies``, and keys blocked for them only when the operator says so.

The detectors are driven with a fake clock first (so "every 0.5 s for a minute" takes no
time), then through the real app with small thresholds from settings. Nothing asserts how
long anything took; stored flags are awaited with a deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs
from typer.testing import CliRunner

from genplane.api.blocklist import key_subject
from genplane.clock import as_utc
from genplane.db.models import KeyAnomaly
from genplane.settings import Settings, get_settings
from genplane.usage.anomalies import list_anomalies
from genplane.usage.sequences import (
    CONTENT_ID,
    CONTENT_READ,
    CREATE,
    POLL,
    SequenceAnalytics,
    classify,
)
from tests.conftest import Caller, Harness
from tests.test_cli import Cli

IMAGE = "/v1/generate/image/local/preview-image"
GET_CONTENT = POLL | CONTENT_READ | CONTENT_ID
DELETE_CONTENT = CONTENT_ID


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def analytics(tmp_path: Path, clock: Clock, **overrides: Any) -> SequenceAnalytics:
    """The default thresholds, but for enumeration (10) and failed creates (8): shorter tests."""
    values: dict[str, Any] = {
        "anomaly_enumeration_threshold": 10,
        "anomaly_failed_create_threshold": 8,
    }
    values.update(overrides)
    return SequenceAnalytics(Settings(data_dir=tmp_path, **values), clock=clock)


def send(
    a: SequenceAnalytics, kind: int, status: int, target: str | None = None, key: str = "k1"
) -> list[Any]:
    return a.record(key, "bye_us_ab", "acct1", "op", kind, status, target)


def patterns(a: SequenceAnalytics) -> list[tuple[str, str | None, int]]:
    return sorted((f.pattern, f.detail, f.count) for f in a.open_flags())


def random_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """The ``genplane`` command on the data directory the harness's apps use."""
    yield Cli(tmp_path / "data", CliRunner(), monkeypatch)
    get_settings.cache_clear()


# --- the buffer ------------------------------------------------------------------------------------


def test_operations_are_classified_from_method_and_path() -> None:
    assert classify("GET", "/v1/content/{generation_id}") == POLL | CONTENT_READ | CONTENT_ID
    assert classify("DELETE", "/v1/content/{generation_id}") == CONTENT_ID
    assert classify("POST", "/v1/content/generation/cancel/{generation_id}") == CONTENT_ID
    assert classify("GET", "/v1/content/list") == CONTENT_READ
    assert classify("POST", "/v1/generate/image/{model_identifier}") == CREATE
    assert classify("POST", "/v1/generate/video/{model_identifier}") == CREATE
    assert classify("GET", "/v1/status") == 0
    assert classify("GET", "/v1/estimate/{model_identifier}") == 0


def test_the_history_is_a_bounded_ring_oldest_first(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(
        tmp_path,
        clock,
        anomaly_history_size=16,
        anomaly_enumeration_threshold=16,
        anomaly_polling_threshold=16,
        anomaly_content_reads_threshold=16,
        anomaly_failed_create_threshold=16,
    )
    for i in range(100):
        clock.now += 1
        a.record("k1", "bye_us_ab", "acct1", f"op{i}", 0, 200 + i)
    history = a.history("k1")
    assert len(history) == 16
    assert [e.operation for e in history] == [f"op{i}" for i in range(84, 100)]
    assert [e.status for e in history] == [200 + i for i in range(84, 100)]
    assert [e.at for e in history] == sorted(e.at for e in history)
    assert a.history("unknown") == []


@pytest.mark.parametrize("seed", range(5))
def test_window_counts_match_a_plain_count_across_wraps(tmp_path: Path, seed: int) -> None:
    """The binary search over the ring's two runs and the C-level counts agree with counting
    the entries one by one, wherever the ring's head is."""
    rng = random.Random(seed)
    clock = Clock()
    a = analytics(
        tmp_path,
        clock,
        anomaly_history_size=16,
        anomaly_enumeration_threshold=16,
        anomaly_polling_threshold=16,
        anomaly_content_reads_threshold=16,
        anomaly_failed_create_threshold=16,
    )
    ids = ["a", "b", "c"]
    kinds = [
        (GET_CONTENT, 200),
        (GET_CONTENT, 404),
        (CREATE, 422),
        (CREATE, 200),
        (CONTENT_READ, 200),
        (0, 200),
    ]
    for sent in range(1, 401):
        clock.now += rng.choice([0.0, 0.1, 0.5, 1.0, 3.0])
        kind, status = rng.choice(kinds)
        send(a, kind, status, rng.choice(ids))
        history = a._histories["k1"]
        entries = history.entries()
        assert len(entries) == min(16, sent)
        assert [e.at for e in entries] == sorted(e.at for e in entries)
        for window in (0.5, 2.0, 5.0, 100.0):
            horizon = clock.now - window
            ranges = history.window(horizon)
            inside = [e for e in entries if e.at >= horizon]
            assert sum(hi - lo for lo, hi in ranges) == len(inside)
            for gid in ids:
                assert history.count(ranges, 4, gid) == sum(e.target == gid for e in inside)
            not_found = sum(e.status == 404 for e in inside)
            assert history.count(ranges, 1) == not_found
            failed = sum(e.status == 422 for e in inside)
            assert history.count(ranges, 8) == failed


def test_histories_of_many_keys_stay_bounded(tmp_path: Path) -> None:
    clock = Clock()
    a = SequenceAnalytics(Settings(data_dir=tmp_path), clock=clock, max_keys=50)
    for i in range(500):
        clock.now += 1
        a.record(f"key{i}", "bye_us_ab", "acct1", "op", 0, 200)
    assert len(a._histories) <= 50
    assert a.history("key499") != []


def test_thresholds_must_fit_in_the_history(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="anomaly_history_size"):
        Settings(data_dir=tmp_path, anomaly_history_size=32, anomaly_polling_threshold=40)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", []),
        ("all", ["id_enumeration", "polling_storm", "failed_create_burst"]),
        ("id_enumeration, polling_storm", ["id_enumeration", "polling_storm"]),
        ('["failed_create_burst"]', ["failed_create_burst"]),
    ],
)
def test_auto_block_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, expected: list[str]
) -> None:
    monkeypatch.setenv("GENPLANE_ANOMALY_AUTO_BLOCK", value)
    assert Settings(data_dir=tmp_path).anomaly_auto_block == expected


def test_unknown_auto_block_pattern_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        Settings(data_dir=tmp_path, anomaly_auto_block="id_enumeration,scraping")


# --- the detectors, on a fake clock --------------------------------------------------------------------


def test_id_enumeration_is_flagged_at_the_threshold(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock)
    for _ in range(9):
        clock.now += 1
        send(a, GET_CONTENT, 404, random_id())
    assert patterns(a) == []
    clock.now += 1
    send(a, DELETE_CONTENT, 404, random_id())  # delete and cancel count as well
    (flag,) = a.open_flags()
    assert (flag.pattern, flag.count, flag.key_id, flag.key_prefix, flag.account_id) == (
        "id_enumeration",
        10,
        "k1",
        "bye_us_ab",
        "acct1",
    )
    assert (flag.last_seen_at - flag.first_seen_at).total_seconds() == pytest.approx(9, abs=0.01)
    assert flag.blocked_until is None


def test_a_few_404s_among_normal_traffic_are_not_enumeration(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock)
    own = [random_id() for _ in range(5)]
    for minute in range(10):
        for gid in own:
            clock.now += 0.5
            send(a, GET_CONTENT, 200, gid)
        for _ in range(3):  # a few deleted generations asked about, every minute
            clock.now += 0.5
            send(a, GET_CONTENT, 404, random_id())
        clock.now += 60 - 4
        assert patterns(a) == [], minute
    # 404s spread thinner than the window never add up, however many there are.
    for _ in range(50):
        clock.now += 7
        send(a, GET_CONTENT, 404, random_id())
    assert patterns(a) == []


def test_polling_every_half_second_is_not_a_storm(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock)
    gid = random_id()
    for _ in range(1200):  # ten minutes, the ring buffer wrapping round several times
        clock.now += 0.5
        send(a, GET_CONTENT, 200, gid)
    assert patterns(a) == []


def test_polling_storm_on_one_generation(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock)
    gid, other = random_id(), random_id()
    calm = random_id()
    for _ in range(1000):  # a calm start first: the ring has wrapped when the storm comes
        clock.now += 1
        send(a, GET_CONTENT, 200, calm)
    clock.now += 10
    for _ in range(39):
        clock.now += 0.1
        send(a, GET_CONTENT, 200, gid)
        send(a, GET_CONTENT, 200, other)  # two ids at 10/s each: 39 of each so far
    assert patterns(a) == []
    clock.now += 0.1
    send(a, GET_CONTENT, 200, gid)
    assert patterns(a) == [("polling_storm", gid, 40)]
    # It goes on: the same episode grows.
    for _ in range(5):
        clock.now += 0.1
        send(a, GET_CONTENT, 200, gid)
    (flag,) = a.open_flags()
    assert flag.count == 45


def test_polling_storm_over_all_content(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock, anomaly_content_reads_threshold=60)
    ids = [random_id() for _ in range(30)]
    for round_ in range(2):  # 30 generations polled each once per 5 s is 60 reads in 10 s
        for gid in ids:
            clock.now += 5 / 30
            send(a, GET_CONTENT, 200, gid)
        if round_ == 0:
            assert patterns(a) == []
    assert patterns(a) == [("polling_storm", "content reads", 60)]


def test_list_reads_count_towards_the_content_rate(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock, anomaly_content_reads_threshold=60)
    for _ in range(60):
        clock.now += 0.1
        send(a, CONTENT_READ, 200)
    assert patterns(a) == [("polling_storm", "content reads", 60)]


def test_failed_create_burst(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock)
    for status in (200, 200, 429, 429, 429, 429, 429, 429, 429, 429, 429):  # throttled: not failures
        clock.now += 1
        send(a, CREATE, status)
    for status in (422, 400, 402, 404, 422, 422, 422):
        clock.now += 1
        send(a, CREATE, status)
    assert patterns(a) == []
    clock.now += 1
    send(a, CREATE, 422)
    assert patterns(a) == [("failed_create_burst", None, 8)]


def test_server_errors_on_create_are_not_the_clients_fault(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock)
    for _ in range(30):
        clock.now += 1
        send(a, CREATE, 502)
    assert patterns(a) == []


def test_a_pattern_that_stops_and_returns_is_a_new_episode(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock)
    for _ in range(10):
        clock.now += 1
        send(a, GET_CONTENT, 404, random_id())
    first = a.take_dirty()
    assert [f.count for f in first] == [10]
    clock.now += 1
    send(a, GET_CONTENT, 404, random_id())
    (grown,) = a.take_dirty()
    assert (grown.id, grown.count) == (first[0].id, 11)
    assert a.take_dirty() == []  # nothing new to write

    clock.now += 600
    for _ in range(10):
        clock.now += 1
        send(a, GET_CONTENT, 404, random_id())
    (again,) = a.take_dirty()
    assert again.id != first[0].id
    assert again.count == 10


def test_patterns_are_bound_to_the_key(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock)
    for i in range(10):  # 10 404s in all, but 5 per key
        clock.now += 1
        send(a, GET_CONTENT, 404, random_id(), key=f"k{i % 2}")
    assert patterns(a) == []


def test_auto_block_returns_only_flags_of_the_chosen_patterns(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock, anomaly_auto_block=["failed_create_burst"])
    blocked: list[Any] = []
    for _ in range(10):
        clock.now += 1
        blocked += send(a, GET_CONTENT, 404, random_id())
    assert blocked == []
    assert [f.blocked_until for f in a.open_flags()] == [None]
    for _ in range(8):
        clock.now += 1
        blocked += send(a, CREATE, 422)
    assert [f.pattern for f in blocked] == ["failed_create_burst"]
    assert blocked[0].blocked_until is not None
    # Further failures extend the episode; they do not block again.
    clock.now += 1
    assert send(a, CREATE, 422) == []


def test_detection_can_be_turned_off(tmp_path: Path) -> None:
    clock = Clock()
    a = analytics(tmp_path, clock, anomaly_detection_enabled=False)
    for _ in range(50):
        clock.now += 0.1
        send(a, GET_CONTENT, 404, random_id())
    assert patterns(a) == []
    assert a.history("k1") == []


# --- through the app ------------------------------------------------------------------------------------

SMALL = {
    "anomaly_enumeration_threshold": 5,
    "anomaly_polling_threshold": 6,
    "anomaly_content_reads_threshold": 50,
    "anomaly_failed_create_threshold": 4,
}


async def stored(h: Harness, expect: int = 1, timeout: float = 10.0, **filters: Any) -> list[KeyAnomaly]:
    """The stored flags, once at least ``expect`` are there (written in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await list_anomalies(h.services.db, **filters)
        if len(rows) >= expect:
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(rows)} stored flags after {timeout}s, expected {expect}")
        await asyncio.sleep(0.05)


async def enumerate_ids(c: Caller, n: int) -> list[httpx.Response]:
    return [await c.get(f"/v1/content/{random_id()}") for _ in range(n)]


async def test_the_app_records_each_keys_sequence(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(run_worker=False)
    owner = await h.caller()
    created = await owner.create_image()
    gid = created.json()["data"]["generation_id"]
    await owner.get(f"/v1/content/{gid}")
    await owner.get("/v1/status")
    await owner.get("/v1/content/not-a-generation")
    monitor = await h.key_for(owner, preset="monitor_only")
    await monitor.get("/v1/status")  # 403: another key's sequence
    await h.client.get("/v1/status")  # no key: nobody's sequence
    history = h.services.anomalies.analytics.history(owner.key_id)
    assert [(e.operation, e.status, e.target) for e in history] == [
        ("generateImage", 200, None),
        ("getContent", 200, gid),
        ("getStatus", 200, None),
        ("getContent", 404, "not-a-generation"),
    ]
    assert [(e.operation, e.status) for e in h.services.anomalies.analytics.history(monitor.key_id)] == [
        ("getStatus", 403)
    ]


async def test_enumeration_is_flagged_stored_and_listed_by_the_cli(
    harness_factory: Callable[..., Any], cli: Cli
) -> None:
    h: Harness = await harness_factory(**SMALL)
    owner = await h.caller()
    bystander = await h.caller()
    with capture_logs() as logs:
        assert {r.status_code for r in await enumerate_ids(owner, 5)} == {404}
    flagged = [e for e in logs if e["event"] == "anomaly_flagged"]
    assert [(e["pattern"], e["key_prefix"], e["count"]) for e in flagged] == [
        ("id_enumeration", owner.key[:9], 5)
    ]
    assert all(owner.key not in str(e) for e in logs)
    # The key is not blocked: the operator did not ask for it.
    assert {r.status_code for r in await enumerate_ids(owner, 3)} == {404}
    await bystander.get("/v1/status")

    deadline = time.monotonic() + 10
    while True:
        (row,) = await stored(h)
        if row.count == 8 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert (row.key_id, row.key_prefix, row.account_id, row.pattern, row.count) == (
        owner.key_id,
        owner.key[:9],
        owner.account_id,
        "id_enumeration",
        8,
    )
    assert as_utc(row.first_seen_at) <= as_utc(row.last_seen_at)
    assert row.blocked_until is None

    out = await asyncio.to_thread(cli.ok, "keys", "anomalies")
    assert owner.key_id in out and owner.account_id in out and "id_enumeration" in out
    assert owner.key[:9] in out and owner.key[9:] not in out
    assert bystander.account_id not in out
    only_other = await asyncio.to_thread(cli.ok, "keys", "anomalies", "--account", bystander.account_id)
    assert "no anomalies" in only_other
    by_pattern = await asyncio.to_thread(cli.ok, "keys", "anomalies", "--pattern", "polling_storm")
    assert "no anomalies" in by_pattern
    refused = await asyncio.to_thread(cli.run, "keys", "anomalies", "--pattern", "scraping")
    assert refused.exit_code != 0 and "unknown pattern" in refused.output


async def test_polling_storm_and_failed_creates_through_the_app(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(run_worker=False, **SMALL)
    owner = await h.caller()
    gid = (await owner.create_image()).json()["data"]["generation_id"]
    for _ in range(6):
        assert (await owner.get(f"/v1/content/{gid}")).status_code == 200
    for _ in range(4):
        r = await owner.post("/v1/generate/image/acme/nothing", json={"generation_prompt": "x"})
        assert r.status_code == 404
    rows = await stored(h, expect=2, account_id=owner.account_id)
    assert sorted((r.pattern, r.detail, r.count) for r in rows) == [
        ("failed_create_burst", None, 4),
        ("polling_storm", gid, 6),
    ]


async def test_ordinary_client_raises_no_flag(harness_factory: Callable[..., Any]) -> None:
    """Create, poll until done, list, read the account, meet a couple of 404s: nothing to flag."""
    h: Harness = await harness_factory()
    owner = await h.caller()
    for _ in range(3):
        gid = (await owner.create_image()).json()["data"]["generation_id"]
        while (await owner.get(f"/v1/content/{gid}")).json()["data"]["generation_status"] not in (
            "succeeded",
            "failed",
        ):
            await asyncio.sleep(0.5)
    await owner.get("/v1/content/list")
    await owner.get("/v1/usage")
    await enumerate_ids(owner, 2)
    await h.services.anomalies.flush()
    assert h.services.anomalies.analytics.open_flags() == []
    assert await list_anomalies(h.services.db) == []


async def test_auto_block_blocks_only_that_key(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(anomaly_auto_block=["id_enumeration"], **SMALL)
    owner = await h.caller()
    sibling = await h.key_for(owner, preset="full_access")  # same account, another key
    stranger = await h.caller()
    with capture_logs() as logs:
        await enumerate_ids(owner, 5)
    assert [e["pattern"] for e in logs if e["event"] == "anomaly_blocked"] == ["id_enumeration"]

    blocked = await owner.get("/v1/status")
    assert blocked.status_code == 403
    body = blocked.json()
    assert body["error"] == "bse_request_blocked"
    retry = int(blocked.headers["Retry-After"])
    assert 1 <= retry <= 300
    assert body["details"]["retry_after_seconds"] == retry
    assert await h.services.blocklist.blocked_for(key_subject(owner.key)) > 0

    assert (await sibling.get("/v1/status")).status_code == 200
    assert (await stranger.get("/v1/status")).status_code == 200
    (row,) = await stored(h)
    assert row.key_id == owner.key_id
    assert row.blocked_until is not None


async def test_auto_block_only_for_the_chosen_patterns(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(anomaly_auto_block=["failed_create_burst"], **SMALL)
    owner = await h.caller()
    assert {r.status_code for r in await enumerate_ids(owner, 8)} == {404}
    assert (await owner.get("/v1/status")).status_code == 200
    (row,) = await stored(h)
    assert (row.pattern, row.blocked_until) == ("id_enumeration", None)


async def test_auto_block_without_the_firewall(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(firewall_enabled=False, anomaly_auto_block=["all"], **SMALL)
    owner = await h.caller()
    sibling = await h.key_for(owner, preset="full_access")
    await enumerate_ids(owner, 5)
    blocked = await owner.get("/v1/status")
    assert blocked.status_code == 403
    assert blocked.json()["error"] == "bse_request_blocked"
    assert int(blocked.headers["Retry-After"]) >= 1
    assert (await sibling.get("/v1/status")).status_code == 200


async def test_flags_written_at_shutdown(harness_factory: Callable[..., Any], settings_factory: Any) -> None:
    """A flag not yet written when the app stops is written on the way out."""
    from genplane.api.app import create_app
    from genplane.db.engine import Database

    settings = settings_factory(usage_flush_interval_seconds=3600, **SMALL)
    app = create_app(settings)
    ctx = app.router.lifespan_context(app)
    await ctx.__aenter__()
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    h = Harness(app, app.state.services, httpx.AsyncClient(transport=transport, base_url="http://testserver"))
    owner = await h.caller()
    await enumerate_ids(owner, 5)
    await h.client.aclose()
    await ctx.__aexit__(None, None, None)
    db = Database(settings.resolved_database_url)
    try:
        rows = await list_anomalies(db)
    finally:
        await db.dispose()
    assert [(r.key_id, r.pattern) for r in rows] == [(owner.key_id, "id_enumeration")]
