"""Operability: /metrics (Prometheus, behind a token), /healthz and /readyz, in one process and
summed over the processes of ``serve --workers N``."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql import Select
from structlog.testing import capture_logs

from genplane.api import services as services_module
from genplane.api.app import create_app
from genplane.api.blocklist import ip_subject
from genplane.api.openapi import app_spec
from genplane.api.readiness import Readiness
from genplane.credits import ledger
from genplane.db.engine import Database
from genplane.db.migrate import upgrade
from genplane.metrics import backlog, instruments
from genplane.storage.store import FileStore, LocalFileStore
from tests.conftest import Caller, Harness
from tests.serve_process import Server
from tests.test_process_roles import children, until

TOKEN = "metrics-token-" + "x" * 24
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}
#: Nobody listens on port 1: a database or Redis there refuses every connection at once.
CLOSED_POSTGRES = "postgresql+asyncpg://genplane@127.0.0.1:1/gone"
CLOSED_REDIS = "redis://127.0.0.1:1/0"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def label_sets(samples: Samples, name: str) -> set[frozenset[tuple[str, str]]]:
    return {labels for sample, labels in samples if sample == name}


async def scrape(client: httpx.AsyncClient) -> Samples:
    r = await client.get("/metrics", headers=SCRAPE)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(r.text)


def readiness(h: Harness) -> Readiness:
    probe: Readiness = h.app.state.readiness
    probe.reuse_seconds = 0  # every probe below runs the checks afresh
    return probe


@contextlib.contextmanager
def checking(h: Harness, **replaced: Any) -> Iterator[Readiness]:
    """``/readyz`` checks ``replaced`` services (a database gone, a broken store) meanwhile."""
    probe = readiness(h)
    probe.services = dataclasses.replace(h.services, **replaced)
    try:
        yield probe
    finally:
        probe.services = h.services


# -- /metrics -------------------------------------------------------------------------------------


async def test_metrics_are_off_without_a_token(harness: Harness) -> None:
    r = await harness.client.get("/metrics", headers=SCRAPE)
    assert r.status_code == 404
    assert r.json()["error"] == "bse_route_not_found"


async def test_metrics_need_the_token(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(metrics_token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"}):
        r = await h.client.get("/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in r.text
    ok = await h.client.get("/metrics", headers=SCRAPE)
    assert ok.status_code == 200
    assert TOKEN not in ok.text


async def test_the_operators_endpoints_are_not_in_the_published_document(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(metrics_token=TOKEN)
    paths = set(app_spec(h.app)["paths"])
    assert {"/metrics", "/healthz", "/readyz"}.isdisjoint(paths)
    assert all(path.startswith("/v1/") for path in paths)


async def test_metrics_count_requests_generations_credits_and_the_queue(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(metrics_token=TOKEN)
    caller = await h.caller()
    before = await scrape(h.client)
    for _ in range(3):
        assert (await caller.get("/v1/status")).status_code == 200
    assert (await caller.get("/v1/content/list", params={"nope": "1"})).status_code == 400  # the firewall's
    created = await caller.create_image()
    assert created.status_code == 200, created.text
    record = await caller.wait(created.json()["data"]["generation_id"])
    assert record["generation_status"] == "succeeded"

    after = await scrape(h.client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("genplane_http_requests_total", operation="getStatus", status="200") == 3
    assert grew("genplane_http_request_seconds_count", operation="getStatus", status="200") == 3
    assert grew("genplane_http_requests_total", operation="listContent", status="400") == 1
    assert grew("genplane_http_requests_total", operation="generateImage", status="200") == 1
    assert grew(
        "genplane_generations_ended_total", model="local/preview-image", provider="local", outcome="succeeded"
    ) == 1
    assert grew("genplane_provider_attempt_seconds_count", provider="local", outcome="used") == 1
    assert grew("genplane_credits_reserved_total") == pytest.approx(0.002)
    assert grew("genplane_credits_charged_total") == pytest.approx(0.002)
    assert grew("genplane_credits_refunded_total") == 0
    # The scrapes and the probes are not requests of the API.
    assert not any(dict(labels).get("operation") in ("/metrics", "/healthz", "/readyz")
                   for labels in label_sets(after, "genplane_http_requests_total"))
    assert value(after, "genplane_queue_depth") == 0
    assert value(after, "genplane_queue_oldest_age_seconds") == 0
    assert value(after, "genplane_webhook_deliveries_pending") == 0


async def test_the_queue_gauges_read_the_generations_no_worker_claimed(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(metrics_token=TOKEN, run_worker=False)
    caller = await h.caller()
    for _ in range(2):
        assert (await caller.create_image()).status_code == 200
    samples = await scrape(h.client)
    assert value(samples, "genplane_queue_depth") == 2
    assert value(samples, "genplane_queue_oldest_age_seconds") > 0


async def test_labels_never_hold_an_id_or_a_raw_path(harness_factory: Callable[..., Any]) -> None:
    h: Harness = await harness_factory(metrics_token=TOKEN)
    caller = await h.caller()
    assert (await caller.get(f"/v1/content/{uuid.uuid4()}")).status_code == 404
    before = label_sets(await scrape(h.client), "genplane_http_requests_total")
    ids = [str(uuid.uuid4()) for _ in range(25)]
    for gid in ids:
        assert (await caller.get(f"/v1/content/{gid}")).status_code == 404
        assert (await caller.get(f"/no/such/{gid}")).status_code == 404
    r = await h.client.get("/metrics", headers=SCRAPE)
    after = label_sets(parse(r.text), "genplane_http_requests_total")
    assert len(after - before) <= 1  # ("unmatched", "404"), unless an earlier test added it
    assert frozenset({("operation", "getContent"), ("status", "404")}) in after
    assert not any(gid in r.text for gid in ids)


async def test_a_transaction_that_rolls_back_counts_nothing(harness: Harness, caller: Caller) -> None:
    reserved = REGISTRY.get_sample_value("genplane_credits_reserved_total") or 0.0

    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned):
        async with harness.services.db.write() as s:
            await ledger.reserve(s, caller.account_id, str(uuid.uuid4()), 1000)
            raise Abandoned
    assert REGISTRY.get_sample_value("genplane_credits_reserved_total") == reserved
    async with harness.services.db.write() as s:
        await ledger.reserve(s, caller.account_id, str(uuid.uuid4()), 1000)
    assert REGISTRY.get_sample_value("genplane_credits_reserved_total") == pytest.approx(reserved + 1)


@pytest.mark.parametrize(
    "statement",
    [backlog._QUEUED, backlog._OLDEST_QUEUED, backlog._DELIVERIES_PENDING],
    ids=["queued", "oldest_queued", "deliveries_pending"],
)
def test_the_backlog_is_read_by_index_never_by_scanning_a_table(
    tmp_path: Path, statement: Select[Any]
) -> None:
    """SQLite's plan, on a schema the migrations built (PostgreSQL's planner picks by the table's size)."""
    path = tmp_path / "plan.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    sql = str(statement.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with closing(sqlite3.connect(path)) as con:
        plan = [row[-1] for row in con.execute(f"EXPLAIN QUERY PLAN {sql}")]
    assert plan and all(step.startswith("SEARCH") and "INDEX" in step for step in plan), plan


