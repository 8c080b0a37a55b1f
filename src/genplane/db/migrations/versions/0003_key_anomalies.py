"""key anomalies: patterns flagged in a key's request sequence

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_anomalies",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=40), nullable=False),
        sa.Column("key_prefix", sa.String(length=16), nullable=False),
        sa.Column("pattern", sa.String(length=40), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=True),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("blocked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("key_anomalies", schema=None) as batch_op:
        batch_op.create_index(
            "ix_key_anomalies_account_last_seen", ["account_id", "last_seen_at"], unique=False
        )
        batch_op.create_index("ix_key_anomalies_key_last_seen", ["key_id", "last_seen_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("key_anomalies", schema=None) as batch_op:
        batch_op.drop_index("ix_key_anomalies_key_last_seen")
        batch_op.drop_index("ix_key_anomalies_account_last_seen")

    op.drop_table("key_anomalies")
