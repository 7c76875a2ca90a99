"""Prediction log and monitoring runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("feature1", sa.Float, nullable=False),
        sa.Column("feature2", sa.Float, nullable=False),
        sa.Column("prediction", sa.Integer, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("model_version", sa.String(32), nullable=False),
    )
    op.create_index("ix_predictions_model_version", "predictions", ["model_version"])
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_table(
        "monitoring_runs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_seconds", sa.Float, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("champion_version", sa.String(32), nullable=True),
        sa.Column("generation_id", sa.Integer, nullable=True),
        sa.Column("batch_samples", sa.Integer, nullable=True),
        sa.Column("hour_generated", sa.Integer, nullable=True),
        sa.Column("reference_accuracy", sa.Float, nullable=True),
        sa.Column("accuracy", sa.Float, nullable=True),
        sa.Column("precision", sa.Float, nullable=True),
        sa.Column("recall", sa.Float, nullable=True),
        sa.Column("f1_score", sa.Float, nullable=True),
        sa.Column("ks_statistic_feature1", sa.Float, nullable=True),
        sa.Column("ks_p_value_feature1", sa.Float, nullable=True),
        sa.Column("psi_feature1", sa.Float, nullable=True),
        sa.Column("ks_statistic_feature2", sa.Float, nullable=True),
        sa.Column("ks_p_value_feature2", sa.Float, nullable=True),
        sa.Column("psi_feature2", sa.Float, nullable=True),
        sa.Column("live_drift", sa.Text, nullable=True),
        sa.Column("drift_detected", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("decision", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("new_version", sa.String(32), nullable=True),
        sa.Column("new_accuracy", sa.Float, nullable=True),
        sa.Column("champion_accuracy_on_holdout", sa.Float, nullable=True),
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_monitoring_runs_started_at", "monitoring_runs", ["started_at"])


def downgrade() -> None:
    op.drop_table("monitoring_runs")
    op.drop_table("predictions")
