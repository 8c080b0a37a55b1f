"""The list's total is a per-account counter kept exact by the lifecycle; its page is an index range.

``accounts.generations_total`` moves in the transaction that inserts (``lifecycle.admit``) or
deletes (``lifecycle.delete_row``) a generation, so it equals the account's rows through
creates, refusals, deletes and concurrent requests, on SQLite and on PostgreSQL. The list
reads it instead of counting the account's history, and its page, like the usage report's
reads, is served by an index (checked with the query plans).
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from genplane.api.services import Services
from genplane.db.models import Account, Generation
from genplane.generations import lifecycle
from genplane.usage.report import usage_report
from tests import postgres
from tests.conftest import Caller, Harness

IMAGE = "/v1/generate/image/local/preview-image"
RECORD_KEYS = {"generation_id", "generation_status", "generation_created_at", "generation_output_file"}


async def counts(services: Services, account_id: str) -> tuple[int, int, int]:
    """(the counter, the rows, the list's total) of one account."""
    async with services.db.read() as s:
        counter = await s.scalar(select(Account.generations_total).where(Account.id == account_id))
        rows = await s.scalar(
            select(func.count()).select_from(Generation).where(Generation.account_id == account_id)
        )
    _, total = await services.generations.list(account_id, 1, 0)
    return int(counter or 0), int(rows or 0), total


async def create(caller: Caller, prompt: str = "a red fox") -> tuple[int, str | None]:
    r = await caller.post(IMAGE, json={"generation_prompt": prompt})
    return r.status_code, (r.json()["data"]["generation_id"] if r.status_code == 200 else None)


async def test_counter_follows_creates_refusals_and_deletes(
    database: dict[str, Any], harness_factory: Any
) -> None:
    h: Harness = await harness_factory(**database)
    caller = await h.caller(credits="0.01")  # five previews at 0.002
    other = await h.caller()
    created = []
    for i in range(6):
        status, gid = await create(caller, f"item {i}")
        if gid:
            created.append(gid)
        else:
            assert status == 402  # the sixth: refused for credits, in the admitting transaction
    assert len(created) == 5
    assert await counts(h.services, caller.account_id) == (5, 5, 5)
    await create(other)
    assert await counts(h.services, other.account_id) == (1, 1, 1)

    for gid in created[:2]:
        await caller.wait(gid)
        assert (await caller.delete(f"/v1/content/{gid}")).status_code == 200
        assert (await caller.delete(f"/v1/content/{gid}")).status_code == 404  # gone: counted once
    assert (await other.delete(f"/v1/content/{created[2]}")).status_code == 404  # not the owner's
    assert await counts(h.services, caller.account_id) == (3, 3, 3)
    assert await counts(h.services, other.account_id) == (1, 1, 1)

    listed = await caller.get("/v1/content/list", params={"limit": 2, "offset": 1})
    assert listed.json()["total"] == 3
    assert [g["generation_id"] for g in listed.json()["data"]["generations"]] == created[3:1:-1]


async def test_counter_exact_under_concurrent_creates_at_the_cap(
    database: dict[str, Any], harness_factory: Any
) -> None:
    """40 concurrent creates under a cap of 5, none finishing meanwhile: exactly 5 admitted
    (PostgreSQL let 29 through when the admit counted, then inserted, under READ COMMITTED)."""
    h: Harness = await harness_factory(
        max_inflight_generations=5, local_provider_delay_seconds=120.0, **database
    )
    caller = await h.caller()
    results = await asyncio.gather(*(create(caller, f"burst {i}") for i in range(40)))
    accepted = [gid for status, gid in results if gid]
    assert {status for status, gid in results if not gid} == {429}
    assert len(accepted) == 5
    assert await counts(h.services, caller.account_id) == (5, 5, 5)
    assert await in_flight(h.services, caller.account_id) == (5, 5)
    for gid in accepted:
        assert (await caller.post(f"/v1/content/generation/cancel/{gid}")).status_code == 200
    assert await in_flight(h.services, caller.account_id) == (0, 0)
    assert await counts(h.services, caller.account_id) == (5, 5, 5)


async def in_flight(services: Services, account_id: str) -> tuple[int, int]:
    """(the in-flight counter, the account's pending and processing rows)."""
    async with services.db.read() as s:
        counter = await s.scalar(select(Account.generations_in_flight).where(Account.id == account_id))
        rows = await s.scalar(
            select(func.count())
            .select_from(Generation)
            .where(Generation.account_id == account_id, Generation.status.in_(lifecycle.ACTIVE))
        )
    return int(counter or 0), int(rows or 0)


async def test_in_flight_counter_follows_every_ending_once(
    database: dict[str, Any], harness_factory: Any
) -> None:
    """Admits raise it below the cap only; success, failure and cancel each lower it once."""
    h: Harness = await harness_factory(run_worker=False, max_inflight_generations=3, **database)
    caller = await h.caller()
    other = await h.caller()
    gids = [gid for _, gid in [await create(caller, f"job {i}") for i in range(3)]]
    assert await create(caller) == (429, None)  # at the cap: refused, nothing counted
    await create(other)
    assert await in_flight(h.services, caller.account_id) == (3, 3)
    db = h.services.db

    async with db.write() as s:
        first = await lifecycle.claim(s, str(gids[0]), "worker-a", 30)
        assert first is not None and await lifecycle.succeed(s, first, "worker-a", "local", [], None)
    async with db.write() as s:
        assert not await lifecycle.succeed(s, first, "worker-a", "local", [], None)
        assert not await lifecycle.fail(s, first, "bse_provider_error", "late", None)
    assert await in_flight(h.services, caller.account_id) == (2, 2)

    async with db.write() as s:
        second = await s.get(Generation, gids[1])
        assert second is not None and await lifecycle.fail(s, second, "bse_provider_error", "broke", None)
    assert await in_flight(h.services, caller.account_id) == (1, 1)

    assert (await caller.post(f"/v1/content/generation/cancel/{gids[2]}")).status_code == 200
    assert (await caller.post(f"/v1/content/generation/cancel/{gids[2]}")).status_code == 409
    assert await in_flight(h.services, caller.account_id) == (0, 0)
    assert await in_flight(h.services, other.account_id) == (1, 1)  # another account's is its own
    assert (await create(caller))[0] == 200  # room again


async def test_counter_exact_under_concurrent_deletes_of_one_generation(
    database: dict[str, Any], harness_factory: Any
) -> None:
    h: Harness = await harness_factory(**database)
    caller = await h.caller()
    gids = [gid for _, gid in [await create(caller, f"keep {i}") for i in range(3)]]
    for gid in gids:
        assert gid is not None
        await caller.wait(gid)
    statuses = await asyncio.gather(*(caller.delete(f"/v1/content/{gids[0]}") for _ in range(6)))
    assert 200 in {r.status_code for r in statuses} <= {200, 404}
    assert await counts(h.services, caller.account_id) == (2, 2, 2)


async def test_list_reads_the_counter_not_a_count(harness: Harness, caller: Caller) -> None:
    await create(caller)
    statements = await _issued(
        harness.services, lambda: harness.services.generations.list(caller.account_id, 50, 0)
    )
    assert statements, "the list issued no statement"
    assert not [sql for sql, _ in statements if "count(" in sql.lower()], statements


async def test_deep_pages_continue_the_first_pages_exactly(
    database: dict[str, Any], harness_factory: Any
) -> None:
    """Past offset 1,000 the page's ids come off the index first; the order must not change,
    ties on created_at included (broken by id, descending)."""
    h: Harness = await harness_factory(**database)
    caller = await h.caller()
    other = await h.caller()
    _, gid = await create(caller)
    assert gid is not None
    record = await caller.wait(gid)
    async with h.services.db.read() as s:
        template = await s.get(Generation, gid)
    assert template is not None
    columns = {c.key: getattr(template, c.key) for c in Generation.__table__.columns}
    base = template.created_at
    rows = []
    for i in range(1_200):  # 3 rows per instant: the id decides their order
        stamp = base - timedelta(seconds=1 + i // 3)
        rows.append({**columns, "id": f"{i % 3}-{uuid.uuid4()}", "created_at": stamp})
    rows += [{**r, "id": f"x-{r['id']}", "account_id": other.account_id} for r in rows[:100]]
    async with h.services.db.write() as s:  # history written straight in: the counter set to match
        await s.execute(Generation.__table__.insert(), rows)
        await s.execute(
            Account.__table__.update()
            .where(Account.id == caller.account_id)
            .values(generations_total=Account.generations_total + 1_200)
        )
    expected = [gid] + [
        r["id"] for r in sorted(rows[:1_200], key=lambda r: (r["created_at"], r["id"]), reverse=True)
    ]
    listed: list[str] = []
    for offset in range(900, 1_201, 100):  # pages on both sides of the switch at 1,000
        page, total = await h.services.generations.list(caller.account_id, 100, offset)
        assert total == 1_201
        listed += [g["generation_id"] for g in page]
    assert listed == expected[900:]
    deep, _ = await h.services.generations.list(caller.account_id, 2, 1_000)
    assert deep[0]["generation_id"] == expected[1_000] and RECORD_KEYS <= set(deep[0])
    assert {k: v for k, v in deep[0].items() if k != "generation_id" and k != "generation_created_at"} == {
        k: v for k, v in record.items() if k != "generation_id" and k != "generation_created_at"
    }


# -- query plans ----------------------------------------------------------------------------------


async def _issued(services: Services, call: Callable[[], Any]) -> list[tuple[str, Any]]:
    statements: list[tuple[str, Any]] = []
    mine = asyncio.current_task()

    def record(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        if asyncio.current_task() is mine:  # not the worker's sweeps running meanwhile
            statements.append((sql, params))

    engines = {services.db.read_engine.sync_engine, services.db.write_engine.sync_engine}
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        await call()
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)
    return statements


async def _list_and_usage_statements(h: Harness, account_id: str) -> list[tuple[str, Any]]:
    async def calls() -> None:
        await h.services.generations.list(account_id, 50, 0)  # the first page
        await h.services.generations.list(account_id, 50, 5000)  # a deep page
        await usage_report(h.services.db, account_id, 90)

    statements = await _issued(h.services, calls)
    tables = ("FROM generations", "FROM usage_counters", "FROM provider_attempts")
    selects = [(sql, p) for sql, p in statements if sql.lstrip().upper().startswith("SELECT")]
    for table in tables:
        assert [sql for sql, _ in selects if table in sql], f"no statement read {table}"
    return selects


async def test_sqlite_plans_use_indexes(harness_factory: Any) -> None:
    harness: Harness = await harness_factory(database_url="")  # SQLite in either test configuration
    caller = await harness.caller()
    await create(caller)
    selects = await _list_and_usage_statements(harness, caller.account_id)
    path = harness.services.settings.resolved_database_url.split("///", 1)[1]
    con = sqlite3.connect(path)
    try:
        for sql, params in selects:
            plan = [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + sql, params)]
            for table in ("generations", "usage_counters", "provider_attempts"):
                assert not [line for line in plan if line.startswith(f"SCAN {table}")], (sql, plan)
            if "FROM generations" in sql and "ORDER BY" in sql and "IN (" not in sql:
                # The first page: read in index order, no sort of the account's rows.
                assert any("ix_generations_account_created_id" in line for line in plan), plan
                assert not [line for line in plan if "TEMP B-TREE" in line], plan
            if "IN (" in sql:  # a deep page: the ids off the covering index, then the page by key
                assert any("COVERING INDEX ix_generations_account_created_id" in line for line in plan), plan
    finally:
        con.close()


@pytest.mark.skipif(not postgres.AVAILABLE, reason="no PostgreSQL")
@pytest.mark.parametrize("database", ["pg"], indirect=True)
async def test_postgresql_plans_use_indexes(database: dict[str, Any], harness_factory: Any) -> None:
    """With sequential scans priced out, a plan falls back to one only where no index serves."""
    h: Harness = await harness_factory(**database)
    caller = await h.caller()
    await create(caller)
    selects = await _list_and_usage_statements(h, caller.account_id)
    async with h.services.db.write_engine.connect() as conn:
        await conn.execute(text("SET enable_seqscan = off"))
        for sql, params in selects:
            plan = [row[0] for row in (await conn.exec_driver_sql("EXPLAIN " + sql, params)).all()]
            for table in ("generations", "usage_counters", "provider_attempts"):
                assert not [line for line in plan if f"Seq Scan on {table}" in line], (sql, plan)
            if "FROM generations" in sql and "ORDER BY" in sql and "IN (" not in sql:
                # The first page: the index read backwards in the list's order, no sort.
                assert any(
                    "Index Scan Backward using ix_generations_account_created_id" in line for line in plan
                )
                assert not [line for line in plan if "Sort" in line], plan
        await conn.rollback()
