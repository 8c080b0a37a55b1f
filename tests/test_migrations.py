"""Alembic migrations produce exactly the schema the models declare."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from genplane.db.migrate import alembic_config, upgrade
from genplane.db.models import Base
from tests import postgres


def test_migrations_match_models(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    upgrade(f"sqlite+aiosqlite:///{db}")
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_is_idempotent_and_keeps_data(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{db}"
    upgrade(url)
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO accounts (id, name, is_personal, plan, balance_millis, subscription_status, "
        "cancel_at_period_end, currency, period_starts_at, period_ends_at, created_at, updated_at) "
        "VALUES ('a', 'n', 1, 'standard', 5, 'active', 0, 'USD', '2026-01-01', '2026-02-01', "
        "'2026-01-01', '2026-01-01')"
    )
    con.commit()
    con.close()
    upgrade(url)
    con = sqlite3.connect(db)
    assert con.execute("SELECT balance_millis FROM accounts WHERE id='a'").fetchone() == (5,)
    heads = ScriptDirectory.from_config(alembic_config(url)).get_heads()
    assert con.execute("SELECT version_num FROM alembic_version").fetchall() == [(h,) for h in heads]
    con.close()


def test_accounts_from_before_alerts_get_the_default_threshold(tmp_path: Path) -> None:
    """0002 gives every existing account the 0.50 threshold, armed unless already below it."""
    db = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{db}"
    upgrade(url, "0001")
    con = sqlite3.connect(db)
    for account_id, balance in (("rich", 5000), ("poor", 100)):
        con.execute(
            "INSERT INTO accounts (id, name, is_personal, plan, balance_millis, subscription_status, "
            "cancel_at_period_end, currency, period_starts_at, period_ends_at, created_at, updated_at) "
            f"VALUES ('{account_id}', 'n', 1, 'standard', {balance}, 'active', 0, 'USD', '2026-01-01', "
            "'2026-02-01', '2026-01-01', '2026-01-01')"
        )
    con.commit()
    con.close()
    upgrade(url)
    con = sqlite3.connect(db)
    rows = con.execute("SELECT account_id, threshold_millis, armed FROM credit_alerts ORDER BY 1").fetchall()
    con.close()
    assert rows == [("poor", 500, 0), ("rich", 500, 1)]


def test_attempts_written_cancelled_read_canceled_after_0005(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{db}"
    upgrade(url, "0004")
    con = sqlite3.connect(db)
    for outcome in ("cancelled", "used", "failed"):
        con.execute(
            "INSERT INTO provider_attempts (generation_id, account_id, provider, model_identifier, outcome, "
            "started_at, estimated_cost_millis) VALUES ('g', 'a', 'fal', 'm', ?, '2026-01-01', 0)",
            (outcome,),
        )
    con.commit()
    con.close()
    upgrade(url)
    con = sqlite3.connect(db)
    outcomes = sorted(r[0] for r in con.execute("SELECT outcome FROM provider_attempts"))
    con.close()
    assert outcomes == ["canceled", "failed", "used"]


def _account_sql(account_id: str) -> str:
    return (
        "INSERT INTO accounts (id, name, is_personal, plan, balance_millis, subscription_status, "
        "cancel_at_period_end, currency, period_starts_at, period_ends_at, created_at, updated_at) "
        f"VALUES ('{account_id}', 'n', true, 'standard', 0, 'active', false, 'USD', '2026-01-01', "
        "'2026-02-01', '2026-01-01', '2026-01-01')"
    )


def _generation_sql(generation_id: str, account_id: str, status: str = "succeeded") -> str:
    return (
        "INSERT INTO generations (id, account_id, model_identifier, model_type, status, provider_order, "
        "prompt, output_number, specific, cost_millis, credits_settled, created_at, claims, updated_at) "
        f"VALUES ('{generation_id}', '{account_id}', 'm', 'image', '{status}', '[]', 'p', 1, '{{}}', 1, "
        "true, '2026-01-01', 1, '2026-01-01')"
    )


#: Rows per account before 0006: its backfill must count them, and give 0 to the account with none.
HISTORY = {"busy": 7, "once": 1, "idle": 0}
#: Of those, the rows still in flight (the first of each account's rows), which 0007 counts.
ACTIVE_STATUSES = ("pending", "processing", "pending")
IN_FLIGHT = {"busy": 3, "once": 1, "idle": 0}


def _history_sql() -> list[str]:
    statements = [_account_sql(a) for a in HISTORY]
    statements += [
        _generation_sql(f"{a}-{i}", a, ACTIVE_STATUSES[i] if i < len(ACTIVE_STATUSES) else "succeeded")
        for a, n in HISTORY.items()
        for i in range(n)
    ]
    return statements


def _upgraded_over_history(tmp_path: Path, revision: str) -> tuple[Path, str]:
    """A SQLite database at ``revision`` given _history_sql's rows, then brought to head."""
    db = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{db}"
    upgrade(url, revision)
    con = sqlite3.connect(db)
    for sql in _history_sql():
        con.execute(sql)
    con.commit()
    con.close()
    upgrade(url)
    return db, url


