"""The list and the usage report of one account as its history grows to 1,000,000 generations.

Run: ``.venv/bin/python bench/growth.py [--sizes 1000,100000,1000000] [--requests 200]
[--postgres postgresql+asyncpg://postgres@127.0.0.1:5432/test] [--no-sqlite]``

For each backend (SQLite, as ``genplane serve`` runs it, and PostgreSQL when ``--postgres``
names a reachable server: a scratch database is created on it for each size and dropped
afterwards) and each of ``--sizes``, a fresh data store is made with ``genplane init
--quickstart`` and the account's history is written straight into its tables in large
transactions (SQLite: ``executemany`` of 50,000 rows; PostgreSQL: ``COPY``): ``size``
succeeded generations at ``--per-day`` a day up to now (2,740 a day: 1,000,000 a year, so
``days=90`` covers all of 1,000 and 100,000 rows and a quarter of 1,000,000), oldest first
as they would have been written; one provider attempt per generation younger than the
attempt retention (30 days: the janitor deletes older ones); the account's daily request
counters. Three other accounts get a tenth of the rows each, so every read has rows to
filter out. ``accounts.generations_total`` is set from the rows, as migration 0006 does.

Then a real ``genplane serve`` process (its in-process worker included) is started on the
store and asked over one keep-alive HTTP/1.1 connection on loopback, one request at a
time: the first page of ``GET /v1/content/list`` (limit 50), a deep page (offset 100,000,
or the last page when there are fewer rows; only for 100,000 rows or more) and
``GET /v1/usage?days=90``, each ``--requests`` times after 5 warm-up requests. p50 and p99
are printed as a Markdown table. SQLite is left as ``genplane serve`` leaves it (no
``ANALYZE``); PostgreSQL is ``VACUUM ANALYZE``d after the fill, as autovacuum would soon
do. Everything else is as ``bench/throughput.py`` sets it (rate limit and in-flight cap
raised); anomaly detection stays on, so the runs log a ``polling_storm`` flag (hundreds of
list reads in seconds are what it looks for), which costs one write per episode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import BIN, free_port, genplane_env, prepare_genplane, wait_for_port

DEEP_OFFSET = 100_000
PAGE = 50
OTHER_ACCOUNTS = 3
ATTEMPT_RETENTION_DAYS = 30  # the janitor's default: older attempts do not exist
STAMP = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores a DateTime in SQLite
PROVIDERS = ["fal", "replicate", "bfl", "runway"]
OUTCOMES = ["used"] * 90 + ["failed"] * 7 + ["discarded"] * 2 + ["canceled"]
ENDPOINTS = [
    ("POST /v1/generate/image/{provider}/{model}", 200, ""),
    ("GET /v1/content/{generation_id}", 200, ""),
    ("GET /v1/content/list", 200, ""),
    ("GET /v1/content/{generation_id}", 404, "bse_generation_not_found"),
    ("POST /v1/generate/image/{provider}/{model}", 402, "bse_insufficient_credits"),
]

GEN_COLUMNS = [
    "id", "account_id", "model_identifier", "model_type", "status", "provider_order", "provider_used",
    "prediction_id", "prompt", "ratio", "output_format", "output_number", "specific", "output_files",
    "cost_millis", "credits_settled", "created_at", "started_at", "completed_at", "metrics_total_time",
    "metrics_predict_time", "claims", "updated_at",
]
ATTEMPT_COLUMNS = [
    "generation_id", "account_id", "provider", "model_identifier", "outcome", "started_at", "finished_at",
    "latency_ms", "estimated_cost_millis",
]
USAGE_COLUMNS = ["account_id", "day", "endpoint", "status_code", "error_code", "count"]


# -- the rows -------------------------------------------------------------------------------------


def generation_rows(
    account_id: str, n: int, per_day: float, now: datetime, seed: int
) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...] | None]]:
    """``n`` succeeded image generations, ``per_day`` of them a day up to ``now``, oldest first
    (the order they would have been written in), each with its attempt if still retained."""
    rnd = random.Random(seed)
    step = timedelta(days=1) / per_day
    first = now - step * n
    retained = now - timedelta(days=ATTEMPT_RETENTION_DAYS)
    for i in range(n):
        gid = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        created = first + step * i
        started = created + timedelta(milliseconds=50)
        done = started + timedelta(seconds=4)
        provider = PROVIDERS[rnd.randrange(len(PROVIDERS))]
        outputs = [{"url": f"http://127.0.0.1/v1/files/{gid}/0.png", "key": f"{gid}/0.png",
                    "size": 181_234, "content_type": "image/png"}]
        gen = (
            gid, account_id, "bench/image", "image", "succeeded", [provider], provider,
            str(uuid.UUID(int=rnd.getrandbits(128), version=4)),
            "a lighthouse on a cliff at dusk, volumetric light, 35 mm", "1:1", "png", 1, {}, outputs,
            2, True, created, started, done, 4.05, 4.0, 1, done,
        )
        attempt = None
        if created >= retained:
            attempt = (
                gid, account_id, provider, "bench/image", OUTCOMES[rnd.randrange(len(OUTCOMES))],
                started, done, 4000.0, 2,
            )
        yield gen, attempt


def usage_rows(account_id: str, days: int, now: datetime) -> list[tuple[Any, ...]]:
    return [
        (account_id, (now - timedelta(days=d)).strftime("%Y-%m-%d"), endpoint, status, code, 1000 - i)
        for d in range(days)
        for i, (endpoint, status, code) in enumerate(ENDPOINTS)
    ]


def chunks(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# -- the stores -----------------------------------------------------------------------------------


class Store:
    """Direct writes into one backend's tables."""

    name = ""

    async def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    async def execute(self, sql: str) -> None:
        raise NotImplementedError

    async def after_fill(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def fill(self, account_id: str, n: int, per_day: float, now: datetime, seed: int) -> None:
        for batch in chunks(generation_rows(account_id, n, per_day, now, seed), 50_000):
            await self.insert("generations", GEN_COLUMNS, [g for g, _ in batch])
            attempts = [a for _, a in batch if a is not None]
            if attempts:
                await self.insert("provider_attempts", ATTEMPT_COLUMNS, attempts)

    async def recount(self) -> None:
        """What migration 0006 does: the counter from the rows."""
        await self.execute(
            "UPDATE accounts SET generations_total = counted.n "
            "FROM (SELECT account_id, count(*) AS n FROM generations GROUP BY account_id) AS counted "
            "WHERE counted.account_id = accounts.id"
        )

    async def add_accounts(self, template_id: str, ids: list[str]) -> None:
        for account_id in ids:
            await self.execute(
                "INSERT INTO accounts (id, name, email, is_personal, picture_url, plan, balance_millis, "
                "subscription_status, cancel_at_period_end, currency, period_starts_at, period_ends_at, "
                "created_at, updated_at, deleted_at, generations_total) "
                f"SELECT '{account_id}', 'other', email, is_personal, picture_url, plan, balance_millis, "
                "subscription_status, cancel_at_period_end, currency, period_starts_at, period_ends_at, "
                "created_at, updated_at, deleted_at, 0 "
                f"FROM accounts WHERE id = '{template_id}'"
            )


class SqliteStore(Store):
    name = "SQLite"

    def __init__(self, path: Path) -> None:
        self.con = sqlite3.connect(path, isolation_level=None)
        self.con.execute("PRAGMA journal_mode=WAL")

    @staticmethod
    def _value(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.astimezone(UTC).strftime(STAMP)
        if isinstance(v, (list, dict)):
            return json.dumps(v)
        return v

    async def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        conv = self._value
        self.con.execute("BEGIN")
        self.con.executemany(sql, [tuple(conv(v) for v in row) for row in rows])
        self.con.execute("COMMIT")

    async def execute(self, sql: str) -> None:
        self.con.execute(sql)

    async def close(self) -> None:
        self.con.close()


class PostgresStore(Store):
    name = "PostgreSQL"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        def conv(v: Any) -> Any:
            return json.dumps(v) if isinstance(v, (list, dict)) else v

        records = [tuple(conv(v) for v in row) for row in rows]
        await self.conn.copy_records_to_table(table, records=records, columns=list(columns))

    async def execute(self, sql: str) -> None:
        await self.conn.execute(sql)

    async def after_fill(self) -> None:
        await self.conn.execute("VACUUM ANALYZE")

    async def close(self) -> None:
        await self.conn.close()


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


def with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


# -- the measurements -----------------------------------------------------------------------------


@dataclass
class Timing:
    samples: list[float] = field(default_factory=list)

    def pct(self, q: float) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, int(q * len(s)))]


