"""Reading the /predict log: records, counts, summaries, time buckets, live features,
shadow comparisons and the labelled feedback the loop learns from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.engine import Engine

from ia_continu.db.sql import _finite_mean, _utc, time_bucket
from ia_continu.db.tables import feedback, monitoring_runs, predictions


def load_live_features(
    engine: Engine, *, since: datetime | None = None, limit: int = 10_000
) -> Any:
    """Features of the newest logged predictions (at most ``limit``, created at or after
    ``since``) as an (n, 2) float array, for drift against live traffic."""
    query = sa.select(predictions.c.feature1, predictions.c.feature2)
    if since is not None:
        query = query.where(predictions.c.created_at >= since)
    query = query.order_by(predictions.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return np.asarray(rows, dtype=np.float64).reshape(-1, 2)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us_to_datetime(epoch_us: int) -> datetime:
    """Exact (no float rounding) UTC datetime for integer microseconds since the epoch."""
    return _EPOCH + timedelta(microseconds=epoch_us)


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    id: int
    created_at: datetime
    feature1: float
    feature2: float
    prediction: int
    confidence: float
    model_version: str


@dataclass(frozen=True, slots=True)
class VersionTraffic:
    count: int
    class_0: int
    class_1: int
    mean_confidence: float | None


@dataclass(frozen=True, slots=True)
class PredictionSummary:
    count: int
    class_0: int
    class_1: int
    feature1_mean: float | None
    feature2_mean: float | None
    by_model_version: dict[str, VersionTraffic]


@dataclass(frozen=True, slots=True)
class PredictionBucket:
    start: datetime  # UTC, a multiple of the bucket width since the epoch
    model_version: str
    class_0: int
    class_1: int


def count_predictions(engine: Engine, *, since: datetime | None = None) -> int:
    stmt = sa.select(sa.func.count()).select_from(predictions)
    if since is not None:
        stmt = stmt.where(predictions.c.created_at >= _utc(since))
    with engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def list_recent_predictions(engine: Engine, *, limit: int = 100) -> list[PredictionRecord]:
    """The newest logged predictions, newest first."""
    with engine.connect() as conn:
        rows = (
            conn.execute(sa.select(predictions).order_by(predictions.c.id.desc()).limit(limit))
            .mappings()
            .all()
        )
    return [
        PredictionRecord(
            id=r["id"],
            created_at=_utc(r["created_at"]),
            feature1=r["feature1"],
            feature2=r["feature2"],
            prediction=r["prediction"],
            confidence=r["confidence"],
            model_version=r["model_version"],
        )
        for r in rows
    ]


def summarize_predictions(engine: Engine, *, since: datetime) -> PredictionSummary:
    """Traffic since ``since``: counts per class, feature means and, per model version,
    counts and mean confidence. One grouped query; the totals are sums of its groups."""
    p = predictions.c
    # Features are any finite floats: PostgreSQL's float SUM failed with "value out of
    # range" past 1.8e308 (the stats answered 503 for the whole window after one
    # /predict with [1e308, 1e308]). A numeric sum is exact; the mean is then finite.
    exact = engine.dialect.name == "postgresql"

    def total(column: sa.ColumnElement[float]) -> sa.ColumnElement[Any]:
        return sa.func.sum(sa.cast(column, sa.Numeric) if exact else column)

    stmt = (
        sa.select(
            p.model_version,
            p.prediction,
            sa.func.count(),
            sa.func.sum(p.confidence),
            total(p.feature1),
            total(p.feature2),
        )
        .where(p.created_at >= _utc(since))
        .group_by(p.model_version, p.prediction)
    )
    with engine.connect() as conn:
        groups = conn.execute(stmt).all()
    per_version: dict[str, list[float]] = {}  # version -> [class_0, class_1, confidence sum]
    count = class_1 = 0
    # Exact on PostgreSQL (numeric sums); on SQLite a sum past 1.8e308 is already inf.
    sum1: Decimal | float = Decimal(0) if exact else 0.0
    sum2: Decimal | float = Decimal(0) if exact else 0.0
    for version, prediction, n, conf_sum, f1_sum, f2_sum in groups:
        n = int(n)
        acc = per_version.setdefault(version, [0, 0, 0.0])
        acc[1 if prediction == 1 else 0] += n
        acc[2] += float(conf_sum)
        count += n
        class_1 += n if prediction == 1 else 0
        sum1 += f1_sum  # Decimal + Decimal, or float + float
        sum2 += f2_sum
    return PredictionSummary(
        count=count,
        class_0=count - class_1,
        class_1=class_1,
        feature1_mean=_finite_mean(sum1, count),
        feature2_mean=_finite_mean(sum2, count),
        by_model_version={
            version: VersionTraffic(
                count=int(c0 + c1),
                class_0=int(c0),
                class_1=int(c1),
                mean_confidence=conf / (c0 + c1) if c0 + c1 else None,
            )
            for version, (c0, c1, conf) in sorted(per_version.items())
        },
    )


def count_predictions_by_bucket(
    engine: Engine, *, since: datetime, bucket_seconds: int, until: datetime | None = None
) -> list[PredictionBucket]:
    """Predictions per class in fixed time buckets (aligned on multiples of
    ``bucket_seconds`` since the epoch) and model version, oldest first. Buckets
    without traffic are absent."""
    width = int(bucket_seconds)
    if width < 1:
        raise ValueError("bucket_seconds must be >= 1")
    p = predictions.c
    bucket = time_bucket(p.created_at, width, dialect=engine.dialect.name)
    class_1 = sa.func.sum(sa.case((p.prediction == 1, 1), else_=0))
    stmt = (
        sa.select(bucket, p.model_version, sa.func.count(), class_1)
        .where(
            p.created_at >= _utc(since),
            sa.true() if until is None else p.created_at < _utc(until),
        )
        .group_by(bucket, p.model_version)
        .order_by(bucket, p.model_version)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        PredictionBucket(
            start=datetime.fromtimestamp(int(start), UTC),
            model_version=version,
            class_0=int(n) - int(c1),
            class_1=int(c1),
        )
        for start, version, n, c1 in rows
    ]


@dataclass(frozen=True, slots=True)
class FeedbackWatermark:
    """Pairs with a prediction row id <= ``prediction_row_id`` and feedback received at or
    before ``received_at`` were available to the run that stored it."""

    prediction_row_id: int
    received_at: datetime


@dataclass(frozen=True, slots=True)
class LabelledFeedback:
    available: int  # joined pairs new since the previous watermark
    features: NDArray[np.float64]  # (n, 2); empty unless loaded
    target: NDArray[np.int64]
    watermark: FeedbackWatermark | None  # None when there is no feedback at all


def get_feedback_watermark(engine: Engine) -> FeedbackWatermark | None:
    """The watermark of the newest monitoring run that consumed labelled traffic."""
    r = monitoring_runs.c
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(r.feedback_watermark_id, r.feedback_watermark_at)
            .where(r.feedback_watermark_id.is_not(None), r.feedback_watermark_at.is_not(None))
            .order_by(r.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return None
    return FeedbackWatermark(prediction_row_id=int(row[0]), received_at=_utc(row[1]))


def collect_labelled_feedback(
    engine: Engine, *, after: FeedbackWatermark | None, min_rows: int, limit: int
) -> LabelledFeedback:
    """Predictions joined to their feedback (``predictions.prediction_id =
    feedback.prediction_id``) that are new since ``after``. The rows are loaded only when
    at least ``min_rows`` exist (at most the newest ``limit``); the returned watermark
    bounds what was counted, so that a caller storing it never reuses these pairs."""
    p, f = predictions.c, feedback.c
    with engine.connect() as conn:
        top_id = conn.execute(sa.select(sa.func.max(p.id))).scalar_one_or_none()
        top_at = conn.execute(sa.select(sa.func.max(f.received_at))).scalar_one_or_none()
        empty = LabelledFeedback(
            available=0,
            features=np.empty((0, 2), dtype=np.float64),
            target=np.empty(0, dtype=np.int64),
            watermark=None,
        )
        if top_id is None or top_at is None:
            return empty
        top = FeedbackWatermark(prediction_row_id=int(top_id), received_at=_utc(top_at))
        joined = predictions.join(feedback, p.prediction_id == f.prediction_id)
        bounds = [p.id <= top.prediction_row_id, f.received_at <= top.received_at]
        if after is not None:
            bounds.append(sa.or_(p.id > after.prediction_row_id, f.received_at > after.received_at))
        available = int(
            conn.execute(sa.select(sa.func.count()).select_from(joined).where(*bounds)).scalar_one()
        )
        if available < min_rows:
            return LabelledFeedback(
                available=available, features=empty.features, target=empty.target, watermark=top
            )
        rows = conn.execute(
            sa.select(p.feature1, p.feature2, f.label)
            .select_from(joined)
            .where(*bounds)
            .order_by(p.id.desc())
            .limit(limit)
        ).all()
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)[::-1]  # oldest first
    return LabelledFeedback(
        available=available,
        features=np.ascontiguousarray(arr[:, :2]),
        target=arr[:, 2].astype(np.int64),
        watermark=top,
    )


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    rows: int  # labelled live rows scored by both models
    champion_correct: int
    challenger_correct: int

    @property
    def champion_accuracy(self) -> float | None:
        return self.champion_correct / self.rows if self.rows else None

    @property
    def challenger_accuracy(self) -> float | None:
        return self.challenger_correct / self.rows if self.rows else None


def compare_on_shadow_rows(
    engine: Engine, *, champion_version: str, challenger_version: str
) -> ShadowComparison:
    """Both models' accuracy on the same labelled live rows: predictions served by the
    champion and scored in shadow by the challenger, joined to their feedback."""
    p, f = predictions.c, feedback.c
    stmt = (
        sa.select(
            sa.func.count(),
            sa.func.sum(sa.case((p.prediction == f.label, 1), else_=0)),
            sa.func.sum(sa.case((p.shadow_prediction == f.label, 1), else_=0)),
        )
        .select_from(predictions.join(feedback, p.prediction_id == f.prediction_id))
        .where(
            p.model_version == champion_version,
            p.shadow_version == challenger_version,
            p.shadow_prediction.is_not(None),
        )
    )
    with engine.connect() as conn:
        n, champ, chall = conn.execute(stmt).one()
    return ShadowComparison(
        rows=int(n), champion_correct=int(champ or 0), challenger_correct=int(chall or 0)
    )
