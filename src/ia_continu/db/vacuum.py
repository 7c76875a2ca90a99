"""Giving the space of deleted rows back: the database's size, SQLite's incremental or full
VACUUM, PostgreSQL's VACUUM (ANALYZE). Called after a prune."""

from __future__ import annotations

import time
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

# Pause between two delete batches (and two incremental vacuum steps): lets queued writers
# (the prediction log, /generate) take the write lock in between.
DEFAULT_BATCH_PAUSE = 0.01


# SQLite incremental vacuum: pages given back per transaction (4 MB of 4 KiB pages).
_VACUUM_PAGES_PER_STEP = 1_024


@dataclass(frozen=True, slots=True)
class VacuumReport:
    method: str  # incremental | full | analyze | none
    bytes_before: int
    bytes_after: int

    def describe(self) -> str:
        if self.method == "analyze":
            return "PostgreSQL: VACUUM ANALYZE done (space reused by new rows, not given back)"
        if self.method == "none":
            return "vacuum: nothing to do"
        freed = self.bytes_before - self.bytes_after
        return (
            f"vacuum ({self.method}): {self.bytes_before / 1e6:.1f} MB -> "
            f"{self.bytes_after / 1e6:.1f} MB ({freed / 1e6:.1f} MB given back)"
        )


def database_bytes(engine: Engine) -> int:
    """The size of the database: the SQLite file's pages, or PostgreSQL's total size of
    the project's tables (indexes and TOAST included) in the current schema."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar_one()
            size = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
            return int(pages) * int(size)
        return int(
            conn.execute(
                sa.text(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).scalar_one()
        )


def sqlite_auto_vacuum(engine: Engine) -> int:
    """0 none, 1 full, 2 incremental."""
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("PRAGMA auto_vacuum").scalar_one())


def vacuum_database(engine: Engine, *, allow_full: bool = True) -> VacuumReport:
    """Give space back after a prune.

    SQLite: with ``auto_vacuum=INCREMENTAL`` (new databases get it, see db/engine.py) the
    free pages are released a few MB per transaction; a database created before that
    needs one full ``VACUUM`` (rewrites the file, blocks writers meanwhile, needs as much
    free disk again) which also switches it to incremental. PostgreSQL: autovacuum makes
    the space reusable by new rows; ``VACUUM ANALYZE`` does it now (it does not shrink
    the files, and ``VACUUM FULL`` would lock the table: not done here).
    """
    before = database_bytes(engine)
    if engine.dialect.name == "sqlite":
        if sqlite_auto_vacuum(engine) == 2:
            _incremental_vacuum(engine)
            method = "incremental"
        elif allow_full:
            raw = engine.raw_connection()  # VACUUM cannot run inside a transaction
            try:
                driver = raw.driver_connection
                assert driver is not None
                driver.executescript("PRAGMA auto_vacuum=INCREMENTAL; VACUUM;")
            finally:
                raw.close()
            method = "full"
        else:
            return VacuumReport("none", before, before)
        return VacuumReport(method, before, database_bytes(engine))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for table in ("predictions", "dataset_samples", "datasets"):
            conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))
    return VacuumReport("analyze", before, database_bytes(engine))


def _incremental_vacuum(engine: Engine) -> None:
    raw = engine.raw_connection()
    try:
        driver = raw.driver_connection
        assert driver is not None
        while True:
            free = int(driver.execute("PRAGMA freelist_count").fetchone()[0])
            if free == 0:
                return
            # Through sqlite3_exec: Python's execute() steps the pragma once, which frees
            # one page. Each call is its own short write transaction.
            driver.executescript(f"PRAGMA incremental_vacuum({_VACUUM_PAGES_PER_STEP});")
            if free <= _VACUUM_PAGES_PER_STEP:
                return
            time.sleep(DEFAULT_BATCH_PAUSE)
    finally:
        raw.close()
