"""generations: room for every task of a multi-output prediction id

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-11 09:00:00.000000

Some providers answer one task per output, and the adapter keeps every task (with where to
poll it) in the one prediction id: four BFL tasks on a regional cluster are already over
200 characters, which PostgreSQL refused; a polling URL of an unusual shape is kept whole.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.alter_column(
            "prediction_id", existing_type=sa.String(length=200), type_=sa.String(length=2000)
        )


def downgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.alter_column(
            "prediction_id", existing_type=sa.String(length=2000), type_=sa.String(length=200)
        )