def test_0006_and_0007_backfill_each_accounts_generation_counts(tmp_path: Path) -> None:
    db, url = _upgraded_over_history(tmp_path, "0005")
    con = sqlite3.connect(db)
    counts = dict(con.execute("SELECT id, generations_total FROM accounts").fetchall())
    in_flight = dict(con.execute("SELECT id, generations_in_flight FROM accounts").fetchall())
    indexes = {r[1] for r in con.execute("PRAGMA index_list('generations')")}
    con.close()
    assert counts == HISTORY and in_flight == IN_FLIGHT
    assert "ix_generations_account_created_id" in indexes and "ix_generations_account_created" not in indexes

    command.downgrade(alembic_config(url), "0005")  # and back: the column and the old index return
    con = sqlite3.connect(db)
    assert "generations_total" not in {r[1] for r in con.execute("PRAGMA table_info('accounts')")}
    assert "ix_generations_account_created" in {r[1] for r in con.execute("PRAGMA index_list('generations')")}
    con.close()
    upgrade(url)
    con = sqlite3.connect(db)
    assert dict(con.execute("SELECT id, generations_total FROM accounts").fetchall()) == HISTORY
    con.close()


def _delivered_before_0009() -> dict[str, int | None]:
    """What 0009 backfills for _history_sql's rows: a success delivered all it asked (1), the
    rows still in flight nothing yet."""
    return {
        f"{a}-{i}": None if i < len(ACTIVE_STATUSES) else 1 for a, n in HISTORY.items() for i in range(n)
    }


def test_0009_backfills_what_past_successes_delivered(tmp_path: Path) -> None:
    db, url = _upgraded_over_history(tmp_path, "0008")
    con = sqlite3.connect(db)
    delivered = dict(con.execute("SELECT id, output_delivered FROM generations").fetchall())
    con.close()
    assert delivered == _delivered_before_0009()

    command.downgrade(alembic_config(url), "0008")
    con = sqlite3.connect(db)
    assert "output_delivered" not in {r[1] for r in con.execute("PRAGMA table_info('generations')")}
    con.close()


@pytest.mark.skipif(not postgres.AVAILABLE, reason="no PostgreSQL")
def test_0006_and_0007_backfill_on_postgresql() -> None:
    import asyncpg

    dsn = postgres.libpq(postgres.server_url())
    name = f"genplane_mig_{uuid.uuid4().hex[:12]}"
    scratch_url = postgres.database_url(name)

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def on_scratch(statements: list[str], query: str) -> dict[str, int]:
        conn = await asyncpg.connect(postgres.libpq(scratch_url))
        try:
            for sql in statements:
                await conn.execute(sql)
            return {r[0]: r[1] for r in await conn.fetch(query)}
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(scratch_url, "0005")
        asyncio.run(on_scratch(_history_sql(), "SELECT 1, 1"))
        upgrade(scratch_url)
        assert asyncio.run(on_scratch([], "SELECT id, generations_total FROM accounts")) == HISTORY
        assert asyncio.run(on_scratch([], "SELECT id, generations_in_flight FROM accounts")) == IN_FLIGHT
        delivered = asyncio.run(on_scratch([], "SELECT id, output_delivered FROM generations"))
        assert delivered == _delivered_before_0009()
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
