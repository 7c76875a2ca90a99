"""Per-minute rollup of the prediction log (fast /predictions/stats and /timeseries).

Revision ID: 0004_bounds
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_bounds"
down_revision = "0003"
branch_labels = None
depends_on = None

# The feature sums are stored times 2**-64 (db/rollup.py: FEATURE_SCALE).
_SCALE = "5.421010862427522e-20"


def _scaled(column: str) -> str:
    # PostgreSQL raises "value out of range: underflow" when a float product leaves the
    # normal range (1e-300 * 2**-64); such a value adds nothing visible to a mean.
    return f"CASE WHEN abs({column}) < 1e-250 THEN 0 ELSE {column} * {_SCALE} END"


def upgrade() -> None:
    op.create_table(
        "prediction_rollup",
        sa.Column("minute", sa.BigInteger, primary_key=True),
        sa.Column("model_version", sa.String(32), primary_key=True),
        sa.Column("prediction", sa.Integer, primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("confidence_sum", sa.Float, nullable=False),
        sa.Column("feature1_sum", sa.Float, nullable=False),
        sa.Column("feature2_sum", sa.Float, nullable=False),
    )
    # The last 8 days of rows already logged (older ones are never asked for).
    if op.get_bind().dialect.name == "sqlite":
        minute = "CAST(strftime('%s', substr(created_at, 1, 19)) AS INTEGER) / 60 * 60"
        since = "strftime('%Y-%m-%d %H:%M:%S', 'now', '-8 days')"
    else:
        minute = "CAST(floor(extract(epoch FROM created_at) / 60) * 60 AS BIGINT)"
        since = "now() - interval '8 days'"
    op.execute(
        "INSERT INTO prediction_rollup (minute, model_version, prediction, count, "
        "confidence_sum, feature1_sum, feature2_sum) "
        f"SELECT {minute} AS m, model_version, prediction, count(*), sum(confidence), "
        f"sum({_scaled('feature1')}), sum({_scaled('feature2')}) FROM predictions "
        f"WHERE created_at >= {since} GROUP BY m, model_version, prediction"
    )


def downgrade() -> None:
    op.drop_table("prediction_rollup")
