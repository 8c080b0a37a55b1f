"""One definition of provider health: what the health endpoint shows is what routing does.

The statistics come from bounded SQL (``providers/stats.py``); these tests check the
figures it computes on SQLite and PostgreSQL, that both consumers judge a provider alike,
and that no statement it issues scans ``provider_attempts``.
"""

from __future__ import annotations

import random
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from genplane.catalog.loader import ModelEntry
from genplane.clock import as_utc, utcnow
from genplane.contract.status import AttemptOutcome
from genplane.db.engine import Database
from genplane.db.migrate import upgrade
from genplane.db.models import ProviderAttempt
from genplane.generations.routing import ProviderRanker
from genplane.providers.health import provider_health
from genplane.providers.stats import (
    BREAKER_COOLDOWN_SECONDS,
    BREAKER_FAILURES,
    SAMPLE_SIZE,
    WINDOW_SECONDS,
    account_counts,
    recent_stats,
)
from tests import postgres
from tests.conftest import BACKENDS, Caller, Harness

USED, FAILED = AttemptOutcome.USED, AttemptOutcome.FAILED
CANCELED, DISCARDED = AttemptOutcome.CANCELED, AttemptOutcome.DISCARDED

MODEL = ModelEntry.model_validate(
    {
        "model_identifier": "local/preview-image",
        "model_type": "image",
        "model_pricing": 0.002,
        "schema": {
            "generation_ratio": ["1:1"],
            "generation_output_format": ["png"],
            "generation_output_number": 1,
        },
        "providers": {"local": {"model_id": "preview-image"}, "spare": {"model_id": "spare-1"}},
    }
)


def attempts(
    provider: str,
    outcomes: list[AttemptOutcome],
    newest_age_s: float = 1.0,
    *,
    now: datetime | None = None,
    account_id: str = "someone-else",
    model: str = MODEL.model_identifier,
    latencies: list[float] | None = None,
) -> list[ProviderAttempt]:
    """Attempts in the order given, one second apart, the last ending ``newest_age_s`` ago."""
    now = now or utcnow()
    rows = []
    for i, outcome in enumerate(outcomes):
        finished = now - timedelta(seconds=newest_age_s + len(outcomes) - 1 - i)
        latency = latencies[i] if latencies else 500.0
        rows.append(
            ProviderAttempt(
                generation_id=f"g{i}",
                account_id=account_id,
                provider=provider,
                model_identifier=model,
                outcome=outcome,
                started_at=finished - timedelta(milliseconds=latency),
                finished_at=finished,
                latency_ms=latency,
                estimated_cost_millis=2,
            )
        )
    return rows


async def seed(harness: Harness, rows: list[ProviderAttempt]) -> None:
    async with harness.services.db.write() as s:
        s.add_all(rows)


async def health_status(caller: Caller, provider: str = "local") -> str:
    r = await caller.get("/v1/health/inference/providers")
    assert r.status_code == 200, r.text
    status: str = {p["provider"]: p["status"] for p in r.json()["data"]["providers"]}[provider]
    return status


async def routing_view(harness: Harness) -> tuple[bool, list[str]]:
    """Whether the app's ranker has local's breaker open, and the order it gives local and spare."""
    ranker = harness.services.generations.ranker
    ranker.invalidate()
    return "local" in await ranker.breaker_open(["local"]), await ranker.rank(MODEL, ["local", "spare"])


# -- the issue's case ---------------------------------------------------------------------------


async def test_a_good_provider_that_just_failed_five_times_is_not_healthy_anywhere(
    harness: Harness, caller: Caller
) -> None:
    await seed(harness, attempts("local", [USED] * 100 + [FAILED] * BREAKER_FAILURES, newest_age_s=1))

    assert await health_status(caller) == "degraded"
    assert await routing_view(harness) == (True, ["spare"])

    await seed(harness, attempts("local", [USED], newest_age_s=0.1))  # a success closes it
    assert await health_status(caller) == "healthy"
    open_now, order = await routing_view(harness)
    assert not open_now and "local" in order


async def test_after_the_cool_off_both_put_the_provider_on_trial(harness: Harness, caller: Caller) -> None:
    age = BREAKER_COOLDOWN_SECONDS + 5
    await seed(harness, attempts("local", [USED] * 100 + [FAILED] * BREAKER_FAILURES, newest_age_s=age))
    assert await health_status(caller) == "recovering"
    open_now, order = await routing_view(harness)
    assert not open_now and "local" in order

    await seed(harness, attempts("local", [FAILED], newest_age_s=0.1))  # the trial failed: open again
    assert await health_status(caller) == "degraded"
    assert await routing_view(harness) == (True, ["spare"])


