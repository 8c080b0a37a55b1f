"""accounts: a counter of the account's generations in flight, for the in-flight cap

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 08:00:00.000000

Admitting a generation counted the account's pending and processing rows on every create.
The count is now ``accounts.generations_in_flight``, kept by ``generations.lifecycle``: an
admit raises it with one conditional UPDATE (``... WHERE generations_in_flight < cap``, which
is also what makes the cap hold under concurrent admits on PostgreSQL), and the move that
ends a generation lowers it in the same transaction. Backfilled here from the rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("generations_in_flight", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.execute(
        "UPDATE accounts SET generations_in_flight = counted.n "
        "FROM (SELECT account_id, count(*) AS n FROM generations "
        "WHERE status IN ('pending', 'processing') GROUP BY account_id) AS counted "
        "WHERE counted.account_id = accounts.id"
    )


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("generations_in_flight")
