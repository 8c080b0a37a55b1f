"""What every ``genplane`` command group shares: the console, the runner, errors, id columns."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column

from genplane.db.engine import Database
from genplane.db.migrate import upgrade
from genplane.settings import Settings, get_settings

console = Console()
T = TypeVar("T")


def run(work: Callable[[Database, Settings], Awaitable[T]]) -> T:
    """Upgrade the database, then run ``work`` on it in a fresh event loop."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)

    async def main() -> T:
        db = Database(settings.resolved_database_url)
        try:
            return await work(db, settings)
        finally:
            await db.dispose()

    return asyncio.run(main())


def id_column(header: str) -> Column:
    """Ids are what the other commands take: never shortened to fit the terminal."""
    return Column(header, no_wrap=True, min_width=36)


def fail(message: str) -> typer.Exit:
    """Print ``error: <message>`` (markup-escaped); raise the result to exit with status 1."""
    console.print(f"[red]error:[/red] {escape(message)}")
    return typer.Exit(code=1)
