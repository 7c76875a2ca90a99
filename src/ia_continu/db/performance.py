"""SQL of realized performance: /predictions/performance and its timeseries, read from
feedback's copy of each labelled prediction (db/feedback.py) and the per-minute rollups
(db/rollup.py), so that a window of 300,000 labels is one GROUP BY over an index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ia_continu.db.feedback import delay_bucket
from ia_continu.db.tables import feedback, predictions

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
    # Labelled rows per label-delay bucket (see the module's docstring).
    delay_histogram: dict[int, int] = field(default_factory=dict)


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


_F = feedback.c
_P = predictions.c
# Every labelled prediction of the window, counted per cell: one pass over the covering
# index ix_feedback_performance, nothing read from predictions. The inner GROUP BY follows
# the index order (day first, the window's days as a range), so SQLite counts without
# sorting the rows; the outer one merges the days (a few thousand rows).
_CELLS = (
    _F.model_version,
    _F.shadow_version,
    _F.prediction,
    _F.shadow_prediction,
    _F.label,
    _F.delay_bucket,
)


def _in_window() -> sa.ColumnElement[bool]:
    return sa.and_(
        _F.predicted_day >= sa.bindparam("first_day"),
        _F.predicted_day <= sa.bindparam("last_day"),
        _F.predicted_at >= sa.bindparam("since"),
        _F.predicted_at < sa.bindparam("until"),
    )


def _labelled_cells(version: bool) -> sa.Select[Any]:
    inner = sa.select(_F.predicted_day, *_CELLS, sa.func.count().label("n")).where(_in_window())
    if version:
        inner = inner.where(_F.model_version == sa.bindparam("version"))
    per_day = inner.group_by(_F.predicted_day, *_CELLS).subquery()
    cells = [per_day.c[c.name] for c in _CELLS]
    return sa.select(*cells, sa.func.sum(per_day.c.n)).group_by(*cells)


_LABELLED_CELLS = {version: _labelled_cells(version) for version in (False, True)}


def _window(since: datetime, until: datetime) -> dict[str, Any]:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return {
        "since": since,
        "until": until,
        "first_day": (since - epoch).days,
        "last_day": (until - epoch).days,
    }


def _unmatched_pass(dialect: str) -> sa.Select[Any]:
    """The labels received since ``since`` whose prediction was not copied (read through
    the partial index ix_feedback_unmatched: few rows), each with its prediction when one
    is logged now. Orphans come from here, and so do labels whose prediction was written
    concurrently with them on PostgreSQL (neither transaction saw the other's row)."""
    if dialect == "sqlite":
        days = sa.func.julianday(_F.received_at) - sa.func.julianday(_P.created_at)
        delay: Any = days * 86400.0
    else:
        delay = sa.extract("epoch", _F.received_at - _P.created_at)
    since: Any = sa.bindparam("since")
    until: Any = sa.bindparam("until")
    return (
        sa.select(
            _P.model_version,
            _P.shadow_version,
            _P.prediction,
            _P.shadow_prediction,
            _F.label,
            delay,
            _P.created_at.is_(None),
            sa.and_(_P.created_at >= since, _P.created_at < until),
            _F.received_at < until,
            _P.created_at,
        )
        .select_from(feedback.outerjoin(predictions, _P.prediction_id == _F.prediction_id))
        # A label cannot arrive before its prediction was made.
        .where(_F.predicted_at.is_(None), _F.received_at >= since)
    )


_UNMATCHED = {dialect: _unmatched_pass(dialect) for dialect in ("sqlite", "postgresql")}


def read_performance(
    engine: Engine, *, since: datetime, until: datetime, version: str | None = None
) -> PerformanceRecord:
    """Served and labelled predictions made in [since, until), per model version and per
    shadow version, plus the labels received in that window that match no prediction.
    Served counts come from the per-minute rollups (db/rollup.py), labelled ones from the
    prediction fields copied into feedback."""
    from ia_continu.db.rollup import read_served

    bounds = _window(_as_utc(since), _as_utc(until))
    by_version: dict[str, VersionPerformanceRecord] = {}
    by_shadow: dict[str, ShadowPerformanceRecord] = {}
    orphans = 0
    with engine.connect() as conn:
        served, scored = read_served(conn, since=bounds["since"], until=bounds["until"])
        if version is None:
            labelled = conn.execute(_LABELLED_CELLS[False], bounds).all()
        else:
            labelled = conn.execute(_LABELLED_CELLS[True], {**bounds, "version": version}).all()
        unmatched = conn.execute(
            _UNMATCHED[_dialect(conn)], {"since": bounds["since"], "until": bounds["until"]}
        ).all()
    for name, n in served.items():
        if version is None or name == version:
            by_version.setdefault(name, VersionPerformanceRecord()).served += n
    for (name, shadow_name), n in scored.items():
        if version is None or name == version:
            by_shadow.setdefault(shadow_name, ShadowPerformanceRecord()).scored += n
    for model_version, shadow_version, pred, shadow_pred, label, bucket, n in labelled:
        _add_labelled(
            by_version, by_shadow, model_version, shadow_version, pred, shadow_pred, label,
            bucket, int(n),
        )  # fmt: skip
    for row in unmatched:
        model_version, shadow_version, pred, shadow_pred, label, delay, missing, inside, seen = row[
            :9
        ]
        if missing:  # no prediction carries this id
            orphans += 1 if seen else 0
        elif inside and (version is None or model_version == version):
            bucket = delay_bucket(float(delay))
            _add_labelled(
                by_version, by_shadow, model_version, shadow_version, pred, shadow_pred, label,
                bucket, 1,
            )  # fmt: skip
    return PerformanceRecord(
        by_version=by_version, by_shadow=by_shadow, orphans=0 if version is not None else orphans
    )


def _dialect(conn: Connection) -> str:
    return "postgresql" if conn.dialect.name == "postgresql" else "sqlite"


def _add_labelled(
    by_version: dict[str, VersionPerformanceRecord],
    by_shadow: dict[str, ShadowPerformanceRecord],
    model_version: str,
    shadow_version: str | None,
    predicted: int,
    shadow_predicted: int | None,
    label: int,
    bucket: int,
    n: int,
) -> None:
    """Count ``n`` labelled rows for their served version (confusion and delays) and for
    their shadow version, with the champion on the same rows."""
    record = by_version.setdefault(model_version, VersionPerformanceRecord())
    record.confusion.add(predicted, label, n)
    record.delay_histogram[bucket] = record.delay_histogram.get(bucket, 0) + n
    if shadow_version is not None and shadow_predicted is not None:
        shadow = by_shadow.setdefault(shadow_version, ShadowPerformanceRecord())
        shadow.shadow.add(shadow_predicted, label, n)
        shadow.champion.add(predicted, label, n)


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
    labelled, and labelled correctly. Oldest first; buckets without traffic are absent.
    Served from the per-minute rollup (db/rollup.py), labelled from feedback's copy of
    the prediction fields, plus the labels whose copy is missing (see _unmatched_pass)."""
    from ia_continu.db.rollup import read_served_buckets
    from ia_continu.db.sql import time_bucket

    width = int(bucket_seconds)
    if width < 1:
        raise ValueError("bucket_seconds must be >= 1")
    since_, until_ = _as_utc(since), _as_utc(until)
    with engine.connect() as conn:
        dialect = _dialect(conn)
        f_bucket = time_bucket(_F.predicted_at, width, dialect=dialect)
        f_correct = sa.func.sum(sa.case((_F.prediction == _F.label, 1), else_=0))
        copied = (
            sa.select(f_bucket, _F.model_version, sa.func.count(), f_correct)
            .where(_in_window())
            .group_by(f_bucket, _F.model_version)
        )
        served = read_served_buckets(conn, since=since_, until=until_, bucket_seconds=width)
        labelled: dict[tuple[int, str], list[int]] = {}
        for start, version, n, ok in conn.execute(copied, _window(since_, until_)):
            acc = labelled.setdefault((int(start), version), [0, 0])
            acc[0] += int(n)
            acc[1] += int(ok or 0)
        # The labels whose copy is missing, joined here (few rows, read from feedback's
        # partial index: a JOIN let SQLite drive from the window's predictions instead).
        late = conn.execute(_UNMATCHED[dialect], {"since": since_, "until": until_}).all()
    for row in late:
        version, pred, label, inside, created_at = row[0], row[2], row[4], row[7], row[9]
        if row[6] or not inside:
            continue
        seconds = math.floor(_as_utc(created_at).timestamp())
        acc = labelled.setdefault((seconds // width * width, version), [0, 0])
        acc[0] += 1
        acc[1] += int(pred == label)
    keys = sorted(set(served) | set(labelled))
    return [
        PerformanceBucket(
            start=datetime.fromtimestamp(start, UTC),
            model_version=version,
            served=served.get((start, version), 0),
            labelled=labelled.get((start, version), [0, 0])[0],
            correct=labelled.get((start, version), [0, 0])[1],
        )
        for start, version in keys
    ]
