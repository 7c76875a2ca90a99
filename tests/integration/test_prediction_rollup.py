"""The per-minute rollup (db/rollup.py) answers exactly what the raw rows say, on SQLite
and PostgreSQL: /predictions/stats and /timeseries read it instead of scanning the log."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ia_continu.db import predictions as db_predictions
from ia_continu.db import predictions_insert as db_predictions_insert
from ia_continu.db import rollup

BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def db(database_url: str) -> Iterator[Any]:
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database

    engine = create_db_engine(database_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


def _rows(n: int, *, seed: int, span: timedelta) -> list[db_predictions_insert.PredictionRow]:
    rng = random.Random(seed)
    start_us = int((NOW - span).timestamp() * 1_000_000)
    width = int(span.total_seconds() * 1_000_000)
    rows = []
    for _ in range(n):
        pred = rng.randint(0, 1)
        rows.append(
            (
                start_us + rng.randrange(width),
                rng.uniform(-3, 3),
                rng.uniform(-3, 3),
                pred,
                rng.uniform(0.5, 1.0),
                rng.choice(["v1", "v2", "v10"]),
            )
        )
    return rows


def _assert_same_summary(db: Any, since: datetime) -> None:
    fast = rollup.summarize_predictions(db, since=since)
    slow = db_predictions.summarize_predictions(db, since=since)
    assert (fast.count, fast.class_0, fast.class_1) == (slow.count, slow.class_0, slow.class_1)
    for got, want in (
        (fast.feature1_mean, slow.feature1_mean),
        (fast.feature2_mean, slow.feature2_mean),
    ):
        assert got == (None if want is None else pytest.approx(want, rel=1e-9, abs=1e-12))
    assert set(fast.by_model_version) == set(slow.by_model_version)
    for version, traffic in slow.by_model_version.items():
        got = fast.by_model_version[version]
        assert (got.count, got.class_0, got.class_1) == (
            traffic.count,
            traffic.class_0,
            traffic.class_1,
        )
        assert got.mean_confidence == pytest.approx(traffic.mean_confidence, rel=1e-9)


@BOTH
def test_rollup_stats_and_buckets_equal_those_of_the_raw_rows(db: Any) -> None:
    rows = _rows(3000, seed=3, span=timedelta(hours=3))
    # In several batches, as the API's writer flushes them (minutes shared across batches).
    for i in range(0, len(rows), 700):
        db_predictions_insert.insert_predictions(db, rows[i : i + 700])
    assert rollup.summarize_predictions(db, since=NOW - timedelta(days=1)).count == 3000
    for since in (
        NOW - timedelta(minutes=60),  # on a whole second
        NOW - timedelta(minutes=37, seconds=12.345678),  # inside a minute
        NOW - timedelta(hours=2, microseconds=1),
        NOW - timedelta(days=7),
        NOW + timedelta(minutes=1),  # empty
    ):
        _assert_same_summary(db, since)
        for width in (60, 300, 3600, 45, 7):
            fast = rollup.count_predictions_by_bucket(db, since=since, bucket_seconds=width)
            slow = db_predictions.count_predictions_by_bucket(db, since=since, bucket_seconds=width)
            assert fast == slow, (since, width)


@BOTH
def test_rollup_keeps_means_finite_for_features_near_float_max(db: Any) -> None:
    now_us = int(NOW.timestamp() * 1_000_000)
    db_predictions_insert.insert_predictions(
        db,
        [
            (now_us - 3_000_000, 1.7e308, 1.0, 1, 1.0, "v1"),
            (now_us - 2_000_000, 1.7e308, 3.0, 1, 1.0, "v1"),
            (now_us - 1_000_000, -1.0e308, 5.0, 0, 1.0, "v1"),
        ],
    )
    for since in (NOW - timedelta(minutes=5), NOW - timedelta(seconds=90.5)):
        summary = rollup.summarize_predictions(db, since=since)
        assert summary.count == 3
        expected = 1.7e308 / 3 + 1.7e308 / 3 - 1.0e308 / 3
        assert summary.feature1_mean == pytest.approx(expected)
        assert summary.feature2_mean == pytest.approx(3.0)


@BOTH
def test_rollup_survives_features_near_the_smallest_floats(db: Any) -> None:
    """PostgreSQL refused 1e-300 * 2**-64 ("value out of range: underflow"): the stats of
    a window holding such an input answered 503 (found by the schema fuzzer)."""
    now_us = int(NOW.timestamp() * 1_000_000)
    db_predictions_insert.insert_predictions(
        db,
        [
            (now_us - 2_000_000, 1e-300, 5e-310, 1, 1.0, "v1"),
            (now_us - 1_000_000, 3e-300, -5e-310, 0, 1.0, "v1"),
        ],
    )
    # Mid-minute: the first partial minute is summed from the raw rows in SQL.
    for since in (NOW - timedelta(minutes=5), NOW - timedelta(seconds=90.5)):
        summary = rollup.summarize_predictions(db, since=since)
        assert summary.count == 2
        assert summary.feature1_mean == pytest.approx(2e-300, rel=1e-6)
        assert summary.feature2_mean is not None and abs(summary.feature2_mean) < 1e-300


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_rollup_forgets_minutes_older_than_the_longest_window(db: Any) -> None:
    # KEEP covers the longest window read (90 days of /predictions/performance).
    assert timedelta(days=90) < rollup.KEEP
    too_old = NOW - rollup.KEEP - timedelta(days=2)
    kept = NOW - rollup.KEEP + timedelta(days=1)
    for when in (too_old, kept, NOW):
        us = int(when.timestamp() * 1_000_000)
        db_predictions_insert.insert_predictions(
            db, [(us, 0.0, 0.0, 0, 0.9, "v1", None, "v2", 1, 0.8)]
        )
    expected = sorted(int(t.timestamp()) // 60 * 60 for t in (kept, NOW))
    with db.connect() as conn:
        minutes = conn.execute(sa.text("SELECT minute FROM prediction_rollup")).scalars().all()
        scored = conn.execute(sa.text("SELECT minute FROM shadow_rollup")).scalars().all()
    assert sorted(minutes) == expected
    assert sorted(scored) == expected
