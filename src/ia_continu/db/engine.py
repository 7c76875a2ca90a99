"""Engine construction. SQLite gets WAL, a busy timeout and IMMEDIATE write transactions."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

# Execution option marking a connection whose transaction will write (see _begin).
WRITE = {"ia_write": True}


def create_db_engine(url: str, *, busy_timeout_ms: int = 30_000, echo: bool = False) -> Engine:
    """Create the engine for ``url``; for SQLite, the parent directory is created."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _create_sqlite_engine(parsed, busy_timeout_ms=busy_timeout_ms, echo=echo)
    return sa.create_engine(
        parsed,
        echo=echo,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        pool_recycle=1800,
        connect_args={"connect_timeout": 5} if parsed.get_backend_name() == "postgresql" else {},
    )


def _create_sqlite_engine(url: sa.URL, *, busy_timeout_ms: int, echo: bool) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(
        url,
        echo=echo,
        connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False},
        pool_size=10,
        max_overflow=20,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's implicit BEGIN is
        # deferred, and a deferred reader that later writes fails with "database is locked").
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # A new, empty file only, before WAL writes its header: the database can then give
        # pruned space back without a full VACUUM (db/retention.py). On a file that has a
        # header already the pragma is skipped: it would be a write on every connect.
        if cur.execute("PRAGMA page_count").fetchone()[0] == 0:
            cur.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    # One write transaction at a time per process, queued on a lock. Without it every
    # waiting writer polls SQLite's busy handler (sleeps of up to 100 ms, then retry): under
    # load a writer lost the race again and again past the busy timeout, and /generate
    # answered 503 "database is locked" with a single API process. Writers of other
    # processes still meet in SQLite's busy handler, one per process at most.
    write_lock = threading.Lock()
    timeout_s = busy_timeout_ms / 1000

    @event.listens_for(engine, "begin")
    def _begin(conn: sa.Connection) -> None:
        if not conn.get_execution_options().get("ia_write", False):
            conn.exec_driver_sql("BEGIN")
            return
        start = time.monotonic()
        if not write_lock.acquire(timeout=timeout_s):
            raise sa.exc.OperationalError(
                "BEGIN IMMEDIATE",
                None,
                sqlite3.OperationalError("database is locked (writers queued in this process)"),
            )
        try:
            # The whole wait, queue included, stays within the busy timeout.
            remaining_ms = max(1, int(busy_timeout_ms - 1000 * (time.monotonic() - start)))
            conn.exec_driver_sql(f"PRAGMA busy_timeout={remaining_ms}")
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            write_lock.release()
            raise
        conn.info[_WRITE_LOCK_HELD] = True
        conn.exec_driver_sql(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")

    @event.listens_for(engine, "commit")
    @event.listens_for(engine, "rollback")
    def _end(conn: sa.Connection) -> None:
        if conn.info.pop(_WRITE_LOCK_HELD, False):
            write_lock.release()

    # Safety nets: a connection invalidated or returned mid-transaction must not keep
    # the lock (every later write of the process would wait, then fail).
    @event.listens_for(engine, "invalidate")
    @event.listens_for(engine, "checkin")
    def _release_if_held(_dbapi_conn: Any, record: Any, *_: Any) -> None:
        if record is not None and record.info.pop(_WRITE_LOCK_HELD, False):
            write_lock.release()

    return engine


_WRITE_LOCK_HELD = "ia_write_lock_held"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"
