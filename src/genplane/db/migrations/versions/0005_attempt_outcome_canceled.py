"""attempts: one spelling of canceled

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 07:30:00.000000

Attempt outcomes were written "cancelled" while generation statuses say "canceled";
``contract.status`` now spells both one way. The usage report's field keeps the
contract's name (``cancelled_count``).
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE provider_attempts SET outcome = 'canceled' WHERE outcome = 'cancelled'")


def downgrade() -> None:
    op.execute("UPDATE provider_attempts SET outcome = 'cancelled' WHERE outcome = 'canceled'")
