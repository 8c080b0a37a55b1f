"""``genplane db``: the schema, and moving an embedded install's data to PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from genplane.cli.common import console, fail
from genplane.db.copy import TargetNotEmpty, copy_database
from genplane.db.migrate import upgrade
from genplane.settings import get_settings

db_app = typer.Typer(no_args_is_help=True, help="The database: schema upgrades, moving to PostgreSQL.")


@db_app.command("upgrade")
def upgrade_command() -> None:
    """Bring the database named by the settings to the current schema (every start does too)."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    console.print("database is up to date")


@db_app.command("migrate-from-sqlite")
def migrate_from_sqlite(
    source: Annotated[
        Path,
        typer.Argument(help="The embedded database file (data/genplane.db).", exists=True, dir_okay=False),
    ],
) -> None:
    """Copy every row of an embedded SQLite database into GENPLANE_DATABASE_URL (PostgreSQL, empty).

    Stop genplane first. Keep GENPLANE_SECRET_KEY (or data/secret.key) for the new
    deployment: API keys are verified with it.
    """
    settings = get_settings()
    target = settings.resolved_database_url
    if not target.startswith("postgresql"):
        raise fail("set GENPLANE_DATABASE_URL to the PostgreSQL database to copy into")
    try:
        copied = asyncio.run(copy_database(f"sqlite+aiosqlite:///{source.resolve()}", target))
    except TargetNotEmpty as exc:
        raise fail(f"{exc}: copy into a new, empty database") from exc
    for table, rows in copied.items():
        console.print(f"{table}: {rows} rows")
    console.print(f"copied {sum(copied.values())} rows")
