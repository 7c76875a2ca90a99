"""Fast realized performance: the prediction's fields copied into feedback, scored counts
per minute, the rollups kept 100 days (issue 10; db/feedback.py, db/rollup.py).

Revision ID: 0006_perf
Revises: 0005_loop
Create Date: 2026-11-30
"""

from __future__ import annotations

import math

import sqlalchemy as sa
from alembic import op

revision = "0006_perf"
down_revision = "0005_loop"
branch_labels = None
depends_on = None

# As db/feedback.py computes it at run time (a migration must not change with the code).
_GAMMA = 2.0 ** (1 / 32)
_UNIT = 0.001
_PER_E = 1.0 / math.log(_GAMMA)
# The feature sums are stored times 2**-64 (db/rollup.py: FEATURE_SCALE).
_SCALE = "5.421010862427522e-20"


def _scaled(column: str) -> str:
    # As 0004: PostgreSQL raises "value out of range: underflow" below the normal range.
    return f"CASE WHEN abs({column}) < 1e-250 THEN 0 ELSE {column} * {_SCALE} END"


def _delay_bucket(dialect: str, received_at: str, created_at: str) -> str:
    if dialect == "sqlite":
        seconds = f"((julianday({received_at}) - julianday({created_at})) * 86400.0)"
    else:
        seconds = f"(extract(epoch FROM ({received_at}) - ({created_at}))::float8)"
    return (
        f"CASE WHEN {seconds} > {_UNIT!r} "
        f"THEN CAST(ceil(ln({seconds} / {_UNIT!r}) * {_PER_E!r}) AS INTEGER) ELSE 0 END"
    )


def _day(dialect: str, created_at: str) -> str:
    if dialect == "sqlite":
        return f"CAST(strftime('%s', substr({created_at}, 1, 19)) AS INTEGER) / 86400"
    return f"CAST(floor(extract(epoch FROM {created_at}) / 86400) AS INTEGER)"


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for column in (
        sa.Column("model_version", sa.String(32), nullable=True),
        sa.Column("prediction", sa.Integer, nullable=True),
        sa.Column("shadow_version", sa.String(32), nullable=True),
        sa.Column("shadow_prediction", sa.Integer, nullable=True),
        sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("predicted_day", sa.Integer, nullable=True),
        sa.Column("delay_bucket", sa.Integer, nullable=True),
    ):
        op.add_column("feedback", column)  # nullable: no table rebuild on SQLite
    # The labels already matched: one UPDATE ... FROM (SQLite >= 3.33, PostgreSQL).
    op.execute(
        "UPDATE feedback SET model_version = p.model_version, prediction = p.prediction, "
        "shadow_version = p.shadow_version, shadow_prediction = p.shadow_prediction, "
        "predicted_at = p.created_at, predicted_day = "
        + _day(dialect, "p.created_at")
        + ", delay_bucket = "
        + _delay_bucket(dialect, "feedback.received_at", "p.created_at")
        + " FROM predictions AS p WHERE p.prediction_id = feedback.prediction_id"
    )
    op.create_index(
        "ix_feedback_performance",
        "feedback",
        [
            "predicted_day",
            "model_version",
            "shadow_version",
            "prediction",
            "shadow_prediction",
            "label",
            "delay_bucket",
            "predicted_at",
        ],
    )
    op.create_index(
        "ix_feedback_unmatched",
        "feedback",
        ["received_at"],
        sqlite_where=sa.text("predicted_at IS NULL"),
        postgresql_where=sa.text("predicted_at IS NULL"),
    )

    if dialect == "sqlite":
        minute = "CAST(strftime('%s', substr(created_at, 1, 19)) AS INTEGER) / 60 * 60"
    else:
        minute = "CAST(floor(extract(epoch FROM created_at) / 60) * 60 AS BIGINT)"
    op.create_table(
        "shadow_rollup",
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("model_version", sa.String(32), primary_key=True),
        sa.Column("shadow_version", sa.String(32), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    # From the rows still logged (a prune may have removed some: those are not counted).
    op.execute(
        "INSERT INTO shadow_rollup (minute, model_version, shadow_version, count) "
        f"SELECT {minute} AS m, model_version, shadow_version, count(*) FROM predictions "
        "WHERE shadow_version IS NOT NULL GROUP BY m, model_version, shadow_version"
    )
    # prediction_rollup kept 8 days until now: the older minutes, from the rows still
    # logged (the minutes it holds are left as they are: they count pruned rows too).
    op.execute(
        "INSERT INTO prediction_rollup (minute, model_version, prediction, count, "
        "confidence_sum, feature1_sum, feature2_sum) "
        f"SELECT {minute} AS m, model_version, prediction, count(*), sum(confidence), "
        f"sum({_scaled('feature1')}), sum({_scaled('feature2')}) FROM predictions "
        f"WHERE {minute} < (SELECT coalesce(min(minute), 9000000000000) FROM prediction_rollup) "
        "GROUP BY m, model_version, prediction"
    )


def downgrade() -> None:
    op.drop_table("shadow_rollup")
    op.drop_index("ix_feedback_unmatched", table_name="feedback")
    op.drop_index("ix_feedback_performance", table_name="feedback")
    with op.batch_alter_table("feedback") as batch:
        for name in (
            "delay_bucket",
            "predicted_day",
            "predicted_at",
            "shadow_prediction",
            "shadow_version",
            "prediction",
            "model_version",
        ):
            batch.drop_column(name)
