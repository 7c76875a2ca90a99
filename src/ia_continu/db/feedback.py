"""SQL of learning from production: feedback upserts, realized performance, the shadow model.

Kept beside the other aggregate modules (same conventions: the engine passed explicitly,
plain records back) so that the feedback work stays in one place.

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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.engine import Connection, Engine

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
