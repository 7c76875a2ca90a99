"""Table definitions (SQLAlchemy Core). The seed's table and column names are kept exactly."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

datasets = sa.Table(
    "datasets",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    # Equal to id, set in the same transaction: unique and increasing under concurrency.
    sa.Column("generation_id", sa.Integer, nullable=True, unique=True),
    sa.Column("samples_count", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("hour_generated", sa.Integer, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=True),
    sa.Column("source", sa.String(32), nullable=False, server_default="api"),
)

dataset_samples = sa.Table(
    "dataset_samples",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("generation_id", sa.Integer, nullable=False, index=True),
    sa.Column("feature1", sa.Float, nullable=False),
    sa.Column("feature2", sa.Float, nullable=False),
    sa.Column("target", sa.Integer, nullable=False),
)

models = sa.Table(
    "models",
    metadata,
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
    # Fitted parameters as JSON: any process can serve the model without MLflow.
    sa.Column("parameters", sa.Text, nullable=True),
    sa.Column("hour_parity", sa.Integer, nullable=True),
    sa.Index(
        "uq_models_single_active",
        "is_active",
        unique=True,
        sqlite_where=sa.text("is_active"),
        postgresql_where=sa.text("is_active"),
    ),
)

# Every /predict answer, written in batches off the request path.
predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("feature1", sa.Float, nullable=False),
    sa.Column("feature2", sa.Float, nullable=False),
    sa.Column("prediction", sa.Integer, nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("model_version", sa.String(32), nullable=False, index=True),
    # Returned to the client as "prediction_id"; the key feedback joins on.
    sa.Column("prediction_id", sa.String(36), nullable=True),
    # The shadow challenger's score of the same input (IA_SHADOW), never returned.
    sa.Column("shadow_version", sa.String(32), nullable=True),
    sa.Column("shadow_prediction", sa.Integer, nullable=True),
    sa.Column("shadow_confidence", sa.Float, nullable=True),
    sa.Index("ux_predictions_prediction_id", "prediction_id", unique=True),
)

# Per-minute summary of `predictions`, kept by the writer in the same transaction
# (db/rollup.py): /predictions/stats and /timeseries read it instead of the rows.
prediction_rollup = sa.Table(
    "prediction_rollup",
    metadata,
    sa.Column("minute", sa.BigInteger, primary_key=True),  # epoch seconds, multiple of 60
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("prediction", sa.Integer, primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("confidence_sum", sa.Float, nullable=False),
    # Sums of the features times 2**-64: never overflow (see db/rollup.py).
    sa.Column("feature1_sum", sa.Float, nullable=False),
    sa.Column("feature2_sum", sa.Float, nullable=False),
)

# Predictions scored by a shadow model, per minute (0006_perf): the "scored" counts of
# /predictions/performance. Kept by the writer beside prediction_rollup (db/rollup.py).
shadow_rollup = sa.Table(
    "shadow_rollup",
    metadata,
    sa.Column("minute", sa.BigInteger, primary_key=True),  # epoch seconds, multiple of 60
    sa.Column("model_version", sa.String(32), primary_key=True),
    sa.Column("shadow_version", sa.String(32), primary_key=True),
    sa.Column("count", sa.BigInteger, nullable=False),
)

# Ground truth posted back for a served prediction (POST /feedback). No foreign key:
# feedback may arrive before its prediction is flushed, and unmatched ids are orphans.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("prediction_id", sa.String(36), primary_key=True),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
    # Copied from the prediction once both exist (0006_perf, db/feedback.py): by the
    # /feedback upsert when the prediction is logged, else by the prediction writer's
    # flush. NULL while the prediction is not logged (an orphan so far).
    sa.Column("model_version", sa.String(32), nullable=True),
    sa.Column("prediction", sa.Integer, nullable=True),
    sa.Column("shadow_version", sa.String(32), nullable=True),
    sa.Column("shadow_prediction", sa.Integer, nullable=True),
    sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=True),
    # Days since the epoch (UTC) of predicted_at: the index below leads with it so that
    # SQLite groups a window's labels in index order, without sorting them (0.26 s -> 0.05 s
    # for 300,000 labels).
    sa.Column("predicted_day", sa.Integer, nullable=True),
    # Label delay (received_at - predicted_at) as a log-scale bucket (db/feedback.py:
    # DELAY_GAMMA): percentiles from a GROUP BY, within 1.1 %.
    sa.Column("delay_bucket", sa.Integer, nullable=True),
    # /predictions/performance reads only this index (one GROUP BY over the window).
    sa.Index(
        "ix_feedback_performance",
        "predicted_day",
        "model_version",
        "shadow_version",
        "prediction",
        "shadow_prediction",
        "label",
        "delay_bucket",
        "predicted_at",
    ),
    # The labels whose prediction is not logged (yet): orphans, and the writer's check.
    sa.Index(
        "ix_feedback_unmatched",
        "received_at",
        sqlite_where=sa.text("predicted_at IS NULL"),
        postgresql_where=sa.text("predicted_at IS NULL"),
    ),
)

# One row per monitoring flow run.
monitoring_runs = sa.Table(
    "monitoring_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("duration_seconds", sa.Float, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),  # ok | drift | failed
    sa.Column("champion_version", sa.String(32), nullable=True),
    sa.Column("generation_id", sa.Integer, nullable=True),
    sa.Column("batch_samples", sa.Integer, nullable=True),
    sa.Column("hour_generated", sa.Integer, nullable=True),
    sa.Column("reference_accuracy", sa.Float, nullable=True),  # champion's held-out accuracy
    sa.Column("accuracy", sa.Float, nullable=True),  # champion on the new batch
    sa.Column("precision", sa.Float, nullable=True),
    sa.Column("recall", sa.Float, nullable=True),
    sa.Column("f1_score", sa.Float, nullable=True),
    sa.Column("ks_statistic_feature1", sa.Float, nullable=True),
    sa.Column("ks_p_value_feature1", sa.Float, nullable=True),
    sa.Column("psi_feature1", sa.Float, nullable=True),
    sa.Column("ks_statistic_feature2", sa.Float, nullable=True),
    sa.Column("ks_p_value_feature2", sa.Float, nullable=True),
    sa.Column("psi_feature2", sa.Float, nullable=True),
    # Same statistics against the live inputs logged by /predict, when enough exist (JSON).
    sa.Column("live_drift", sa.Text, nullable=True),
    sa.Column("drift_detected", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("decision", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("new_version", sa.String(32), nullable=True),
    sa.Column("new_accuracy", sa.Float, nullable=True),  # challenger on its held-out rows
    sa.Column("champion_accuracy_on_holdout", sa.Float, nullable=True),
    sa.Column("mlflow_run_id", sa.String(64), nullable=True),
    sa.Column("flow_run_id", sa.String(64), nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    # generated | feedback | upload: where the run's fresh labelled rows came from.
    sa.Column("data_source", sa.String(16), nullable=True),
    sa.Column("labelled_samples", sa.Integer, nullable=True),
    # The labelled traffic consumed so far (0005_loop): predictions.id and
    # feedback.received_at bounds; NULL on runs that used no feedback.
    sa.Column("feedback_watermark_id", sa.BigInteger, nullable=True),
    sa.Column("feedback_watermark_at", sa.DateTime(timezone=True), nullable=True),
)
