"""generations: how many outputs a success delivered, which is what it is charged for

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-10 09:00:00.000000

A provider may return fewer outputs than ``output_number`` asked: the generation is then
charged for the delivered ones and the rest of its reservation is refunded, in the
transaction that ends it. ``output_delivered`` keeps the delivered count (NULL until a
generation succeeds). Every generation that succeeded before was charged in full, so
existing successes are backfilled to what they asked.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("generations", sa.Column("output_delivered", sa.Integer(), nullable=True))
    op.execute("UPDATE generations SET output_delivered = output_number WHERE status = 'succeeded'")


def downgrade() -> None:
    with op.batch_alter_table("generations", schema=None) as batch_op:
        batch_op.drop_column("output_delivered")
