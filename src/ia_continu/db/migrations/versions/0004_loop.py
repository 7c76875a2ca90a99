"""Watermark of the labelled traffic a monitoring run consumed.

Revision ID: 0004_loop
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_loop"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("monitoring_runs") as batch:
        # A (prediction, feedback) pair is new for the next run when its prediction row id
        # is above the first or its feedback arrived after the second: feedback may refer
        # to a prediction flushed later, so neither bound alone is enough.
        batch.add_column(sa.Column("feedback_watermark_id", sa.BigInteger, nullable=True))
        batch.add_column(
            sa.Column("feedback_watermark_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("monitoring_runs") as batch:
        batch.drop_column("feedback_watermark_at")
        batch.drop_column("feedback_watermark_id")
