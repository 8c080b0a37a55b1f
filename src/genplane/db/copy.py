"""Moving an embedded install's data to PostgreSQL: every table, row for row.

Both databases are brought to the same schema first (the same Alembic migrations), so a
row read from one fits the other column for column; SQLAlchemy converts what the two
store differently (booleans, timestamps, JSON). Tables are copied parents first, in
batches, all in one target transaction: a failure leaves the target as it was. The
target must be empty: merging two histories (two ledgers for one account) has no right
answer. Counters PostgreSQL keeps beside the rows (the identity sequences of the ledger
and attempt ids) are moved past the copied ids.
"""

from __future__ import annotations

from sqlalchemy import Integer, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from genplane.db.migrate import upgrade
from genplane.db.models import Account, Base

BATCH_ROWS = 1000


class TargetNotEmpty(Exception):
    """The target database already holds accounts."""


async def copy_database(source_url: str, target_url: str) -> dict[str, int]:
    """Copy every table of ``source_url`` into the empty ``target_url``; rows per table."""
    upgrade(source_url)
    upgrade(target_url)
    source = create_async_engine(source_url)
    target = create_async_engine(target_url)
    copied: dict[str, int] = {}
    try:
        async with source.connect() as src, target.begin() as dst:
            if await dst.scalar(select(func.count()).select_from(Account)):
                raise TargetNotEmpty("the target database already has accounts")
            for table in Base.metadata.sorted_tables:
                copied[table.name] = 0
                result = await src.stream(select(table))
                async for rows in result.partitions(BATCH_ROWS):
                    await dst.execute(table.insert(), [dict(row._mapping) for row in rows])
                    copied[table.name] += len(rows)
            if dst.dialect.name == "postgresql":
                await _advance_sequences(dst)
    finally:
        await source.dispose()
        await target.dispose()
    return copied


async def _advance_sequences(conn: AsyncConnection) -> None:
    """Integer ids PostgreSQL generates continue after the copied ones."""
    for table in Base.metadata.sorted_tables:
        for column in table.primary_key.columns:
            if isinstance(column.type, Integer) and column.autoincrement in (True, "auto"):
                sequence = await conn.scalar(
                    text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column.name}
                )
                if sequence is None:
                    continue
                highest = await conn.scalar(select(func.max(column)))
                if highest is not None:
                    await conn.execute(text("SELECT setval(:s, :v)"), {"s": sequence, "v": highest})
