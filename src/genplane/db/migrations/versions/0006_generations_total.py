"""generations: a per-account counter for the list's total; the list's order indexed in full

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 08:00:00.000000

``GET /v1/content/list`` counted the account's whole history on every call. The count is
now ``accounts.generations_total``, kept by ``generations.lifecycle`` in the transaction
that inserts or deletes the row, and backfilled here from the rows. The list's index gains
``id``, the tie-break of its order (``created_at DESC, id DESC``), so a page is read off the
index without sorting the account's rows. The attempts' per-account index also carries
what the usage report and the health endpoint sum (provider, outcome, estimated cost), so
they read the index alone, not a table row per attempt.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ATTEMPTS_BY_ACCOUNT = ["account_id", "started_at"]
ATTEMPT_SUMS = ["provider", "outcome", "estimated_cost_millis"]


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("generations_total", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.execute(
        "UPDATE accounts SET generations_total = counted.n "
        "FROM (SELECT account_id, count(*) AS n FROM generations GROUP BY account_id) AS counted "
        "WHERE counted.account_id = accounts.id"
    )
    op.create_index("ix_generations_account_created_id", "generations", ["account_id", "created_at", "id"])
    op.drop_index("ix_generations_account_created", table_name="generations")
    op.drop_index("ix_attempts_account_started", table_name="provider_attempts")
    op.create_index("ix_attempts_account_started", "provider_attempts", [*ATTEMPTS_BY_ACCOUNT, *ATTEMPT_SUMS])


def downgrade() -> None:
    op.drop_index("ix_attempts_account_started", table_name="provider_attempts")
    op.create_index("ix_attempts_account_started", "provider_attempts", ATTEMPTS_BY_ACCOUNT)
    op.create_index("ix_generations_account_created", "generations", ["account_id", "created_at"])
    op.drop_index("ix_generations_account_created_id", table_name="generations")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("generations_total")
