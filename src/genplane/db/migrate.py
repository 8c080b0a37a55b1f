"""Schema migrations through Alembic, callable from the CLI, the app and tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The option is read through configparser's interpolation: a percent-encoded password or
    # socket path in the URL would be taken for a reference.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision``; safe to run on every start (no-op when current)."""
    command.upgrade(alembic_config(url), revision)
