"""Alembic migrations produce exactly the schema the models declare."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from genplane.db.migrate import upgrade
from genplane.db.models import Base


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
    assert con.execute("SELECT version_num FROM alembic_version").fetchone() == ("0005",)
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