# -- /healthz and /readyz -------------------------------------------------------------------------


async def test_healthz_and_readyz_answer_200(harness: Harness) -> None:
    live = await harness.client.get("/healthz")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    ready = await harness.client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


async def test_readyz_names_the_database_when_it_is_gone(harness: Harness) -> None:
    gone = Database(CLOSED_POSTGRES)
    try:
        with checking(harness, db=gone):
            r = await harness.client.get("/readyz")
    finally:
        await gone.dispose()
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "failed": ["database"]}
    assert (await harness.client.get("/readyz")).status_code == 200
    assert (await harness.client.get("/healthz")).status_code == 200


async def test_readyz_names_storage_that_fails(harness: Harness, tmp_path: Path) -> None:
    root = tmp_path / "files"
    broken = LocalFileStore(root, "http://testserver")
    shutil.rmtree(root)
    root.write_text("a file where the store's folder was")
    with checking(harness, store=broken), capture_logs() as logs:
        r = await harness.client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "failed": ["storage"]}
    assert str(tmp_path) not in r.text
    assert [e["check"] for e in logs if e["event"] == "readiness_check_failed"] == ["storage"]


async def test_readyz_bounds_a_check_that_hangs(harness: Harness) -> None:
    class HangingStore:
        async def health(self) -> None:
            await asyncio.Event().wait()

    with checking(harness, store=cast(FileStore, HangingStore())) as probe:
        probe.timeout = 0.2
        r = await harness.client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["failed"] == ["storage"]


async def test_readyz_pings_redis_when_configured(
    harness_factory: Callable[..., Any], redis_url: str
) -> None:
    h: Harness = await harness_factory(redis_url=redis_url)
    readiness(h)
    assert (await h.client.get("/readyz")).status_code == 200
    closed = Redis.from_url(CLOSED_REDIS)
    try:
        with checking(h, redis=closed):
            r = await h.client.get("/readyz")
    finally:
        await closed.aclose()
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "failed": ["redis"]}


