"""SQLite writers of one process queue on a lock instead of racing in the busy handler."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from ia_continu.db import datasets as db_datasets
from ia_continu.db.engine import WRITE, create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.ml.data import generate_dataset


def test_sqlite_concurrent_writers_all_succeed_within_busy_timeout(tmp_path: Path) -> None:
    # 32 threads x 10 datasets of 5,000 rows: queued, a writer waits for at most 31 others
    # (~0.4 s here, the timeout is 3 s); racing in SQLite's busy handler (sleep up to
    # 100 ms, retry), unlucky writers lost every race until "database is locked" (about
    # 10 of the 320 writes failed before the queue).
    engine = create_db_engine(f"sqlite:///{tmp_path / 'ia.db'}", busy_timeout_ms=3000)
    upgrade_database(engine)
    data = generate_dataset(5000, hour=1, seed=1)
    errors: list[str] = []

    def write() -> None:
        for _ in range(10):
            try:
                db_datasets.insert_dataset(engine, data, created_at=datetime.now(UTC))
            except Exception as exc:
                errors.append(str(exc)[:120])

    threads = [threading.Thread(target=write) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(db_datasets.list_datasets(engine, limit=1000)) == 320
    engine.dispose()


def test_sqlite_write_lock_released_after_rollback_and_failed_begin(tmp_path: Path) -> None:
    import sqlite3

    import pytest
    import sqlalchemy as sa

    db = tmp_path / "ia.db"
    engine = create_db_engine(f"sqlite:///{db}", busy_timeout_ms=300)
    upgrade_database(engine)
    conn = engine.connect().execution_options(**WRITE)
    with pytest.raises(RuntimeError), conn, conn.begin():
        conn.exec_driver_sql(
            "INSERT INTO datasets (samples_count, created_at, hour_generated, source) "
            "VALUES (1, '2026-01-01', 1, 'x')"
        )
        raise RuntimeError("rolled back")
    # Another process holds the write lock: BEGIN IMMEDIATE fails after the timeout...
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with pytest.raises(sa.exc.OperationalError):
        db_datasets.insert_dataset(
            engine, generate_dataset(100, hour=1), created_at=datetime.now(UTC)
        )
    other.execute("ROLLBACK")
    other.close()
    # ...and neither failure left this process's queue locked.
    record = db_datasets.insert_dataset(
        engine, generate_dataset(100, hour=1), created_at=datetime.now(UTC)
    )
    assert db_datasets.count_samples(engine, record.generation_id) == 100
    engine.dispose()
