"""History past its retention is purged, in bounded batches, by the worker's janitor."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from genplane.clock import utcnow
from genplane.db.models import IdempotencyRecord, ProviderAttempt, UsageCounter
from genplane.jobs.janitor import MAX_BATCHES_PER_RUN, Janitor
from tests.conftest import Harness


async def seed(h: Harness, days_old: list[int]) -> None:
    """One attempt, one idempotency record and one usage counter per age in ``days_old``."""
    now = utcnow()
    async with h.services.db.write() as s:
        for i, age in enumerate(days_old):
            when = now - timedelta(days=age)
            s.add(
                ProviderAttempt(
                    generation_id=f"g{i}",
                    account_id="a",
                    provider="local",
                    model_identifier="local/preview-image",
                    outcome="used",
                    started_at=when,
                    finished_at=when,
                    latency_ms=1.0,
                    estimated_cost_millis=0,
                )
            )
            s.add(
                IdempotencyRecord(
                    account_id="a",
                    key=f"k{i}",
                    request_hash="h",
                    state="completed",
                    response_status=200,
                    response_body="{}",
                    created_at=when,
                    updated_at=when,
                )
            )
            s.add(
                UsageCounter(
                    account_id="a",
                    day=when.strftime("%Y-%m-%d"),
                    endpoint=f"GET /v1/status/{i}",
                    status_code=200,
                    error_code="",
                    count=1,
                )
            )


async def counts(h: Harness) -> tuple[int, int, int]:
    async with h.services.db.read() as s:
        return (
            int(await s.scalar(select(func.count()).select_from(ProviderAttempt)) or 0),
            int(await s.scalar(select(func.count()).select_from(IdempotencyRecord)) or 0),
            int(await s.scalar(select(func.count()).select_from(UsageCounter)) or 0),
        )


async def test_each_table_keeps_exactly_what_its_retention_allows(harness_factory: Any) -> None:
    h: Harness = await harness_factory(
        run_worker=False,
        attempt_retention_days=30,
        idempotency_ttl_hours=72,
        usage_retention_days=100,
        janitor_batch_rows=3,
    )
    # ages: 0 and 2 days stay everywhere; 40 days: attempts and idempotency go; 200: all go.
    await seed(h, [0, 2, 40, 40, 200, 200, 200])
    purged = await Janitor(h.services.db, h.services.settings).run()
    assert (purged.attempts, purged.idempotency, purged.usage) == (5, 5, 3)
    assert await counts(h) == (2, 2, 4)
    again = await Janitor(h.services.db, h.services.settings).run()
    assert (again.attempts, again.idempotency, again.usage) == (0, 0, 0)


async def test_one_run_deletes_a_bounded_number_of_rows(harness_factory: Any) -> None:
    h: Harness = await harness_factory(run_worker=False, janitor_batch_rows=1)
    await seed(h, [500] * (MAX_BATCHES_PER_RUN + 5))
    first = await Janitor(h.services.db, h.services.settings).run()
    assert first.attempts == MAX_BATCHES_PER_RUN  # the rest waits for the next run
    second = await Janitor(h.services.db, h.services.settings).run()
    assert second.attempts == 5
    assert await counts(h) == (0, 0, 0)


async def test_the_worker_runs_the_janitor_on_its_schedule(harness_factory: Any) -> None:
    h: Harness = await harness_factory(janitor_interval_seconds=0.1)
    await seed(h, [0, 45, 500])
    deadline = time.monotonic() + 10
    while await counts(h) != (1, 1, 2):  # defaults: attempts 30 days, idempotency 24 h, usage 400 days
        assert time.monotonic() < deadline, await counts(h)
        await asyncio.sleep(0.05)


async def test_the_purge_cut_offs_use_indexes(harness: Harness) -> None:
    """A run that finds nothing to delete must not read the tables through."""
    async with harness.services.db.read() as s:
        conn = await s.connection()
        for sql in (
            "SELECT id FROM provider_attempts WHERE started_at < '2020-01-01' LIMIT 10",
            "SELECT account_id FROM idempotency_records WHERE created_at < '2020-01-01' LIMIT 10",
            "SELECT account_id FROM usage_counters WHERE day < '2020-01-01' LIMIT 10",
        ):
            rows = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)).all()
            plan = " ".join(str(r[-1]) for r in rows)
            assert "USING" in plan and "INDEX" in plan, (sql, plan)