SCENARIOS: dict[str, tuple[list[AttemptOutcome], float, str]] = {
    "sudden outage": ([USED] * 100 + [FAILED] * 5, 1, "degraded"),
    "sudden outage, cooled off": ([USED] * 100 + [FAILED] * 5, BREAKER_COOLDOWN_SECONDS + 5, "recovering"),
    "outage, then a success": ([USED] * 100 + [FAILED] * 5 + [USED], 1, "healthy"),
    "mostly failing": ([USED] + [FAILED] * 4, 1, "degraded"),
    "mostly failing, last succeeded": ([FAILED] * 4 + [USED], 1, "recovering"),
    "some failures": ([USED] * 5 + [FAILED] * 3, 1, "recovering"),
    "a rare failure": ([USED] * 20 + [FAILED], 1, "healthy"),
    "too few to judge a rate": ([FAILED] * 2, 1, "recovering"),
    "nothing decisive": ([CANCELED, DISCARDED, CANCELED], 1, "healthy"),
    "no attempts": ([], 1, "healthy"),
    "only old history": ([FAILED] * 10, WINDOW_SECONDS + 60, "healthy"),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_health_says_degraded_exactly_when_routing_skips(
    harness: Harness, caller: Caller, name: str
) -> None:
    outcomes, age, expected = SCENARIOS[name]
    await seed(harness, attempts("local", outcomes, newest_age_s=age))
    status = await health_status(caller)
    open_now, order = await routing_view(harness)
    assert status == expected
    assert open_now is (status == "degraded")
    assert ("local" in order) is (status != "degraded")


async def test_health_counts_stay_the_callers_own(harness: Harness, caller: Caller) -> None:
    mine = attempts("local", [USED, USED, FAILED], account_id=caller.account_id, newest_age_s=200)
    await seed(harness, mine)
    await seed(harness, attempts("local", [USED] * 100 + [FAILED] * 5))
    r = await caller.get("/v1/health/inference/providers")
    row = {p["provider"]: p for p in r.json()["data"]["providers"]}["local"]
    assert row["status"] == "degraded"  # everyone's attempts: the shared state
    assert row["window"] == {
        "total_attempts": 3,
        "failures": 1,
        "successes": 2,
        "duration_seconds": WINDOW_SECONDS,
    }
    assert row["failure_rate"] == pytest.approx(1 / 3, abs=1e-4)


# -- the SQL's figures, on SQLite and PostgreSQL ---------------------------------------------------


@pytest.fixture
async def sqlite_session(tmp_path: Path) -> AsyncIterator[AsyncSession]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'stats.db'}"
    upgrade(url)
    db = Database(url)
    try:
        async with db.write() as s:
            yield s
    finally:
        await db.dispose()


@pytest.fixture
async def pg_session() -> AsyncIterator[AsyncSession]:
    """A session on a schema of its own, so parallel runs and other tests never meet."""
    if not postgres.AVAILABLE:
        pytest.skip("no PostgreSQL")
    schema = f"stats_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(postgres.server_url())
    async with admin.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_async_engine(
        postgres.server_url(), connect_args={"server_settings": {"search_path": schema}}
    )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(lambda sync: ProviderAttempt.__table__.create(sync))
        async with AsyncSession(engine, expire_on_commit=False) as s:
            yield s
    finally:
        await engine.dispose()
        async with admin.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await admin.dispose()




@pytest.fixture(params=BACKENDS)
def session(request: pytest.FixtureRequest) -> AsyncSession:
    s: AsyncSession = request.getfixturevalue(f"{request.param}_session")
    return s


async def test_stats_figures(session: AsyncSession) -> None:
    now = utcnow()
    latencies = [float(n) for n in range(1, 101)]
    random.Random(7).shuffle(latencies)
    descending = [float(n) for n in range(10, 0, -1)]
    rows = [
        *attempts("fal", [USED] * 100, 30, now=now, model="m1", latencies=latencies),
        *attempts("fal", [USED] * 10, 20, now=now, model="m2", latencies=descending),
        *attempts("fal", [FAILED, DISCARDED, CANCELED, FAILED, FAILED], 2, now=now, model="m1"),
        *attempts("fal", [FAILED] * 20, WINDOW_SECONDS + 5, now=now, model="m1"),  # before the window
        *attempts("bfl", [USED] * (SAMPLE_SIZE + 50), 1, now=now, model="m1"),
    ]
    session.add_all(rows)
    await session.flush()

    stats = await recent_stats(session, ["fal", "bfl", "nobody"], now)
    fal = stats["fal"]
    assert (fal.successes, fal.failures, fal.wasted) == (110, 3, 1)
    assert fal.consecutive_failures == 3 and fal.last_outcome is FAILED
    assert fal.last_failure_at is not None and fal.last_success_at is not None
    assert abs((now - as_utc(fal.last_failure_at)).total_seconds() - 2) < 0.01
    assert abs((now - as_utc(fal.last_success_at)).total_seconds() - 20) < 0.01
    # p95 = the attempt ranked floor(0.95 n) + 1 by latency: the 96th of 100, the 10th of 10.
    assert fal.models["m1"].p95_latency_ms == 96.0
    assert fal.models["m2"].p95_latency_ms == 10.0
    assert (fal.models["m1"].successes, fal.models["m1"].failures, fal.models["m1"].wasted) == (100, 3, 1)

    bfl = stats["bfl"]
    assert bfl.successes == SAMPLE_SIZE  # the newest attempts only
    assert bfl.consecutive_failures == 0 and bfl.last_outcome is USED

    nobody = stats["nobody"]
    assert nobody.decisive == 0 and nobody.last_outcome is None and nobody.models == {}

    assert set(await recent_stats(session, None, now)) == {"fal", "bfl"}  # those active in the window

    session.add_all(attempts("fal", [USED, FAILED, CANCELED], 1, now=now, account_id="acct-1"))
    await session.flush()
    mine = await account_counts(session, "acct-1", now)
    assert set(mine) == {"fal"}
    assert (mine["fal"].successes, mine["fal"].failures, mine["fal"].total) == (1, 1, 2)


