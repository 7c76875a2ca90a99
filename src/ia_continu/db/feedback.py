"""SQL of learning from production: feedback upserts, realized performance, the shadow model.

Kept beside repository.py (same conventions: the engine passed explicitly, plain records
back) so that the feedback work stays in one place.

There is no foreign key from feedback to predictions: a label may arrive before its
prediction is flushed from an API worker's in-memory log, and it counts as soon as that
prediction is written. A label whose id matches no logged prediction is an orphan
(counted, never an error).

Reading the realized performance by joining 300,000 labels to 1,000,000 predictions took
1.6-2.4 s, so the prediction's fields are copied into its feedback row once both exist
(issue 10, migration 0006_perf): by the /feedback upsert when the prediction is already
logged, else by the prediction writer's flush (``fill_early_feedback``, in the writer's
transaction). /predictions/performance is then one GROUP BY over an index of feedback,
plus the served counts from the per-minute rollups (db/rollup.py).

The label delay is stored as a log-scale bucket (``delay_bucket``) so that its
percentiles come from counts: bucket ``b >= 1`` holds delays in
``(1 ms * G**(b-1), 1 ms * G**b]`` with ``G = 2**(1/32)``, and is read back as the point
of the bucket closest to both ends, so a reported percentile is within
``(G-1)/(G+1) < 1.1 %`` of the exact one (as DDSketch); bucket 0 holds delays of 1 ms
or less (and negative ones, from clocks of different workers), read back as 0.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ia_continu.db.engine import WRITE
from ia_continu.db.tables import feedback, predictions

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


# --- the label delay as a log-scale bucket ------------------------------------------------

DELAY_GAMMA = 2.0 ** (1 / 32)
DELAY_UNIT_SECONDS = 0.001  # bucket 0: a delay of 1 ms or less
_BUCKETS_PER_E = 1.0 / math.log(DELAY_GAMMA)  # ceil(ln(d / unit) * this) is the bucket
# A reported percentile is within this relative error of the exact one (plus 1 ms).
DELAY_RELATIVE_ERROR = (DELAY_GAMMA - 1) / (DELAY_GAMMA + 1)


def delay_bucket_sql(dialect: str, received_at: str, created_at: str) -> str:
    """SQL of the delay bucket of ``received_at - created_at`` (two SQL expressions)."""
    if dialect == "sqlite":
        seconds = f"((julianday({received_at}) - julianday({created_at})) * 86400.0)"
    else:
        seconds = f"(extract(epoch FROM ({received_at}) - ({created_at}))::float8)"
    return (
        f"CASE WHEN {seconds} > {DELAY_UNIT_SECONDS!r} "
        f"THEN CAST(ceil(ln({seconds} / {DELAY_UNIT_SECONDS!r}) * {_BUCKETS_PER_E!r}) AS INTEGER) "
        "ELSE 0 END"
    )


def predicted_day_sql(dialect: str, created_at: str) -> str:
    """SQL of the day (since the epoch, UTC) of a stored time: whole seconds from the
    stored text on SQLite, as repository.time_bucket reads it."""
    if dialect == "sqlite":
        return f"CAST(strftime('%s', substr({created_at}, 1, 19)) AS INTEGER) / 86400"
    return f"CAST(floor(extract(epoch FROM {created_at}) / 86400) AS INTEGER)"


def delay_bucket(seconds: float) -> int:
    """The bucket of one delay, as the SQL above computes it."""
    if seconds <= DELAY_UNIT_SECONDS:
        return 0
    return math.ceil(math.log(seconds / DELAY_UNIT_SECONDS) * _BUCKETS_PER_E)


def delay_of_bucket(bucket: int) -> float:
    """The delay a bucket stands for: within DELAY_RELATIVE_ERROR of any delay in it."""
    if bucket <= 0:
        return 0.0
    return DELAY_UNIT_SECONDS * 2 * DELAY_GAMMA**bucket / (1 + DELAY_GAMMA)


def delay_percentiles(histogram: dict[int, int], qs: Sequence[float]) -> list[float] | None:
    """Percentiles (0-100) of the delays counted per bucket, interpolated between ranks
    as numpy.percentile's default ("linear") does on the bucket values; None when empty."""
    items = sorted((b, n) for b, n in histogram.items() if n > 0)
    total = sum(n for _, n in items)
    if not total:
        return None
    ends = list(itertools.accumulate(n for _, n in items))  # rank r is in the first end > r

    def at(rank: int) -> float:
        return delay_of_bucket(items[bisect.bisect_right(ends, rank)][0])

    out = []
    for q in qs:
        h = (total - 1) * q / 100
        lo = math.floor(h)
        hi = min(lo + 1, total - 1)
        low = at(lo)
        out.append(low + (h - lo) * (at(hi) - low))
    return out


# --- feedback upserts -------------------------------------------------------------------------

