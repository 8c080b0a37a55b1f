"""generations: an index on (status, created_at), for the queue gauges of /metrics

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-08 09:00:00.000000

A scrape of /metrics reports how many generations wait for a worker and how old the oldest
is. The index makes both a read of the pending range alone (a count, and its first entry),
whatever the size of the table. On a large PostgreSQL table, building it holds writes to
``generations`` for the build: create it beforehand with ``CREATE INDEX CONCURRENTLY
ix_generations_status_created ON generations (status, created_at)`` and this migration
keeps it.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_generations_status_created", "generations", ["status", "created_at"], if_not_exists=True
    )


def downgrade() -> None:
    op.drop_index("ix_generations_status_created", table_name="generations")
