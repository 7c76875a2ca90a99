"""A per-minute summary of the prediction log, kept by the writer, read by
/predictions/stats and /predictions/timeseries.

At 615k rows /predictions/stats scanned the window's rows (0.38 s) and grew with the
table. ``prediction_rollup`` holds one row per (minute, model version, predicted class)
with the count and the sums; it is updated in the same transaction as the rows it
summarises (``add_to_rollup``), so the two always agree. A window is then answered from
the rollup for its whole minutes plus the raw rows of its first, partial minute (read
through the index on ``predictions.created_at``): bounded by the window's minutes, not
by the table.

Feature sums are stored multiplied by 2**-64 (exact for every float above ~1e-288): a
plain float sum of two inputs near 1.7e308 overflowed to inf on SQLite, where the mean
is always finite.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ia_continu.db.tables import prediction_rollup, predictions, shadow_rollup

FEATURE_SCALE = 2.0**-64
MINUTE_US = 60_000_000
# Rows older than this are deleted by the writer: the longest window read is 90 days
# (/predictions/performance), plus margin. One row per minute, version and class (about
# 300,000 rows for two versions over 100 days of steady traffic).
KEEP = timedelta(days=100)

_UPSERT = sa.text(
    "INSERT INTO prediction_rollup "
    "(minute, model_version, prediction, count, confidence_sum, feature1_sum, feature2_sum) "
    "VALUES (:minute, :model_version, :prediction, :count, :confidence_sum, :feature1_sum, "
    ":feature2_sum) "
    "ON CONFLICT (minute, model_version, prediction) DO UPDATE SET "
    "count = prediction_rollup.count + excluded.count, "
    "confidence_sum = prediction_rollup.confidence_sum + excluded.confidence_sum, "
    "feature1_sum = prediction_rollup.feature1_sum + excluded.feature1_sum, "
    "feature2_sum = prediction_rollup.feature2_sum + excluded.feature2_sum"
)
_SHADOW_UPSERT = sa.text(
    "INSERT INTO shadow_rollup (minute, model_version, shadow_version, count) "
    "VALUES (:minute, :model_version, :shadow_version, :count) "
    "ON CONFLICT (minute, model_version, shadow_version) DO UPDATE SET "
    "count = shadow_rollup.count + excluded.count"
)


# --- the writer's side ----------------------------------------------------------------------


def add_to_rollup(conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Add a batch of logged predictions to the rollups, inside the caller's (the
    writer's) transaction.

    Each row starts (epoch microseconds, feature1, feature2, prediction, confidence,
    model_version); full rows go on with (prediction_id, shadow_version, ...)."""
    # Keyed by the shadow version too (None without one): the shadow counts come from
    # the same pass, no second loop over the rows.
    groups: dict[tuple[int, str, int, str | None], list[float]] = {}
    newest = 0
    for row in rows:
        us, x1, x2, pred, conf, version = row[:6]
        minute = int(us) // MINUTE_US * 60
        newest = max(newest, minute)
        key = (minute, version, int(pred), row[7] if len(row) > 7 else None)
        acc = groups.get(key)
        if acc is None:
            acc = groups[key] = [0, 0.0, 0.0, 0.0]
        acc[0] += 1
        acc[1] += conf
        acc[2] += x1 * FEATURE_SCALE
        acc[3] += x2 * FEATURE_SCALE
    if not groups:
        return
    merged: dict[tuple[int, str, int], list[float]] = {}
    scored: dict[tuple[int, str, str], int] = {}
    for (minute, version, pred, shadow), acc in groups.items():
        total = merged.get((minute, version, pred))
        if total is None:
            merged[(minute, version, pred)] = list(acc)
        else:
            for i in range(4):
                total[i] += acc[i]
        if shadow is not None:
            scored[(minute, version, shadow)] = scored.get((minute, version, shadow), 0) + int(
                acc[0]
            )
    # Sorted keys: two writers (API workers) upserting the same minutes lock them in the
    # same order on PostgreSQL, so they wait for each other instead of deadlocking.
    conn.execute(
        _UPSERT,
        [
            {
                "minute": minute,
                "model_version": version,
                "prediction": pred,
                "count": int(acc[0]),
                "confidence_sum": acc[1],
                "feature1_sum": acc[2],
                "feature2_sum": acc[3],
            }
            for (minute, version, pred), acc in sorted(merged.items())
        ],
    )
    if scored:
        conn.execute(
            _SHADOW_UPSERT,
            [
                {"minute": m, "model_version": v, "shadow_version": sv, "count": n}
                for (m, v, sv), n in sorted(scored.items())
            ],
        )
    cutoff = newest - int(KEEP.total_seconds())
    conn.execute(prediction_rollup.delete().where(prediction_rollup.c.minute < cutoff))
    conn.execute(shadow_rollup.delete().where(shadow_rollup.c.minute < cutoff))