# -- query plans ----------------------------------------------------------------------------------


def _capture(engine: Any) -> tuple[list[tuple[str, Any]], Callable[[], None]]:
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    return statements, lambda: event.remove(engine, "before_cursor_execute", record)


async def _issue_every_stats_statement(db_or_session: Database | AsyncSession, now: datetime) -> None:
    if isinstance(db_or_session, Database):
        await provider_health(db_or_session, ["fal", "bfl", "local"], "acct-1", {"fal", "bfl"})
        await ProviderRanker(db_or_session, cache_seconds=0).breaker_open()  # providers found in the window
        return
    await recent_stats(db_or_session, ["fal", "bfl", "local"], now)
    await recent_stats(db_or_session, None, now)
    await account_counts(db_or_session, "acct-1", now)


def _attempt_statements(statements: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The statements that read attempts, checked to include each kind stats.py issues."""
    selects = [(sql, params) for sql, params in statements if "provider_attempts" in sql]
    shared = [sql for sql, _ in selects if " OVER (" in sql]
    own = [sql for sql, _ in selects if "provider_attempts.account_id =" in sql]
    kinds = {
        "shared stats": bool(shared),
        "the caller's counts": bool(own),
        "providers in the window": len(selects) > len(shared) + len(own),
    }
    assert all(kinds.values()), kinds
    return selects


def _history(now: datetime, n: int) -> list[dict[str, Any]]:
    """``n`` attempts of four providers over 30 days, as executemany parameters."""
    rnd = random.Random(3)
    rows = []
    for i in range(n):
        started = now - timedelta(seconds=rnd.uniform(0, 30 * 86400))
        rows.append(
            {
                "generation_id": f"g{i}",
                "account_id": f"acct-{i % 50}",
                "provider": ("fal", "bfl", "replicate", "local")[i % 4],
                "model_identifier": "m1",
                "outcome": USED if rnd.random() < 0.9 else FAILED,
                "started_at": started,
                "finished_at": started + timedelta(seconds=2),
                "latency_ms": 2000.0,
                "estimated_cost_millis": 2,
            }
        )
    return rows


@pytest.mark.parametrize("history", [0, 20_000], ids=["empty", "analyzed-20k"])
async def test_sqlite_never_scans_the_attempts(tmp_path: Path, history: int) -> None:
    path = tmp_path / "plans.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(url)
    db = Database(url)
    now = utcnow()
    try:
        if history:
            async with db.write() as s:
                await s.execute(ProviderAttempt.__table__.insert(), _history(now, history))
                await s.execute(text("ANALYZE"))
        statements, stop = _capture(db.read_engine.sync_engine)
        try:
            await _issue_every_stats_statement(db, now)
        finally:
            stop()
    finally:
        await db.dispose()

    selects = _attempt_statements(statements)
    con = sqlite3.connect(path)
    try:
        for sql, params in selects:
            plan = [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + sql, params)]
            assert not [line for line in plan if line.startswith("SCAN provider_attempts")], (sql, plan)
            assert [line for line in plan if line.startswith("SEARCH provider_attempts USING")], plan
    finally:
        con.close()


async def test_postgresql_can_answer_every_statement_from_an_index(pg_session: AsyncSession) -> None:
    """With sequential scans priced out, the plan falls back to one only where no index serves.

    (On a table this small the planner would rightly pick a sequential scan by itself.)"""
    now = utcnow()
    conn = await pg_session.connection()
    statements, stop = _capture(conn.sync_engine)
    try:
        await _issue_every_stats_statement(pg_session, now)
    finally:
        stop()
    selects = _attempt_statements(statements)
    await conn.exec_driver_sql("SET enable_seqscan = off")
    for sql, params in selects:
        plan = [row[0] for row in (await conn.exec_driver_sql("EXPLAIN " + sql, params)).all()]
        assert not [line for line in plan if "Seq Scan on provider_attempts" in line], (sql, plan)
        assert [line for line in plan if "Index" in line and "ix_attempts_" in line], plan
