"""Alembic environment: runs migrations over the async engine of the configured URL."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from genplane.db.models import Base

target_metadata = Base.metadata


#: Any constant shared by every genplane process: PostgreSQL's advisory-lock key for migrating.
_MIGRATION_LOCK = 0x67656E706C616E65  # "genplane"


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several processes start at once when scaled out and each brings the schema to head:
        # one migrates while the others wait, then find nothing left to do. The lock is the
        # session's, released when this connection closes.
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})")
        connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_async_engine(
        context.config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool
    )
    async with engine.connect() as conn:
        await conn.run_sync(_run)
    await engine.dispose()


def _run_in_thread() -> None:
    # The CLI may call us from inside a running event loop (app start-up); give the
    # migration its own loop on a worker thread in that case.
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_run_async())
        return
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(_run_async())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


_run_in_thread()