# --- the readers' side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Group:
    model_version: str
    prediction: int
    count: int
    confidence_sum: float
    feature1_sum: float  # scaled by FEATURE_SCALE
    feature2_sum: float


def _boundary(since: datetime) -> tuple[int, datetime]:
    """The first whole minute at or after ``since``: epoch seconds and datetime."""
    epoch = since.astimezone(UTC).timestamp()
    minute = math.ceil(epoch / 60) * 60
    return minute, datetime.fromtimestamp(minute, UTC)


# Built once: composing a statement cost more than running it on a small rollup.
_R = prediction_rollup.c
_P = predictions.c
_ROLLUP_STATS = (
    sa.select(
        _R.model_version,
        _R.prediction,
        sa.func.sum(_R.count),
        sa.func.sum(_R.confidence_sum),
        sa.func.sum(_R.feature1_sum),
        sa.func.sum(_R.feature2_sum),
    )
    .where(_R.minute >= sa.bindparam("from_minute"))
    .group_by(_R.model_version, _R.prediction)
)


def _raw_stats(exact: bool) -> sa.Select[Any]:
    """Stats of the raw rows of the first, partial minute. ``exact`` (PostgreSQL): the
    features are cast to NUMERIC first, because PostgreSQL raises "value out of range:
    underflow" when a float product leaves the normal range (1e-300 * 2**-64), which
    made the stats answer 503; the numeric product is exact. SQLite's CAST AS NUMERIC
    would round, and its float product never raises."""

    def scaled(column: Any) -> Any:
        value = sa.cast(column, sa.Numeric) if exact else column
        return sa.func.sum(value * sa.literal_column(repr(FEATURE_SCALE)))

    return (
        sa.select(
            _P.model_version,
            _P.prediction,
            sa.func.count(),
            sa.func.sum(_P.confidence),
            scaled(_P.feature1),
            scaled(_P.feature2),
        )
        .where(_P.created_at >= sa.bindparam("since"), _P.created_at < sa.bindparam("until"))
        .group_by(_P.model_version, _P.prediction)
    )


_RAW_STATS = {exact: _raw_stats(exact) for exact in (False, True)}


