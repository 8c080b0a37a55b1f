"""retention: indexes the janitor's cut-offs and the attempt windows filter on

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 18:45:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_attempts_started", "provider_attempts", ["started_at"])
    op.create_index("ix_usage_day", "usage_counters", ["day"])


def downgrade() -> None:
    op.drop_index("ix_usage_day", table_name="usage_counters")
    op.drop_index("ix_attempts_started", table_name="provider_attempts")
