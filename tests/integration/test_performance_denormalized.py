"""/predictions/performance read from feedback's copy of the prediction fields and from the
per-minute rollups (migration 0006_perf): the same counts as a brute-force pass over the
raw tables, on SQLite and PostgreSQL. Early labels are copied by the writer's flush, a
database at 0005 is backfilled by the migration, windows beyond the old 8-day rollup
horizon and with partial minutes at both edges are exact."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from ia_continu.db import predictions_insert as db_predictions_insert
from ia_continu.db import sql as db_sql
from ia_continu.db import tables
from ia_continu.db.feedback import (
    DELAY_RELATIVE_ERROR,
    DELAY_UNIT_SECONDS,
    delay_bucket,
    delay_of_bucket,
    delay_percentiles,
    fill_early_feedback,
    upsert_feedback,
)
from ia_continu.db.performance import read_performance, read_performance_buckets

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


def _us(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def _random_rows(
    n: int, *, seed: int, start: datetime, span: timedelta
) -> list[db_predictions_insert.FullPredictionRow]:
    rng = random.Random(seed)
    width = int(span.total_seconds() * 1_000_000)
    rows: list[db_predictions_insert.FullPredictionRow] = []
    for _ in range(n):
        shadow = rng.choice([None, "s1", "s2"])
        rows.append(
            (
                _us(start) + rng.randrange(width),
                rng.uniform(-3, 3),
                rng.uniform(-3, 3),
                rng.randint(0, 1),
                rng.uniform(0.5, 1.0),
                rng.choice(["v1", "v2"]),
                str(uuid.uuid4()),
                shadow,
                None if shadow is None else rng.randint(0, 1),
                None if shadow is None else 0.7,
            )
        )
    return rows


def _brute_force(db: Any, since: datetime, until: datetime) -> dict[str, Any]:
    """Served, scored, labelled cells and orphans from the raw tables, in Python."""
    with db.connect() as conn:
        preds = conn.execute(sa.select(tables.predictions)).mappings().all()
        labels = conn.execute(sa.select(tables.feedback)).mappings().all()
    by_id = {p["prediction_id"]: p for p in preds}
    served: dict[str, int] = {}
    scored: dict[str, int] = {}
    for p in preds:
        if since <= db_sql._utc(p["created_at"]) < until:
            served[p["model_version"]] = served.get(p["model_version"], 0) + 1
            if p["shadow_version"] is not None:
                scored[p["shadow_version"]] = scored.get(p["shadow_version"], 0) + 1
    cells: dict[tuple[Any, ...], int] = {}
    orphans = 0
    for f in labels:
        p = by_id.get(f["prediction_id"])
        if p is None:
            orphans += since <= db_sql._utc(f["received_at"]) < until
        elif since <= db_sql._utc(p["created_at"]) < until:
            key = (p["model_version"], p["prediction"], p["shadow_version"], p["shadow_prediction"])
            key += (f["label"],)
            cells[key] = cells.get(key, 0) + 1
    return {"served": served, "scored": scored, "cells": cells, "orphans": orphans}


def _assert_matches(db: Any, since: datetime, until: datetime) -> None:
    want = _brute_force(db, since, until)
    got = read_performance(db, since=since, until=until)
    assert {v: r.served for v, r in got.by_version.items() if r.served} == want["served"]
    assert {s: r.scored for s, r in got.by_shadow.items() if r.scored} == want["scored"]
    assert got.orphans == want["orphans"]
    for version, record in got.by_version.items():
        mine = {k: n for k, n in want["cells"].items() if k[0] == version}
        assert record.confusion.tp == sum(n for k, n in mine.items() if k[1] == 1 and k[4] == 1)
        assert record.confusion.fp == sum(n for k, n in mine.items() if k[1] == 1 and k[4] == 0)
        assert record.confusion.fn == sum(n for k, n in mine.items() if k[1] == 0 and k[4] == 1)
        assert record.confusion.tn == sum(n for k, n in mine.items() if k[1] == 0 and k[4] == 0)
        assert sum(record.delay_histogram.values()) == sum(mine.values())
    for shadow, s in got.by_shadow.items():
        mine = {k: n for k, n in want["cells"].items() if k[2] == shadow and k[3] is not None}
        assert s.shadow.total == s.champion.total == sum(mine.values())
        assert s.shadow.tp == sum(n for k, n in mine.items() if k[3] == 1 and k[4] == 1)
        assert s.champion.tp == sum(n for k, n in mine.items() if k[1] == 1 and k[4] == 1)
        assert s.shadow.tn == sum(n for k, n in mine.items() if k[3] == 0 and k[4] == 0)


# --- the delay histogram ------------------------------------------------------------------------


def test_delay_buckets_stay_within_the_documented_bound() -> None:
    rng = np.random.default_rng(4)
    delays = np.concatenate([rng.exponential(600, 3000), rng.uniform(0, 0.002, 200), [0.0, -1.0]])
    for d in delays.tolist():
        back = delay_of_bucket(delay_bucket(d))
        if d <= DELAY_UNIT_SECONDS:
            assert back == 0.0
        else:
            assert abs(back - d) <= DELAY_RELATIVE_ERROR * d * (1 + 1e-9)
    histogram: dict[int, int] = {}
    for d in delays.tolist():
        histogram[delay_bucket(d)] = histogram.get(delay_bucket(d), 0) + 1
    got = delay_percentiles(histogram, (0, 50, 95, 100))
    assert got is not None
    clamped = np.maximum(delays, 0.0)  # a negative delay (clock skew) counts as 0
    for g, want in zip(got, np.percentile(clamped, [0, 50, 95, 100]).tolist(), strict=True):
        assert abs(g - want) <= DELAY_RELATIVE_ERROR * abs(want) + DELAY_UNIT_SECONDS + 1e-9
    assert delay_percentiles({}, (50,)) is None


@BOTH
def test_sql_delay_bucket_is_the_python_one(db: Any) -> None:
    """The bucket the /feedback upsert computes in SQL is the one Python computes from the
    stored times (the percentiles' bound rests on it)."""
    rng = random.Random(8)
    received = NOW
    rows = _random_rows(200, seed=1, start=NOW - timedelta(days=3), span=timedelta(days=3))
    rows += _random_rows(50, seed=2, start=NOW - timedelta(seconds=2), span=timedelta(seconds=2))
    db_predictions_insert.insert_predictions(db, rows)
    upsert_feedback(db, [(r[6], rng.randint(0, 1)) for r in rows], received_at=received)
    with db.connect() as conn:
        stored = conn.execute(
            sa.select(tables.feedback.c.prediction_id, tables.feedback.c.delay_bucket)
        ).all()
    created = {r[6]: r[0] for r in rows}
    mismatched = 0
    for pid, bucket in stored:
        delay = (received - datetime.fromtimestamp(created[pid] / 1e6, UTC)).total_seconds()
        # The SQL and Python arithmetic may differ in the last bits: a delay on a bucket's
        # edge may land in the neighbour (still within the bound).
        if bucket != delay_bucket(delay):
            mismatched += 1
            assert abs(bucket - delay_bucket(delay)) == 1
    assert mismatched <= 2


# --- the copy of the prediction fields ----------------------------------------------------------


@BOTH
def test_early_labels_are_copied_by_the_writer_flush(db: Any) -> None:
    rows = _random_rows(40, seed=3, start=NOW - timedelta(minutes=10), span=timedelta(minutes=5))
    early = rows[:20]
    upsert_feedback(db, [(r[6], 1) for r in early], received_at=NOW)
    with db.connect() as conn:
        waiting = conn.execute(
            sa.select(sa.func.count()).where(tables.feedback.c.predicted_at.is_(None))
        ).scalar_one()
    assert waiting == 20
    db_predictions_insert.insert_predictions(
        db, rows
    )  # the writer's flush, nothing read in between
    with db.connect() as conn:
        copied = {
            r["prediction_id"]: r for r in conn.execute(sa.select(tables.feedback)).mappings().all()
        }
    for r in early:
        f = copied[r[6]]
        assert f["predicted_at"] is not None
        assert db_sql._utc(f["predicted_at"]) == datetime.fromtimestamp(r[0] / 1e6, UTC)
        assert (f["model_version"], f["prediction"]) == (r[5], r[3])
        assert f["predicted_day"] == r[0] // 86_400_000_000
        assert (f["shadow_version"], f["shadow_prediction"]) == (r[7], r[8])
        want = delay_bucket((NOW - datetime.fromtimestamp(r[0] / 1e6, UTC)).total_seconds())
        assert abs(f["delay_bucket"] - want) <= 1
    # A label replaced later keeps the copy (and its delay from the first arrival).
    upsert_feedback(db, [(early[0][6], 0)], received_at=NOW + timedelta(hours=1))
    with db.connect() as conn:
        again = (
            conn.execute(
                sa.select(tables.feedback).where(tables.feedback.c.prediction_id == early[0][6])
            )
            .mappings()
            .one()
        )
    assert again["label"] == 0 and again["delay_bucket"] == copied[early[0][6]]["delay_bucket"]
    _assert_matches(db, NOW - timedelta(hours=1), NOW + timedelta(hours=2))


@BOTH
def test_early_labels_are_found_by_the_batch_ids_when_many_wait(db: Any) -> None:
    """More labels waiting than rows in the batch: the writer probes the batch's ids
    instead of every waiting label (the other path of fill_early_feedback)."""
    rows = _random_rows(30, seed=4, start=NOW - timedelta(minutes=10), span=timedelta(minutes=5))
    orphans = [(str(uuid.uuid4()), 0) for _ in range(50)]
    upsert_feedback(db, [(r[6], 1) for r in rows] + orphans, received_at=NOW)
    with db.begin() as conn:
        assert fill_early_feedback(conn, rows[:10]) == 0  # not written yet: nothing to copy
    db_predictions_insert.insert_predictions(db, rows[:10])  # 80 waiting, 10 rows: by ids
    db_predictions_insert.insert_predictions(db, rows[10:])  # 70 waiting, 20 rows: by ids
    with db.connect() as conn:
        left = conn.execute(
            sa.select(tables.feedback.c.prediction_id).where(
                tables.feedback.c.predicted_at.is_(None)
            )
        ).scalars()
        assert set(left) == {pid for pid, _ in orphans}
    _assert_matches(db, NOW - timedelta(hours=1), NOW + timedelta(minutes=1))


@BOTH
def test_a_label_whose_copy_is_missing_still_counts(db: Any) -> None:
    """A prediction written concurrently with its label on PostgreSQL (neither
    transaction saw the other's row) leaves the copy empty: the read joins those."""
    rows = _random_rows(10, seed=5, start=NOW - timedelta(minutes=3), span=timedelta(minutes=1))
    db_predictions_insert.insert_predictions(db, rows)
    upsert_feedback(db, [(r[6], 1) for r in rows] + [(str(uuid.uuid4()), 0)], received_at=NOW)
    with db.begin() as conn:  # as if the race had happened
        conn.execute(
            sa.update(tables.feedback)
            .where(tables.feedback.c.prediction_id.in_([r[6] for r in rows[:4]]))
            .values(predicted_at=None, model_version=None, prediction=None, delay_bucket=None)
        )
    _assert_matches(db, NOW - timedelta(hours=1), NOW + timedelta(minutes=1))
    got = read_performance(db, since=NOW - timedelta(hours=1), until=NOW + timedelta(minutes=1))
    assert got.orphans == 1
    assert sum(r.confusion.total for r in got.by_version.values()) == 10


# --- served counts from the rollups ---------------------------------------------------------------


@BOTH
def test_windows_with_partial_minutes_at_both_edges_match_the_raw_rows(db: Any) -> None:
    start = NOW - timedelta(minutes=30)
    rows = _random_rows(3000, seed=6, start=start, span=timedelta(minutes=20))
    rng = random.Random(7)
    labelled = rng.sample(rows, 900)
    upsert_feedback(db, [(r[6], rng.randint(0, 1)) for r in labelled[:300]], received_at=NOW)
    for i in range(0, len(rows), 500):  # several flushes, early labels in between
        db_predictions_insert.insert_predictions(db, rows[i : i + 500])
    upsert_feedback(db, [(r[6], rng.randint(0, 1)) for r in labelled[300:]], received_at=NOW)
    upsert_feedback(db, [(str(uuid.uuid4()), 1) for _ in range(3)], received_at=NOW)
    windows = [
        (start + timedelta(seconds=17.25), start + timedelta(minutes=12, seconds=41.5)),
        (start + timedelta(minutes=3, seconds=1), start + timedelta(minutes=3, seconds=59)),
        (start + timedelta(minutes=2), start + timedelta(minutes=9)),  # whole minutes
        (start - timedelta(days=1), NOW + timedelta(seconds=1)),
    ]
    for _ in range(6):
        a = start + timedelta(seconds=rng.uniform(0, 1200))
        windows.append((a, a + timedelta(seconds=rng.uniform(0.5, 600))))
    for since, until in windows:
        _assert_matches(db, since, until)
        want = _brute_force(db, since, until)
        for width in (60, 300, 90):
            points = read_performance_buckets(db, since=since, until=until, bucket_seconds=width)
            assert sum(p.served for p in points) == sum(want["served"].values())
            assert sum(p.labelled for p in points) == sum(want["cells"].values())
            correct = sum(n for k, n in want["cells"].items() if k[1] == k[4])
            assert sum(p.correct for p in points) == correct


@BOTH
def test_served_counts_reach_beyond_the_old_eight_day_horizon(db: Any) -> None:
    rows = []
    for days, seed in ((80, 11), (40, 12), (9, 13), (1, 14)):
        when = NOW - timedelta(days=days)
        rows += _random_rows(50, seed=seed, start=when, span=timedelta(hours=2))
    rows.sort()
    db_predictions_insert.insert_predictions(db, rows[:100])  # the writer's rollup must keep these
    db_predictions_insert.insert_predictions(db, rows[100:])
    rng = random.Random(9)
    upsert_feedback(db, [(r[6], rng.randint(0, 1)) for r in rows[::4]], received_at=NOW)
    _assert_matches(db, NOW - timedelta(days=90), NOW)
    got = read_performance(db, since=NOW - timedelta(days=90), until=NOW)
    assert sum(r.served for r in got.by_version.values()) == 200


# --- the migration ------------------------------------------------------------------------------


@BOTH
def test_migration_backfills_feedback_and_rollups_from_0005(database_url: str) -> None:
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database

    engine = create_db_engine(database_url)
    try:
        upgrade_database(engine, revision="0005_loop")
        rows = _random_rows(300, seed=21, start=NOW - timedelta(days=30), span=timedelta(days=29))
        rng = random.Random(22)
        p = tables.predictions
        # As the 0005 writer left them: the rows, no shadow_rollup, a rollup of 8 days.
        with engine.begin() as conn:
            conn.execute(
                p.insert(),
                [
                    {
                        "created_at": datetime.fromtimestamp(r[0] / 1e6, UTC),
                        "feature1": r[1],
                        "feature2": r[2],
                        "prediction": r[3],
                        "confidence": r[4],
                        "model_version": r[5],
                        "prediction_id": r[6],
                        "shadow_version": r[7],
                        "shadow_prediction": r[8],
                        "shadow_confidence": r[9],
                    }
                    for r in rows
                ],
            )
            recent: dict[tuple[int, str, int], int] = {}
            horizon = _us(NOW - timedelta(days=8)) // 60_000_000 * 60_000_000  # whole minutes
            for r in rows:
                if r[0] >= horizon:
                    key = (r[0] // 60_000_000 * 60, r[5], r[3])
                    recent[key] = recent.get(key, 0) + 1
            conn.execute(
                sa.text(
                    "INSERT INTO prediction_rollup (minute, model_version, prediction, count, "
                    "confidence_sum, feature1_sum, feature2_sum) VALUES (:m, :v, :p, :n, 0, 0, 0)"
                ),
                [{"m": m, "v": v, "p": pr, "n": n} for (m, v, pr), n in recent.items()],
            )
            received = NOW - timedelta(minutes=5)
            conn.execute(
                sa.text(
                    "INSERT INTO feedback (prediction_id, label, received_at) VALUES (:i, :y, :t)"
                ),
                [{"i": r[6], "y": rng.randint(0, 1), "t": received} for r in rows[::3]]
                + [{"i": str(uuid.uuid4()), "y": 1, "t": received}],
            )
        upgrade_database(engine)
        with engine.connect() as conn:
            copied = conn.execute(sa.select(tables.feedback)).mappings().all()
        by_id = {r[6]: r for r in rows}
        for f in copied:
            r = by_id.get(f["prediction_id"])
            if r is None:
                assert f["predicted_at"] is None and f["delay_bucket"] is None
                continue
            assert (f["model_version"], f["prediction"], f["shadow_version"]) == (r[5], r[3], r[7])
            assert f["predicted_day"] == r[0] // 86_400_000_000
            delay = (received - datetime.fromtimestamp(r[0] / 1e6, UTC)).total_seconds()
            assert abs(f["delay_bucket"] - delay_bucket(delay)) <= 1
        _assert_matches(engine, NOW - timedelta(days=31), NOW)
        _assert_matches(engine, NOW - timedelta(days=20, seconds=13.5), NOW - timedelta(days=2))
    finally:
        engine.dispose()