@lru_cache(maxsize=32)
def _rollup_buckets(width: int) -> sa.Select[Any]:
    # The width inlined, not bound: PostgreSQL must see the same expression in SELECT and
    # GROUP BY.
    literal_width = sa.literal_column(str(width), sa.BigInteger)
    bucket = ((_R.minute // literal_width) * literal_width).label("bucket")
    class_1 = sa.func.sum(sa.case((_R.prediction == 1, _R.count), else_=0))
    return (
        sa.select(bucket, _R.model_version, sa.func.sum(_R.count), class_1)
        .where(_R.minute >= sa.bindparam("from_minute"))
        .group_by(bucket, _R.model_version)
    )


def _groups(rows: Iterable[Any]) -> list[_Group]:
    return [
        _Group(v, int(p), int(n), float(c), float(f1), float(f2)) for v, p, n, c, f1, f2 in rows
    ]


def _mean(scaled_sum: float, count: int) -> float | None:
    if not count:
        return None
    mean = scaled_sum / count / FEATURE_SCALE
    return mean if math.isfinite(mean) else None


def summarize_predictions(engine: Engine, *, since: datetime) -> Any:
    """Same answer as ``predictions.summarize_predictions``, from the rollup."""
    from ia_continu.db.predictions import PredictionSummary, VersionTraffic

    minute, boundary = _boundary(since)
    with engine.connect() as conn:
        stats = _RAW_STATS[conn.dialect.name == "postgresql"]
        raw = conn.execute(stats, {"since": since.astimezone(UTC), "until": boundary})
        groups = _groups(raw) + _groups(conn.execute(_ROLLUP_STATS, {"from_minute": minute}))
    per_version: dict[str, list[float]] = {}
    count = class_1 = 0
    sum1 = sum2 = 0.0
    for g in groups:
        acc = per_version.setdefault(g.model_version, [0, 0, 0.0])
        acc[1 if g.prediction == 1 else 0] += g.count
        acc[2] += g.confidence_sum
        count += g.count
        class_1 += g.count if g.prediction == 1 else 0
        sum1 += g.feature1_sum
        sum2 += g.feature2_sum
    return PredictionSummary(
        count=count,
        class_0=count - class_1,
        class_1=class_1,
        feature1_mean=_mean(sum1, count),
        feature2_mean=_mean(sum2, count),
        by_model_version={
            version: VersionTraffic(
                count=int(c0 + c1),
                class_0=int(c0),
                class_1=int(c1),
                mean_confidence=conf / (c0 + c1) if c0 + c1 else None,
            )
            for version, (c0, c1, conf) in sorted(per_version.items())
            if c0 + c1
        },
    )


def count_predictions_by_bucket(engine: Engine, *, since: datetime, bucket_seconds: int) -> Any:
    """Same answer as ``predictions.count_predictions_by_bucket``; from the rollup when the
    buckets are whole minutes, else from the rows (then the window is at most
    10,080 buckets of under a minute: under a week of rows is never read)."""
    from ia_continu.db import predictions as db_predictions

    width = int(bucket_seconds)
    if width < 1:
        raise ValueError("bucket_seconds must be >= 1")
    if width % 60:
        return db_predictions.count_predictions_by_bucket(engine, since=since, bucket_seconds=width)
    minute, boundary = _boundary(since)
    totals: dict[tuple[int, str], list[int]] = {}
    raw = db_predictions.count_predictions_by_bucket(
        engine, since=since, bucket_seconds=width, until=boundary
    )
    for b in raw:
        acc = totals.setdefault((int(b.start.timestamp()), b.model_version), [0, 0])
        acc[0] += b.class_0
        acc[1] += b.class_1
    with engine.connect() as conn:
        for start, version, n, c1 in conn.execute(_rollup_buckets(width), {"from_minute": minute}):
            acc = totals.setdefault((int(start), version), [0, 0])
            acc[0] += int(n) - int(c1)
            acc[1] += int(c1)
    return [
        db_predictions.PredictionBucket(
            start=datetime.fromtimestamp(start, UTC),
            model_version=version,
            class_0=c0,
            class_1=c1,
        )
        for (start, version), (c0, c1) in sorted(totals.items())
    ]


# --- served counts over [since, until) (/predictions/performance) ----------------------------

_S = shadow_rollup.c
_SERVED_ROLLUP = (
    sa.select(_R.model_version, sa.func.sum(_R.count))
    .where(_R.minute >= sa.bindparam("first"), _R.minute < sa.bindparam("end"))
    .group_by(_R.model_version)
)
_SCORED_ROLLUP = (
    sa.select(_S.model_version, _S.shadow_version, sa.func.sum(_S.count))
    .where(_S.minute >= sa.bindparam("first"), _S.minute < sa.bindparam("end"))
    .group_by(_S.model_version, _S.shadow_version)
)
_SERVED_RAW = (
    sa.select(_P.model_version, _P.shadow_version, sa.func.count())
    .where(_P.created_at >= sa.bindparam("since"), _P.created_at < sa.bindparam("until"))
    .group_by(_P.model_version, _P.shadow_version)
)


def _split(since: datetime, until: datetime) -> tuple[list[tuple[datetime, datetime]], int, int]:
    """[since, until) as its whole minutes [first, end) (epoch seconds; first >= end when
    there is none) and the partial edges to read from the raw rows."""
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    since_us = (since - epoch) // timedelta(microseconds=1)
    until_us = (until - epoch) // timedelta(microseconds=1)
    first = -(-since_us // MINUTE_US) * 60  # ceil
    end = until_us // MINUTE_US * 60  # floor
    if first >= end:
        return [(since, until)], first, first
    edges = [
        (a, b)
        for a, b in (
            (since, datetime.fromtimestamp(first, UTC)),
            (datetime.fromtimestamp(end, UTC), until),
        )
        if a < b
    ]
    return edges, first, end


def read_served(
    conn: Connection, *, since: datetime, until: datetime
) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Predictions served in [since, until) per model version, and those a shadow
    scored per (model version, shadow version): the rollups for the whole minutes, the
    raw rows (index on created_at) for the partial minutes at both edges. Like
    /predictions/stats, it counts the traffic served, including rows a prune removed
    since (for 100 days: KEEP)."""
    edges, first, end = _split(since.astimezone(UTC), until.astimezone(UTC))
    served: dict[str, int] = {}
    scored: dict[tuple[str, str], int] = {}
    for a, b in edges:
        for version, shadow, n in conn.execute(_SERVED_RAW, {"since": a, "until": b}):
            served[version] = served.get(version, 0) + int(n)
            if shadow is not None:
                scored[(version, shadow)] = scored.get((version, shadow), 0) + int(n)
    if first < end:
        minutes = {"first": first, "end": end}
        for version, n in conn.execute(_SERVED_ROLLUP, minutes):
            served[version] = served.get(version, 0) + int(n)
        for version, shadow, n in conn.execute(_SCORED_ROLLUP, minutes):
            scored[(version, shadow)] = scored.get((version, shadow), 0) + int(n)
    return served, scored


def read_served_buckets(
    conn: Connection, *, since: datetime, until: datetime, bucket_seconds: int
) -> dict[tuple[int, str], int]:
    """Predictions served in [since, until) per (bucket start, model version), buckets
    aligned on multiples of ``bucket_seconds`` since the epoch. From the rollup when the
    buckets are whole minutes (plus the raw partial edges), else from the raw rows."""
    from ia_continu.db.sql import time_bucket

    width = int(bucket_seconds)
    since, until = since.astimezone(UTC), until.astimezone(UTC)
    if width % 60:
        edges, first, end = [(since, until)], 0, 0
    else:
        edges, first, end = _split(since, until)
    dialect = "postgresql" if conn.dialect.name == "postgresql" else "sqlite"
    bucket = time_bucket(_P.created_at, width, dialect=dialect)
    raw = (
        sa.select(bucket, _P.model_version, sa.func.count())
        .where(_P.created_at >= sa.bindparam("since"), _P.created_at < sa.bindparam("until"))
        .group_by(bucket, _P.model_version)
    )
    totals: dict[tuple[int, str], int] = {}
    for a, b in edges:
        for start, version, n in conn.execute(raw, {"since": a, "until": b}):
            key = (int(start), version)
            totals[key] = totals.get(key, 0) + int(n)
    if first < end:
        literal_width = sa.literal_column(str(width), sa.BigInteger)
        r_bucket = ((_R.minute // literal_width) * literal_width).label("bucket")
        whole = (
            sa.select(r_bucket, _R.model_version, sa.func.sum(_R.count))
            .where(_R.minute >= first, _R.minute < end)
            .group_by(r_bucket, _R.model_version)
        )
        for start, version, n in conn.execute(whole):
            key = (int(start), version)
            totals[key] = totals.get(key, 0) + int(n)
    return totals