# Same label again: the WHERE leaves the row untouched (updated_at too). A different
# label replaces the old one and sets updated_at; received_at keeps the first arrival
# (the label delay is measured to it, and the prediction's fields stay valid). RETURNING
# names the rows written: a new row has no updated_at yet. (Tested in Python: SQLite 3.40
# answered 0 for "RETURNING updated_at IS NULL" on a freshly inserted row.)
_UPSERT_TAIL = (
    " ON CONFLICT (prediction_id) DO UPDATE SET label = excluded.label, "
    "updated_at = excluded.received_at WHERE feedback.label <> excluded.label "
    "RETURNING updated_at"
)
_COPIED = (
    "model_version, prediction, shadow_version, shadow_prediction, predicted_at, "
    "predicted_day, delay_bucket"
)
# Each label with its prediction's fields when that prediction is logged (LEFT JOIN on
# the unique index of predictions.prediction_id): one statement, no second round trip.
# SQLite: the whole request as one JSON parameter (10,000 items would need 20,000 bound
# variables otherwise). "WHERE true" resolves the INSERT ... SELECT ... ON CONFLICT
# parsing ambiguity, as SQLite's documentation asks.
_SQLITE_UPSERT = (
    f"INSERT INTO feedback (prediction_id, label, received_at, {_COPIED}) "
    "SELECT j.id, j.label, ?1, p.model_version, p.prediction, p.shadow_version, "
    "p.shadow_prediction, p.created_at, "
    + predicted_day_sql("sqlite", "p.created_at")
    + ", "
    + delay_bucket_sql("sqlite", "?1", "p.created_at")
    + " FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS label "
    "FROM json_each(?2)) AS j LEFT JOIN predictions AS p ON p.prediction_id = j.id "
    "WHERE true" + _UPSERT_TAIL
)
# PostgreSQL: two arrays, one statement, one round trip.
_POSTGRES_UPSERT = (
    f"INSERT INTO feedback (prediction_id, label, received_at, {_COPIED}) "
    "SELECT t.id, t.label, %(now)s, p.model_version, p.prediction, p.shadow_version, "
    "p.shadow_prediction, p.created_at, "
    + predicted_day_sql("postgresql", "p.created_at")
    + ", "
    + delay_bucket_sql("postgresql", "%(now)s::timestamptz", "p.created_at")
    + " FROM unnest(%(ids)s::varchar[], %(labels)s::int[]) AS t(id, label) "
    "LEFT JOIN predictions AS p ON p.prediction_id = t.id" + _UPSERT_TAIL
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


def _fill_sql(dialect: str, ids_filter: str) -> str:
    return (
        "UPDATE feedback SET model_version = p.model_version, prediction = p.prediction, "
        "shadow_version = p.shadow_version, shadow_prediction = p.shadow_prediction, "
        "predicted_at = p.created_at, predicted_day = "
        + predicted_day_sql(dialect, "p.created_at")
        + ", delay_bucket = "
        + delay_bucket_sql(dialect, "feedback.received_at", "p.created_at")
        + " FROM predictions AS p WHERE feedback.predicted_at IS NULL"
        + ids_filter
        + " AND p.prediction_id = feedback.prediction_id"
    )


# Two ways to find the pairs, the cheaper one chosen by how many labels wait: probe the
# batch's ids in feedback's key, or probe each waiting label's id in predictions' key.
_FILL_BY_IDS = {
    "sqlite": _fill_sql(
        "sqlite", " AND feedback.prediction_id IN (SELECT value FROM json_each(?))"
    ),
    "postgresql": _fill_sql("postgresql", " AND feedback.prediction_id = ANY(%(ids)s::varchar[])"),
}
_FILL_WAITING = {dialect: _fill_sql(dialect, "") for dialect in ("sqlite", "postgresql")}
# Answered from the partial index ix_feedback_unmatched: no row read when none waits.
_COUNT_WAITING = (
    "SELECT count(*) FROM (SELECT 1 FROM feedback WHERE predicted_at IS NULL LIMIT {limit}) AS w"
)


def fill_early_feedback(conn: Connection, rows: Sequence[Sequence[Any]]) -> int:
    """Copy the fields of predictions just written (in the caller's transaction) into
    the feedback rows that were waiting for them (labels received before the flush).
    One indexed probe when no label waits, the usual case; then at most one probe per
    waiting label or per row of the batch, whichever is fewer. Rows are the writer's
    tuples: the prediction id, when any, is the 7th field. Returns the rows filled."""
    ids = [r[6] for r in rows if len(r) > 6 and r[6] is not None]
    if not ids:
        return 0
    waiting = conn.exec_driver_sql(_COUNT_WAITING.format(limit=len(ids))).scalar_one()
    if not waiting:
        return 0
    dialect = "postgresql" if conn.dialect.name == "postgresql" else "sqlite"
    if waiting < len(ids):
        # Also fills a label whose prediction an earlier flush wrote concurrently with it.
        result = conn.exec_driver_sql(_FILL_WAITING[dialect])
    elif dialect == "postgresql":
        result = conn.exec_driver_sql(_FILL_BY_IDS[dialect], {"ids": ids})
    else:
        result = conn.exec_driver_sql(_FILL_BY_IDS[dialect], (orjson.dumps(ids).decode(),))
    return int(result.rowcount or 0)


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
    from ia_continu.db.repository import time_bucket
    from ia_continu.db.rollup import read_served_buckets

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
