"""SQL of learning from production: feedback upserts, realized performance, the shadow model.

Kept beside the other aggregate modules (same conventions: the engine passed explicitly,
plain records back) so that the feedback work stays in one place.

Feedback is joined to predictions at read time on ``prediction_id``: there is no foreign
key, a label may arrive before its prediction is flushed from an API worker's in-memory
log, and it counts as soon as that prediction is written. A label whose id matches no
logged prediction is an orphan (counted, never an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ia_continu.db.engine import WRITE

# --- feedback ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FeedbackOutcome:
    received: int  # items in the request
    created: int  # ids labelled for the first time
    updated: int  # ids whose label changed (the new label replaces the old one)
    unchanged: int  # the same label again, or an id repeated within the request

    @property
    def stored(self) -> int:
        return self.created + self.updated


# Same label again: the WHERE leaves the row untouched (updated_at too). A different
# label replaces the old one and sets updated_at; received_at keeps the first arrival
# (the label delay is measured to it). RETURNING names the rows written: a new row has
# no updated_at yet. (Tested in Python: SQLite 3.40 answered 0 for "RETURNING updated_at
# IS NULL" on a freshly inserted row.)
_UPSERT_TAIL = (
    " ON CONFLICT (prediction_id) DO UPDATE SET label = excluded.label, "
    "updated_at = excluded.received_at WHERE feedback.label <> excluded.label "
    "RETURNING updated_at"
)
# SQLite: the whole request as one JSON parameter (10,000 items would need 20,000 bound
# variables otherwise). "WHERE true" resolves the INSERT ... SELECT ... ON CONFLICT
# parsing ambiguity, as SQLite's documentation asks.
_SQLITE_UPSERT = (
    "INSERT INTO feedback (prediction_id, label, received_at) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), ? "
    "FROM json_each(?) WHERE true" + _UPSERT_TAIL
)
# PostgreSQL: two arrays, one statement, one round trip.
_POSTGRES_UPSERT = (
    "INSERT INTO feedback (prediction_id, label, received_at) "
    "SELECT id, label, %(now)s FROM unnest(%(ids)s::varchar[], %(labels)s::int[]) AS t(id, label)"
    + _UPSERT_TAIL
)


def upsert_feedback(
    engine: Engine, items: Sequence[tuple[str, int]], *, received_at: datetime
) -> FeedbackOutcome:
    """Store labels (prediction_id, 0|1) in one statement. Within one request the last
    label of a repeated id wins. Blocking: the API calls it from a thread."""
    # PostgreSQL refuses to touch one row twice in a statement ("ON CONFLICT DO UPDATE
    # command cannot affect row a second time"); SQLite would apply both in order.
    latest = dict(items)
    if not latest:
        return FeedbackOutcome(received=len(items), created=0, updated=0, unchanged=len(items))
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            rows = conn.exec_driver_sql(
                _POSTGRES_UPSERT,
                {"now": received_at, "ids": list(latest), "labels": list(latest.values())},
            ).all()
        else:
            # SQLite stores times as text, in SQLAlchemy's DateTime format (naive UTC).
            rows = conn.exec_driver_sql(
                _SQLITE_UPSERT,
                (_sqlite_time(received_at), orjson.dumps(list(latest.items())).decode()),
            ).all()
    created = sum(1 for (updated_at,) in rows if updated_at is None)
    updated = len(rows) - created
    return FeedbackOutcome(
        received=len(items), created=created, updated=updated, unchanged=len(items) - len(rows)
    )


def _sqlite_time(value: datetime) -> str:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


# --- realized performance ----------------------------------------------------------------


@dataclass(slots=True)
class Confusion:
    """Counts of (predicted, label) pairs: enough for accuracy, precision, recall, F1."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, predicted: int, label: int, n: int) -> None:
        if predicted == 1:
            if label == 1:
                self.tp += n
            else:
                self.fp += n
        elif label == 1:
            self.fn += n
        else:
            self.tn += n

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    def metrics(self) -> dict[str, float | None]:
        """As sklearn.metrics with zero_division=0 (ml/evaluate.py); None without rows."""
        n = self.total
        if not n:
            return {"accuracy": None, "precision": None, "recall": None, "f1_score": None}
        tp, fp, fn = self.tp, self.fp, self.fn
        return {
            "accuracy": (tp + self.tn) / n,
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1_score": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        }


@dataclass(slots=True)
class VersionPerformanceRecord:
    served: int = 0
    confusion: Confusion = field(default_factory=Confusion)
    delays: Any = None  # numpy array of label delays in seconds (labelled rows)


@dataclass(slots=True)
class ShadowPerformanceRecord:
    """A shadow version on the labelled rows it scored, beside the champion on the same rows."""

    scored: int = 0  # predictions it scored in the window (labelled or not)
    shadow: Confusion = field(default_factory=Confusion)
    champion: Confusion = field(default_factory=Confusion)


@dataclass(frozen=True, slots=True)
class PerformanceRecord:
    by_version: dict[str, VersionPerformanceRecord]
    by_shadow: dict[str, ShadowPerformanceRecord]
    orphans: int


def read_performance(
    engine: Engine, *, since: datetime, until: datetime, version: str | None = None
) -> PerformanceRecord:
    """Served and labelled predictions made in [since, until), per model version and per
    shadow version, plus the labels received in that window that match no prediction."""
    from ia_continu.db.tables import feedback, predictions

    p, f = predictions.c, feedback.c
    since_, until_ = _as_utc(since), _as_utc(until)
    window = sa.and_(p.created_at >= since_, p.created_at < until_)
    if version is not None:
        window = sa.and_(window, p.model_version == version)
    if engine.dialect.name == "sqlite":
        delay: Any = (sa.func.julianday(f.received_at) - sa.func.julianday(p.created_at)) * 86400.0
    else:
        delay = sa.extract("epoch", f.received_at - p.created_at)
    served_stmt = (
        sa.select(p.model_version, p.shadow_version, sa.func.count())
        .where(window)
        .group_by(p.model_version, p.shadow_version)
    )
    # One pass driving from the labels (fewer than the predictions): labels received since
    # ``since`` (a label cannot arrive before its prediction was made), each with its
    # prediction when one is logged. Labelled rows, their delays and the orphans all come
    # from it; the grouping is done with numpy.
    pass_stmt = (
        sa.select(
            p.model_version,
            p.prediction,
            p.shadow_version,
            p.shadow_prediction,
            f.label,
            delay,
            p.created_at.is_(None),
            sa.and_(p.created_at >= since_, p.created_at < until_),
            f.received_at < until_,
        )
        .select_from(feedback.outerjoin(predictions, p.prediction_id == f.prediction_id))
        .where(f.received_at >= since_)
    )
    if version is not None:
        pass_stmt = pass_stmt.where(p.model_version == version)
    by_version: dict[str, VersionPerformanceRecord] = {}
    by_shadow: dict[str, ShadowPerformanceRecord] = {}
    with engine.connect() as conn:
        for model_version, shadow_version, n in conn.execute(served_stmt):
            by_version.setdefault(model_version, VersionPerformanceRecord()).served += int(n)
            if shadow_version is not None:
                by_shadow.setdefault(shadow_version, ShadowPerformanceRecord()).scored += int(n)
        rows = conn.execute(pass_stmt).all()
    orphans = 0
    labelled: list[Any] = []
    for row in rows:
        if row[6]:  # no prediction carries this id
            orphans += 1 if row[8] else 0
        elif row[7]:  # its prediction was made in the window
            labelled.append(row)
    _aggregate_labelled(labelled, by_version, by_shadow)
    return PerformanceRecord(
        by_version=by_version, by_shadow=by_shadow, orphans=0 if version is not None else orphans
    )


def _aggregate_labelled(
    rows: Sequence[Any],
    by_version: dict[str, VersionPerformanceRecord],
    by_shadow: dict[str, ShadowPerformanceRecord],
) -> None:
    """Confusion counts per served version and per shadow version (with the champion on
    the same rows), and the delays per served version, from the joined rows."""
    if not rows:
        return
    versions = [r[0] for r in rows]
    shadows = [r[2] for r in rows]
    predicted = np.fromiter((r[1] for r in rows), np.int8, len(rows))
    shadow_predicted = np.fromiter((-1 if r[3] is None else r[3] for r in rows), np.int8, len(rows))
    labels = np.fromiter((r[4] for r in rows), np.int8, len(rows))
    delays = np.fromiter((float(r[5]) for r in rows), np.float64, len(rows))
    for name in set(versions):
        mask = np.fromiter((v == name for v in versions), bool, len(rows))
        record = by_version.setdefault(name, VersionPerformanceRecord())
        _add_confusion(record.confusion, predicted[mask], labels[mask])
        record.delays = delays[mask]
    for name in set(shadows) - {None}:
        mask = np.fromiter((s == name for s in shadows), bool, len(rows)) & (shadow_predicted >= 0)
        shadow = by_shadow.setdefault(name, ShadowPerformanceRecord())
        _add_confusion(shadow.shadow, shadow_predicted[mask], labels[mask])
        _add_confusion(shadow.champion, predicted[mask], labels[mask])


def _add_confusion(confusion: Confusion, predicted: Any, labels: Any) -> None:
    for p_, y_ in ((1, 1), (1, 0), (0, 1), (0, 0)):
        n = int(np.count_nonzero((predicted == p_) & (labels == y_)))
        if n:
            confusion.add(p_, y_, n)


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- realized accuracy over time (the dashboard's chart) -------------------------------------


@dataclass(frozen=True, slots=True)
class PerformanceBucket:
    start: datetime
    model_version: str
    served: int
    labelled: int
    correct: int  # labelled predictions whose served class equals the label


def read_performance_buckets(
    engine: Engine, *, since: datetime, until: datetime, bucket_seconds: int
) -> list[PerformanceBucket]:
    """Per time bucket (aligned on multiples of ``bucket_seconds`` since the epoch, by the
    prediction's ``created_at`` in [since, until)) and model version: predictions served,
    labelled, and labelled correctly. Oldest first; buckets without traffic are absent."""
    from ia_continu.db.sql import time_bucket
    from ia_continu.db.tables import feedback, predictions

    width = int(bucket_seconds)
    if width < 1:
        raise ValueError("bucket_seconds must be >= 1")
    p, f = predictions.c, feedback.c
    bucket = time_bucket(p.created_at, width, dialect=engine.dialect.name)
    correct = sa.func.sum(sa.case((p.prediction == f.label, 1), else_=0))
    stmt = (
        sa.select(bucket, p.model_version, sa.func.count(), sa.func.count(f.label), correct)
        .select_from(predictions.outerjoin(feedback, p.prediction_id == f.prediction_id))
        .where(p.created_at >= _as_utc(since), p.created_at < _as_utc(until))
        .group_by(bucket, p.model_version)
        .order_by(bucket, p.model_version)
    )
    with engine.connect() as conn:
        rows = conn.execute(stmt).all()
    return [
        PerformanceBucket(
            start=datetime.fromtimestamp(int(start), UTC),
            model_version=version,
            served=int(n),
            labelled=int(n_lab),
            correct=int(ok or 0),
        )
        for start, version, n, n_lab, ok in rows
    ]