async def time_requests(
    port: int, key: str, path: str, n: int, warmup: int = 5
) -> tuple[Timing, dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
        f"Authorization: Bearer {key}\r\n\r\n"
    ).encode()
    timing = Timing()
    body: dict[str, Any] = {}
    try:
        for i in range(warmup + n):
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"
            )
            raw = await reader.readexactly(length)
            took = (time.perf_counter() - began) * 1000
            if int(head[9:12]) != 200:
                raise RuntimeError(f"GET {path}: {head[9:12].decode()} {raw[:300]!r}")
            if i >= warmup:
                timing.samples.append(took)
            else:
                body = json.loads(raw)
    finally:
        writer.close()
    return timing, body


@dataclass
class Row:
    backend: str
    size: int
    fill_seconds: float
    first: Timing
    deep: Timing | None
    deep_offset: int | None
    usage: Timing


async def measure(env: dict[str, str], port: int, key: str, size: int, requests: int) -> tuple[Timing, ...]:
    server = subprocess.Popen([str(BIN / "genplane"), "serve"], env=env)
    try:
        await asyncio.to_thread(wait_for_port, port, 60.0)
        first, body = await time_requests(port, key, f"/v1/content/list?limit={PAGE}", requests)
        if body["total"] != size or len(body["data"]["generations"]) != PAGE:
            raise RuntimeError(f"list answered total {body['total']} for {size} generations")
        timings = [first]
        if size >= DEEP_OFFSET:
            offset = min(DEEP_OFFSET, size - PAGE)
            deep, body = await time_requests(
                port, key, f"/v1/content/list?limit={PAGE}&offset={offset}", requests
            )
            if len(body["data"]["generations"]) != PAGE:
                raise RuntimeError("the deep page came back short")
            timings.append(deep)
        usage, body = await time_requests(port, key, "/v1/usage?days=90", requests)
        timings.append(usage)
        return tuple(timings)
    finally:
        server.terminate()
        server.wait(timeout=30)


