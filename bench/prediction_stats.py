"""/predictions/stats and /timeseries at scale: the raw-row queries (before) against the
per-minute rollup (after, db/rollup.py), side by side in one run, on one database.

    python bench/prediction_stats.py [ROWS] [DATABASE_URL]

ROWS (default 10,000,000) predictions are spread evenly over the last 7 days and written
through predictions_insert.insert_predictions in batches, as the API's writer does (so the rollup
is maintained as in production). Then, for each window, the old and the new query run in
interleaved rounds; medians and their ratio are printed (and the writer's extra cost).
Default database: a temporary SQLite file; an empty PostgreSQL URL works too.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ia_continu.db import predictions as db_predictions
from ia_continu.db import predictions_insert as db_predictions_insert
from ia_continu.db import rollup
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database

BATCH = 100_000
ROUNDS = 5


def _seed(engine: Any, rows: int) -> tuple[float, float]:
    """Write ``rows`` predictions over the last 7 days; seconds spent in the whole write
    and in the rollup part alone (measured on one batch, scaled)."""
    rng = np.random.default_rng(1)
    now_us = time.time_ns() // 1000
    span_us = 7 * 24 * 3600 * 1_000_000
    started = time.perf_counter()
    for offset in range(0, rows, BATCH):
        n = min(BATCH, rows - offset)
        times = np.sort(now_us - span_us + (offset + np.arange(n)) * (span_us // rows))
        x = rng.normal(size=(n, 2))
        pred = (x[:, 0] > 0).astype(int)
        conf = rng.uniform(0.5, 1.0, size=n)
        version = f"v{1 + offset * 20 // rows}"  # 20 versions over the week
        batch = list(
            zip(
                times.tolist(),
                x[:, 0].tolist(),
                x[:, 1].tolist(),
                pred.tolist(),
                conf.tolist(),
                [version] * n,
                strict=True,
            )
        )
        db_predictions_insert.insert_predictions(engine, batch)
    # The rollup's share of one flush as the API makes it: 5,000 rows within a minute.
    flush = [(now_us - i, 0.5, -1.2, i & 1, 0.73, "v20") for i in range(5_000)]
    with engine.connect() as conn, conn.begin():
        t0 = time.perf_counter()
        rollup.add_to_rollup(conn, flush)
        rollup_seconds = time.perf_counter() - t0
        conn.rollback()
    return time.perf_counter() - started, rollup_seconds


def _median_ms(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def main(rows: int = 10_000_000, url: str = "") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(url or f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade_database(engine)
        seed_s, rollup_batch_s = _seed(engine, rows)
        print(
            f"{engine.dialect.name}: {db_predictions.count_predictions(engine):,} rows written in "
            f"{seed_s:.1f} s; rollup share of a 5,000-row flush: {rollup_batch_s * 1000:.1f} ms "
            f"({rollup_batch_s / 5_000 * 1e6:.2f} us/row)"
        )
        now = datetime.now(UTC)
        cases: list[tuple[str, Callable[[], Any], Callable[[], Any]]] = []
        for minutes, bucket in ((60, 60), (1440, 300), (10_080, 900)):
            since = now - timedelta(minutes=minutes) + timedelta(seconds=17.5)
            cases.append(
                (
                    f"stats {minutes} min",
                    lambda s=since: db_predictions.summarize_predictions(engine, since=s),
                    lambda s=since: rollup.summarize_predictions(engine, since=s),
                )
            )
            cases.append(
                (
                    f"timeseries {minutes} min / {bucket} s",
                    lambda s=since, b=bucket: db_predictions.count_predictions_by_bucket(
                        engine, since=s, bucket_seconds=b
                    ),
                    lambda s=since, b=bucket: rollup.count_predictions_by_bucket(
                        engine, since=s, bucket_seconds=b
                    ),
                )
            )
        print(f"{'query':<32} {'before ms':>10} {'after ms':>10} {'ratio':>8}")
        for name, before, after in cases:
            old: list[float] = []
            new: list[float] = []
            for _ in range(ROUNDS):  # interleaved: the machine's noise hits both
                old.append(_median_ms(before))
                new.append(_median_ms(after))
            b, a = statistics.median(old), statistics.median(new)
            print(f"{name:<32} {b:>10.1f} {a:>10.2f} {b / a:>7.0f}x")
        engine.dispose()


if __name__ == "__main__":
    main(
        int(sys.argv[1]) if len(sys.argv) > 1 else 10_000_000,
        sys.argv[2] if len(sys.argv) > 2 else "",
    )
