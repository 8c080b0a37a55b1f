"""Provider statistics over a large attempt history: the health endpoint's and routing's queries.

Run: ``.venv/bin/python bench/provider_stats.py [--rows 1000000] [--span-days 30] [--runs 21]``

Fills a fresh SQLite database (migrated to head, no ``ANALYZE``, as ``genplane serve``
leaves it) with ``--rows`` provider attempts of four providers, spread evenly over
``--span-days`` up to now (``--span-days 0.0104`` puts them all inside the 15-minute
window: the worst case, where only the per-provider sample bounds the work). Then times,
through the app's own ``Database`` (SQLite inline on the event loop), what one
``GET /v1/health/inference/providers`` asks of the database and what one ranking of
``fastest`` does on a cache miss, and prints the median of ``--runs`` runs and the query
plan of every statement.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event

from genplane.catalog.loader import ModelEntry
from genplane.db.engine import Database
from genplane.db.migrate import upgrade
from genplane.generations.routing import ProviderRanker
from genplane.providers.health import provider_health

PROVIDERS = ["fal", "replicate", "bfl", "runway"]
CATALOGUE_PROVIDERS = [*PROVIDERS, "openai", "google", "byteplus", "local"]  # the rest are not configured
MODELS = ["bench/m1", "bench/m2", "bench/m3"]
ACCOUNTS = 200
MODEL = ModelEntry.model_validate(
    {
        "model_identifier": "bench/m1",
        "model_type": "image",
        "model_pricing": 0.01,
        "schema": {
            "generation_ratio": ["1:1"],
            "generation_output_format": ["png"],
            "generation_output_number": 1,
        },
        "providers": {p: {"model_id": p} for p in PROVIDERS},
    }
)
OUTCOMES = ["used"] * 90 + ["failed"] * 7 + ["discarded"] * 2 + ["canceled"]
STAMP = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite


def fill(path: Path, rows: int, span: timedelta, now: datetime) -> float:
    """``rows`` attempts, oldest first (ids follow time, as when each row is written at its end)."""
    rnd = random.Random(1)
    start = now.replace(tzinfo=None) - span
    step = span / rows
    began = time.perf_counter()
    con = sqlite3.connect(path)
    with con:
        batch: list[tuple[Any, ...]] = []
        for i in range(rows):
            latency = rnd.uniform(500, 20_000)
            started = start + step * i
            batch.append(
                (
                    f"gen{i}",
                    f"acct{i % ACCOUNTS}",
                    PROVIDERS[i % len(PROVIDERS)],
                    MODELS[rnd.randrange(len(MODELS))],
                    OUTCOMES[rnd.randrange(len(OUTCOMES))],
                    started.strftime(STAMP),
                    (started + timedelta(milliseconds=latency)).strftime(STAMP),
                    latency,
                    10,
                )
            )
            if len(batch) == 50_000:
                con.executemany(INSERT, batch)
                batch.clear()
        con.executemany(INSERT, batch)
    con.close()
    return time.perf_counter() - began


INSERT = (
    "INSERT INTO provider_attempts (generation_id, account_id, provider, model_identifier, outcome, "
    "started_at, finished_at, latency_ms, estimated_cost_millis) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


async def median_ms(fn: Callable[[], Awaitable[object]], runs: int) -> float:
    for _ in range(2):
        await fn()
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


async def run(args: argparse.Namespace) -> None:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        url = f"sqlite+aiosqlite:///{path}"
        upgrade(url)
        took = fill(path, args.rows, timedelta(days=args.span_days), now)
        print(f"filled {args.rows:,} provider_attempts over {args.span_days:g} days in {took:.1f} s")

        db = Database(url)
        ranker = ProviderRanker(db, cache_seconds=0)
        configured = set(PROVIDERS)

        async def health() -> object:
            return await provider_health(db, CATALOGUE_PROVIDERS, "acct7", configured)

        async def routing() -> object:
            return await ranker.rank(MODEL, PROVIDERS)

        statements: list[tuple[str, Any]] = []

        def record(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
            statements.append((sql, params))

        event.listen(db.read_engine.sync_engine, "before_cursor_execute", record)
        report = await health()
        order = await routing()
        event.remove(db.read_engine.sync_engine, "before_cursor_execute", record)

        health_ms = await median_ms(health, args.runs)
        routing_ms = await median_ms(routing, args.runs)
        await db.dispose()

        print(f"health   (shared stats + the caller's counts): median {health_ms:.2f} ms of {args.runs}")
        print(f"routing  (shared stats, a ranker cache miss):  median {routing_ms:.2f} ms of {args.runs}")
        print(f"states: { {p.provider: str(p.state) for p in report.providers} }")
        print(f"fastest order for bench/m1: {order}")
        con = sqlite3.connect(path)
        for sql, params in statements:
            if "provider_attempts" not in sql:
                continue
            plan = [row[3] for row in con.execute("EXPLAIN QUERY PLAN " + sql, params)]
            touching = [line for line in plan if "provider_attempts" in line]
            print(f"plan: {' | '.join(touching)}")
        con.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--span-days", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=21)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
