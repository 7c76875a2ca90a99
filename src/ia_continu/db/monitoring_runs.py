"""Monitoring runs (one row per run of the continuous-learning loop)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ia_continu.db.engine import WRITE
from ia_continu.db.sql import _utc
from ia_continu.db.tables import monitoring_runs

DRIFT_FEATURES = ("feature1", "feature2")


@dataclass(frozen=True, slots=True)
class MonitoringRunRecord:
    """One monitoring run. ``drift`` / ``live_drift`` map feature -> {ks_statistic,
    ks_p_value, psi}; ``id`` is None until stored."""

    started_at: datetime
    status: str  # ok | drift | failed
    decision: str  # none | promoted | kept_champion | failed
    id: int | None = None
    finished_at: datetime | None = None
    duration_seconds: float | None = None
    champion_version: str | None = None
    generation_id: int | None = None
    batch_samples: int | None = None
    hour_generated: int | None = None
    reference_accuracy: float | None = None
    accuracy: float | None = None
    precision: float | None = None
    recall: float | None = None
    f1_score: float | None = None
    drift: dict[str, dict[str, float]] | None = None
    live_drift: dict[str, dict[str, float]] | None = None
    drift_detected: bool = False
    reason: str | None = None
    new_version: str | None = None
    new_accuracy: float | None = None
    champion_accuracy_on_holdout: float | None = None
    mlflow_run_id: str | None = None
    flow_run_id: str | None = None
    error: str | None = None
    data_source: str | None = None  # generated | feedback | upload; None: no fresh data
    labelled_samples: int | None = None
    # Labelled traffic consumed up to here (predictions.id, feedback.received_at).
    feedback_watermark_id: int | None = None
    feedback_watermark_at: datetime | None = None


def insert_monitoring_run(engine: Engine, run: MonitoringRunRecord) -> MonitoringRunRecord:
    """Store a finished run; returns it with its id."""
    values = _monitoring_values(run)
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        run_id = conn.execute(
            monitoring_runs.insert().values(**values).returning(monitoring_runs.c.id)
        ).scalar_one()
    from dataclasses import replace

    return replace(run, id=int(run_id))


def list_monitoring_runs(
    engine: Engine, *, limit: int = 20, offset: int = 0
) -> list[MonitoringRunRecord]:
    """Newest first (by start time, then id)."""
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.select(monitoring_runs)
                .order_by(monitoring_runs.c.started_at.desc(), monitoring_runs.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
            .mappings()
            .all()
        )
    return [_monitoring_record(r) for r in rows]


def get_latest_monitoring_run(engine: Engine) -> MonitoringRunRecord | None:
    runs = list_monitoring_runs(engine, limit=1)
    return runs[0] if runs else None


def count_monitoring_runs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(monitoring_runs)).scalar_one()
        )


def get_last_monitored_generation_id(engine: Engine) -> int | None:
    """The newest dataset any monitoring run has looked at (fresh data comes after it)."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.max(monitoring_runs.c.generation_id))
        ).scalar_one_or_none()


def _monitoring_values(run: MonitoringRunRecord) -> dict[str, Any]:
    values: dict[str, Any] = {
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_seconds": run.duration_seconds,
        "status": run.status,
        "champion_version": run.champion_version,
        "generation_id": run.generation_id,
        "batch_samples": run.batch_samples,
        "hour_generated": run.hour_generated,
        "reference_accuracy": run.reference_accuracy,
        "accuracy": run.accuracy,
        "precision": run.precision,
        "recall": run.recall,
        "f1_score": run.f1_score,
        "live_drift": json.dumps(run.live_drift) if run.live_drift is not None else None,
        "drift_detected": run.drift_detected,
        "decision": run.decision,
        "reason": run.reason,
        "new_version": run.new_version,
        "new_accuracy": run.new_accuracy,
        "champion_accuracy_on_holdout": run.champion_accuracy_on_holdout,
        "mlflow_run_id": run.mlflow_run_id,
        "flow_run_id": run.flow_run_id,
        "error": run.error,
        "data_source": run.data_source,
        "labelled_samples": run.labelled_samples,
        "feedback_watermark_id": run.feedback_watermark_id,
        "feedback_watermark_at": run.feedback_watermark_at,
    }
    for feature in DRIFT_FEATURES:
        stats = (run.drift or {}).get(feature, {})
        values[f"ks_statistic_{feature}"] = stats.get("ks_statistic")
        values[f"ks_p_value_{feature}"] = stats.get("ks_p_value")
        values[f"psi_{feature}"] = stats.get("psi")
    return values


def _monitoring_record(row: Any) -> MonitoringRunRecord:
    drift: dict[str, dict[str, float]] | None = {}
    for feature in DRIFT_FEATURES:
        statistic = row[f"ks_statistic_{feature}"]
        if statistic is None:
            continue
        assert drift is not None
        drift[feature] = {
            "ks_statistic": statistic,
            "ks_p_value": row[f"ks_p_value_{feature}"],
            "psi": row[f"psi_{feature}"],
        }
    return MonitoringRunRecord(
        id=row["id"],
        started_at=_utc(row["started_at"]),
        finished_at=_utc(row["finished_at"]) if row["finished_at"] is not None else None,
        duration_seconds=row["duration_seconds"],
        status=row["status"],
        champion_version=row["champion_version"],
        generation_id=row["generation_id"],
        batch_samples=row["batch_samples"],
        hour_generated=row["hour_generated"],
        reference_accuracy=row["reference_accuracy"],
        accuracy=row["accuracy"],
        precision=row["precision"],
        recall=row["recall"],
        f1_score=row["f1_score"],
        drift=drift or None,
        live_drift=json.loads(row["live_drift"]) if row["live_drift"] else None,
        drift_detected=bool(row["drift_detected"]),
        decision=row["decision"],
        reason=row["reason"],
        new_version=row["new_version"],
        new_accuracy=row["new_accuracy"],
        champion_accuracy_on_holdout=row["champion_accuracy_on_holdout"],
        mlflow_run_id=row["mlflow_run_id"],
        flow_run_id=row["flow_run_id"],
        error=row["error"],
        data_source=row["data_source"],
        labelled_samples=row["labelled_samples"],
        feedback_watermark_id=row["feedback_watermark_id"],
        feedback_watermark_at=(
            _utc(row["feedback_watermark_at"]) if row["feedback_watermark_at"] is not None else None
        ),
    )