async def run_size(backend: str, size: int, requests: int, per_day: float, pg_url: str | None) -> Row:
    """A fresh store holding ``size`` generations of the account, measured through ``genplane serve``."""
    pg_admin: Any = None
    pg_db = f"genplane_growth_{uuid.uuid4().hex[:10]}"
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        env = genplane_env(Path(scratch) / "data", port)
        if backend == "pg":
            import asyncpg

            assert pg_url is not None
            pg_admin = await asyncpg.connect(asyncpg_dsn(pg_url))
            await pg_admin.execute(f'CREATE DATABASE "{pg_db}"')
            env["GENPLANE_DATABASE_URL"] = with_database(pg_url, pg_db)
        store: Store | None = None
        try:
            key = await asyncio.to_thread(prepare_genplane, env)
            if backend == "pg":
                store = PostgresStore(await asyncpg.connect(asyncpg_dsn(with_database(pg_url or "", pg_db))))
            else:
                store = SqliteStore(Path(scratch) / "data" / "genplane.db")
            account_id = await account_of(store)
            others = [f"other-{i}" for i in range(OTHER_ACCOUNTS)]
            await store.add_accounts(account_id, others)
            now = datetime.now(UTC)
            began = time.perf_counter()
            await store.fill(account_id, size, per_day, now, seed=1)
            for i, other in enumerate(others):
                await store.fill(other, size // 10, per_day / 10, now, seed=2 + i)
            days = min(400, max(1, int(size / per_day) + 1))  # the counters the janitor keeps
            for owner in (account_id, *others):
                await store.insert("usage_counters", USAGE_COLUMNS, usage_rows(owner, days, now))
            await store.recount()
            await store.after_fill()
            filled = time.perf_counter() - began
            timings = await measure(env, port, key, size, requests)
        finally:
            if store is not None:
                await store.close()
            if pg_admin is not None:
                await pg_admin.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')
                await pg_admin.close()
    deep = timings[1] if len(timings) == 3 else None
    row = Row(
        "SQLite" if backend == "sqlite" else "PostgreSQL", size, filled, timings[0], deep,
        min(DEEP_OFFSET, size - PAGE) if deep else None, timings[-1],
    )
    print(progress(row), flush=True)
    return row


async def account_of(store: Store) -> str:
    if isinstance(store, SqliteStore):
        return str(store.con.execute("SELECT id FROM accounts").fetchone()[0])
    assert isinstance(store, PostgresStore)
    return str(await store.conn.fetchval("SELECT id FROM accounts"))


def ms(t: Timing | None, q: float) -> str:
    return "—" if t is None else f"{t.pct(q):.1f}"


def progress(r: Row) -> str:
    return (f"{r.backend} {r.size:,}: filled in {r.fill_seconds:.0f} s; list p50 {ms(r.first, .5)} ms, "
            f"deep p50 {ms(r.deep, .5)} ms, usage p50 {ms(r.usage, .5)} ms")


def table(rows: list[Row], requests: int) -> str:
    out = [
        f"p50 / p99 in ms of {requests} sequential requests each, one keep-alive connection",
        "",
        "| backend | generations | list, first page | list, deep page | usage?days=90 |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        deep = "—" if r.deep is None else f"{ms(r.deep, .5)} / {ms(r.deep, .99)} (offset {r.deep_offset:,})"
        out.append(
            f"| {r.backend} | {r.size:,} | {ms(r.first, .5)} / {ms(r.first, .99)} | {deep} | "
            f"{ms(r.usage, .5)} / {ms(r.usage, .99)} |"
        )
    base = {r.backend: r for r in rows if r.size == min(x.size for x in rows)}
    out.append("")
    for r in rows:
        if r.size != base[r.backend].size:
            ratio = statistics.median(r.first.samples) / statistics.median(base[r.backend].first.samples)
            out.append(f"{r.backend}: first page at {r.size:,} = {ratio:.2f}x of {base[r.backend].size:,}")
    return "\n".join(out)


async def pg_reachable(url: str) -> bool:
    try:
        import asyncpg

        conn = await asyncpg.connect(asyncpg_dsn(url), timeout=5)
    except Exception as exc:
        print(f"PostgreSQL at {url} is not reachable ({exc}); skipped", file=sys.stderr)
        return False
    await conn.close()
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="Comma-separated generation counts.")
    parser.add_argument("--requests", type=int, default=200, help="Timed requests per figure.")
    parser.add_argument("--per-day", type=float, default=2740.0,
                        help="The account's generations a day (2,740: 1,000,000 a year).")
    parser.add_argument("--postgres", metavar="URL", default=None,
                        help="An asyncpg URL of a PostgreSQL server; a scratch database is made on it.")
    parser.add_argument("--no-sqlite", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    os.environ.setdefault("GENPLANE_LOG_LEVEL", "WARNING")

    async def go() -> list[Row]:
        rows: list[Row] = []
        backends = [] if args.no_sqlite else ["sqlite"]
        if args.postgres and await pg_reachable(args.postgres):
            backends.append("pg")
        for backend in backends:
            for size in sizes:
                rows.append(await run_size(backend, size, args.requests, args.per_day, args.postgres))
        return rows

    rows = asyncio.run(go())
    print()
    print(table(rows, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
