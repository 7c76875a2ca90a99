"""Seed tables: datasets, dataset_samples, models.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("generation_id", sa.Integer, nullable=True, unique=True),
        sa.Column("samples_count", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("hour_generated", sa.Integer, nullable=False),
        sa.Column("seed", sa.BigInteger, nullable=True),
        sa.Column("source", sa.String(32), nullable=False, server_default="api"),
    )
    op.create_table(
        "dataset_samples",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("generation_id", sa.Integer, nullable=False),
        sa.Column("feature1", sa.Float, nullable=False),
        sa.Column("feature2", sa.Float, nullable=False),
        sa.Column("target", sa.Integer, nullable=False),
    )
    op.create_index("ix_dataset_samples_generation_id", "dataset_samples", ["generation_id"])
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("version", sa.String(32), nullable=False, unique=True),
        sa.Column("accuracy", sa.Float, nullable=False),
        sa.Column("training_samples", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("precision", sa.Float, nullable=True),
        sa.Column("recall", sa.Float, nullable=True),
        sa.Column("f1_score", sa.Float, nullable=True),
        sa.Column("test_samples", sa.Integer, nullable=True),
        sa.Column("generation_id", sa.Integer, nullable=True),
        sa.Column("registry_version", sa.Integer, nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("run_name", sa.String(128), nullable=True),
        sa.Column("parameters", sa.Text, nullable=True),
        sa.Column("hour_parity", sa.Integer, nullable=True),
    )
    op.create_index(
        "uq_models_single_active",
        "models",
        ["is_active"],
        unique=True,
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    )


def downgrade() -> None:
    op.drop_index("uq_models_single_active", table_name="models")
    op.drop_table("models")
    op.drop_index("ix_dataset_samples_generation_id", table_name="dataset_samples")
    op.drop_table("dataset_samples")
    op.drop_table("datasets")