async def test_readyz_answers_503_from_the_start_of_shutdown(settings_factory: Callable[..., Any]) -> None:
    app = create_app(settings_factory())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
    services = app.state.services
    during: list[httpx.Response] = []
    stop = services.stop

    async def stop_observed(drain_seconds: float = 0.0) -> None:
        during.append(await client.get("/readyz"))  # the services still run: only the flag says no
        await stop(drain_seconds)

    services.stop = stop_observed
    ctx = app.router.lifespan_context(app)
    await ctx.__aenter__()
    try:
        assert (await client.get("/readyz")).status_code == 200
    finally:
        await ctx.__aexit__(None, None, None)
        await client.aclose()
    assert [(r.status_code, r.json()["status"]) for r in during] == [(503, "stopping")]


async def test_probes_pass_the_firewall_even_from_a_blocked_address(
    harness_factory: Callable[..., Any],
) -> None:
    h: Harness = await harness_factory(metrics_token=TOKEN)
    caller = await h.caller()
    with capture_logs() as logs:
        for _ in range(3):
            assert (await h.client.get("/healthz")).status_code == 200
            assert (await h.client.get("/readyz")).status_code == 200
            assert (await h.client.get("/metrics", headers=SCRAPE)).status_code == 200
            assert (await h.client.get("/metrics")).status_code == 401
    assert [e for e in logs if e["event"] == "firewall_rejected"] == []
    await h.services.blocklist.block(ip_subject("127.0.0.1"), 60)
    assert (await h.client.get("/v1/status")).status_code == 403  # no key: the address's block holds
    assert (await h.client.get("/healthz")).status_code == 200
    assert (await h.client.get("/readyz")).status_code == 200
    assert (await caller.get("/v1/status")).status_code == 200  # a working key is judged as itself


# -- serve --workers N ---------------------------------------------------------------------------


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [entry.decode().partition("=") for entry in f.read().split(b"\0") if entry]
    return {name: val for name, _, val in pairs}


def status_requests_in(directory: str, pid: int) -> float:
    """The getStatus 200s one process counted, from its own file in the multiprocess directory."""
    path = os.path.join(directory, f"counter_{pid}.db")
    if not os.path.exists(path):
        return 0.0
    for family in MultiProcessCollector.merge([path]):
        for sample in family.samples:
            if sample.name == "genplane_http_requests_total" and sample.labels == {
                "operation": "getStatus", "status": "200"
            }:
                return float(sample.value)
    return 0.0


def test_serve_workers_metrics_sum_the_requests_of_every_process(server: Server) -> None:
    key = server.init()
    server.start("--workers", "2", GENPLANE_METRICS_TOKEN=TOKEN)
    assert server.proc is not None
    parent = server.proc.pid
    until(lambda: len(children(parent)) == 2)
    kids = children(parent)
    directory = {environ_of(pid)["PROMETHEUS_MULTIPROC_DIR"] for pid in kids}.pop()
    assert os.path.isdir(directory)
    headers = {"Authorization": f"Bearer {key}"}
    # A connection per request, so that the kernel spreads them over both processes.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.base_url, trust_env=False, timeout=10, limits=fresh) as client:

        def scraped() -> float:
            r = client.get("/metrics", headers=SCRAPE)
            assert r.status_code == 200, r.text
            return value(parse(r.text), "genplane_http_requests_total", operation="getStatus", status="200")

        assert scraped() == 0
        sent = 0
        while sent < 20 or not all(status_requests_in(directory, pid) > 0 for pid in kids):
            assert client.get("/v1/status", headers=headers).status_code == 200
            sent += 1
            assert sent < 2000, "one process answered every request"
        until(lambda: sum(status_requests_in(directory, pid) for pid in kids) == sent)
        for _ in range(6):  # whichever process answers the scrape counts both
            assert scraped() == sent
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=60) == 0
    server.proc = None
    assert not os.path.exists(directory)  # the supervisor's own directory goes with it


async def test_a_metric_that_fails_to_record_never_fails_the_transaction(
    harness: Harness, caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gone(amount: float = 1.0) -> None:
        raise OSError("the multiprocess directory was removed")

    monkeypatch.setattr(instruments.CREDITS_RESERVED, "inc", gone)
    monkeypatch.setattr(instruments, "_failed", set())  # logged once per place: as if none failed yet
    balance = await ledger.balance_millis(harness.services.db, caller.account_id)
    with capture_logs() as logs:
        async with harness.services.db.write() as s:
            await ledger.reserve(s, caller.account_id, str(uuid.uuid4()), 1000)
    assert await ledger.balance_millis(harness.services.db, caller.account_id) == balance - 1000
    assert [e["where"] for e in logs if e["event"] == "metrics_recording_failed"] == ["on_commit"]


async def test_a_part_that_does_not_stop_is_logged_and_shutdown_goes_on() -> None:
    """A stopping process never hangs on one of its parts: it names it and goes on."""
    never = asyncio.Event()
    with capture_logs() as logs:
        await services_module._bounded("stuck", never.wait(), seconds=0.05)
    assert [(e["event"], e["part"]) for e in logs] == [("stop_timed_out", "stuck")]
