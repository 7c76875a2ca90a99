"""Learning from production: prediction ids, shadow scores, feedback, data source of a run.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        # Rows logged before this revision have no id (NULL is allowed by the unique index).
        batch.add_column(sa.Column("prediction_id", sa.String(36), nullable=True))
        # The shadow challenger's score of the same input (never returned to the client).
        batch.add_column(sa.Column("shadow_version", sa.String(32), nullable=True))
        batch.add_column(sa.Column("shadow_prediction", sa.Integer, nullable=True))
        batch.add_column(sa.Column("shadow_confidence", sa.Float, nullable=True))
    op.create_index("ux_predictions_prediction_id", "predictions", ["prediction_id"], unique=True)
    # Ground truth posted back for a served prediction. No foreign key on purpose: feedback
    # may arrive before its prediction is flushed from the API's in-memory log (joined at
    # read time), and an id that never matches stays an orphan instead of an error.
    op.create_table(
        "feedback",
        sa.Column("prediction_id", sa.String(36), primary_key=True),
        sa.Column("label", sa.Integer, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_feedback_received_at", "feedback", ["received_at"])
    with op.batch_alter_table("monitoring_runs") as batch:
        # generated | feedback | upload: where the run's fresh labelled rows came from.
        batch.add_column(sa.Column("data_source", sa.String(16), nullable=True))
        batch.add_column(sa.Column("labelled_samples", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("monitoring_runs") as batch:
        batch.drop_column("labelled_samples")
        batch.drop_column("data_source")
    op.drop_index("ix_feedback_received_at", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ux_predictions_prediction_id", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("shadow_confidence")
        batch.drop_column("shadow_prediction")
        batch.drop_column("shadow_version")
        batch.drop_column("prediction_id")
