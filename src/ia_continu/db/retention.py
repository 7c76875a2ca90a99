"""Retention of the prediction log (and, on request, of old datasets).

Every served prediction is a row. Without a bound the ``predictions`` table grows by
about 10 GB a day at 1,000 requests/s, so it is pruned to two limits, oldest first:

- an age (``IA_PREDICTION_RETENTION_DAYS``) and
- a row count (``IA_PREDICTION_MAX_ROWS``).

Rows with feedback (table ``feedback``, joined on ``prediction_id``) are kept by
default: they are the labelled, reproducible history. Datasets are kept unless
``IA_DATASET_RETENTION_DAYS`` is set, and a dataset that trained any registered model
(``models.generation_id``), as well as the newest dataset, is never removed.

Deletes go in small batches, each its own short write transaction, so that the API's
prediction writer and /generate never wait long behind a prune. Several API workers and
replicas may call :func:`prune` at once: a non-blocking lock (a file lock beside a
SQLite database, an advisory lock on PostgreSQL) lets one of them work and the others
skip; even without it, two prunes only race to delete the same rows, which is harmless.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ia_continu.db.engine import WRITE
from ia_continu.db.tables import dataset_samples, datasets, feedback, models, predictions
from ia_continu.db.vacuum import DEFAULT_BATCH_PAUSE, VacuumReport, vacuum_database

if TYPE_CHECKING:
    import threading

    from ia_continu.config import Settings

log = logging.getLogger(__name__)


_PG_PRUNE_LOCK_KEY = 720_202_612  # arbitrary, constant: one prune at a time per database


# ... and per schema (several instances, or tests, may share one database).
_PG_LOCK_ARGS = ":k, hashtext(current_schema())"


DEFAULT_BATCH_SIZE = 2_000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """What a prune keeps. ``None`` means "no limit" for each bound."""

    older_than: timedelta | None = None  # predictions older than this go
    max_rows: int | None = None  # then the oldest beyond this many rows go
    keep_feedback: bool = True  # never remove a prediction that has feedback
    datasets_older_than: timedelta | None = None  # None: datasets are kept

    @classmethod
    def from_settings(cls, settings: Settings) -> RetentionPolicy:
        days = settings.prediction_retention_days
        rows = settings.prediction_max_rows
        dataset_days = settings.dataset_retention_days
        return cls(
            older_than=timedelta(days=days) if days > 0 else None,
            max_rows=rows if rows > 0 else None,
            keep_feedback=settings.prediction_retention_keep_feedback,
            datasets_older_than=timedelta(days=dataset_days) if dataset_days > 0 else None,
        )


@dataclass(slots=True)
class PruneReport:
    dry_run: bool
    skipped: bool = False  # another process holds the prune lock
    predictions_by_age: int = 0
    predictions_by_count: int = 0
    predictions_kept_with_feedback: int = 0  # rows with feedback left (never pruned)
    predictions_remaining: int = 0
    datasets_removed: int = 0
    samples_removed: int = 0
    batches: int = 0
    seconds: float = 0.0
    vacuum: VacuumReport | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def predictions_removed(self) -> int:
        return self.predictions_by_age + self.predictions_by_count

    def describe(self) -> str:
        """One line for humans (the CLI and the logs)."""
        if self.skipped:
            return "prune skipped: another process is pruning this database"
        verb = "would remove" if self.dry_run else "removed"
        text = (
            f"predictions: {verb} {self.predictions_removed} "
            f"({self.predictions_by_age} by age, {self.predictions_by_count} by count), "
            f"{self.predictions_remaining} remain "
            f"({self.predictions_kept_with_feedback} with feedback, always kept); "
            f"datasets: {verb} {self.datasets_removed} ({self.samples_removed} samples); "
            f"{self.seconds:.2f} s"
        )
        if self.vacuum is not None:
            text += f"; {self.vacuum.describe()}"
        return text


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)


_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "": 86_400}


def parse_duration(text: str) -> timedelta:
    """``7d``, ``12h``, ``90m``, ``3600s``, ``2w``; a bare number is days."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r} (examples: 7d, 12h, 90m)")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()])


def prune(
    engine: Engine,
    policy: RetentionPolicy,
    *,
    now: datetime,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    batch_pause: float = DEFAULT_BATCH_PAUSE,
    vacuum: bool = False,
    wait_for_lock: bool = False,
    stop: threading.Event | None = None,
) -> PruneReport:
    """Apply ``policy`` once; with ``dry_run``, count what would go and change nothing.

    Without ``wait_for_lock`` a prune already running elsewhere makes this one return
    at once with ``skipped=True`` (the API's background task); the CLI waits instead.
    ``stop`` (set at the API's shutdown) ends the prune between two batches.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    t0 = time.perf_counter()
    report = PruneReport(dry_run=dry_run)
    with _prune_lock(engine, wait=wait_for_lock) as acquired:
        if not acquired:
            report.skipped = True
            return report
        cutoff = now - policy.older_than if policy.older_than is not None else None
        if dry_run:
            _count_predictions(engine, policy, cutoff, report)
            _count_datasets(engine, policy, now, report)
        else:
            batches = _Batches(batch_size, batch_pause, stop)
            _delete_predictions(engine, policy, cutoff, report, batches)
            if not batches.stopped:
                _delete_datasets(engine, policy, now, report, batches)
            if vacuum:
                report.vacuum = vacuum_database(engine)
            elif engine.dialect.name == "sqlite" and report.predictions_removed:
                # Give the freed pages back when the file allows it without a full VACUUM.
                report.vacuum = vacuum_database(engine, allow_full=False)
    report.seconds = time.perf_counter() - t0
    return report


def _deletable(cutoff: datetime | None, keep_feedback: bool) -> sa.ColumnElement[bool]:
    p = predictions.c
    conditions: list[sa.ColumnElement[bool]] = []
    if cutoff is not None:
        conditions.append(p.created_at < cutoff)
    if keep_feedback:
        has_feedback = sa.exists().where(feedback.c.prediction_id == p.prediction_id)
        # Old rows have no id, hence no feedback.
        conditions.append(sa.or_(p.prediction_id.is_(None), ~has_feedback))
    return sa.and_(sa.true(), *conditions)


def _labelled_count(conn: Connection, cutoff: datetime | None) -> int:
    p = predictions.c
    stmt = (
        sa.select(sa.func.count())
        .select_from(predictions)
        .where(p.prediction_id.is_not(None))
        .where(sa.exists().where(feedback.c.prediction_id == p.prediction_id))
    )
    if cutoff is not None:
        stmt = stmt.where(p.created_at < cutoff)
    return int(conn.execute(stmt).scalar_one())


def _count_rows(conn: Connection, where: sa.ColumnElement[bool] | None = None) -> int:
    stmt = sa.select(sa.func.count()).select_from(predictions)
    if where is not None:
        stmt = stmt.where(where)
    return int(conn.execute(stmt).scalar_one())


def _count_predictions(
    engine: Engine, policy: RetentionPolicy, cutoff: datetime | None, report: PruneReport
) -> None:
    """Exactly what :func:`_delete_predictions` would remove from the data as it is now
    (one read transaction: a consistent view)."""
    with engine.connect() as conn, conn.begin():
        total = _count_rows(conn)
        by_age = 0
        if cutoff is not None:
            by_age = _count_rows(conn, _deletable(cutoff, policy.keep_feedback))
        by_count = 0
        if policy.max_rows is not None:
            excess = max(0, total - by_age - policy.max_rows)
            if excess:
                # Rows the age pass leaves that the count pass may take, oldest first.
                left = _count_rows(conn, _deletable(None, policy.keep_feedback)) - by_age
                by_count = min(excess, left)
        report.predictions_by_age = by_age
        report.predictions_by_count = by_count
        report.predictions_remaining = total - by_age - by_count
        report.predictions_kept_with_feedback = _kept_labelled(conn, policy, cutoff, report)


def _kept_labelled(
    conn: Connection, policy: RetentionPolicy, cutoff: datetime | None, report: PruneReport
) -> int:
    """Rows with feedback left in the table: never removed while ``keep_feedback``."""
    return _labelled_count(conn, None) if policy.keep_feedback else 0


class _Batches:
    """Batch size, the pause between batches, and the stop signal of one prune."""

    def __init__(self, size: int, pause: float, stop: threading.Event | None) -> None:
        self.size = size
        self.pause = pause
        self.stop = stop

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def rest(self) -> bool:
        """Pause before the next batch; False when the prune must stop."""
        if self.stop is not None:
            return not self.stop.wait(self.pause)
        if self.pause > 0:
            time.sleep(self.pause)
        return True


def _delete_predictions(
    engine: Engine,
    policy: RetentionPolicy,
    cutoff: datetime | None,
    report: PruneReport,
    batches: _Batches,
) -> None:
    if cutoff is not None:
        report.predictions_by_age = _delete_in_batches(
            engine, _deletable(cutoff, policy.keep_feedback), None, report, batches
        )
    with engine.connect() as conn:
        total = _count_rows(conn)
    if policy.max_rows is not None and total > policy.max_rows and not batches.stopped:
        report.predictions_by_count = _delete_in_batches(
            engine,
            _deletable(None, policy.keep_feedback),
            total - policy.max_rows,
            report,
            batches,
        )
        total -= report.predictions_by_count
    report.predictions_remaining = total
    with engine.connect() as conn:
        report.predictions_kept_with_feedback = _kept_labelled(conn, policy, cutoff, report)


def _delete_in_batches(
    engine: Engine,
    where: sa.ColumnElement[bool],
    limit: int | None,
    report: PruneReport,
    batches: _Batches,
) -> int:
    """Delete the oldest rows (lowest ids) matching ``where``, at most ``limit``, one
    short transaction per batch."""
    removed = 0
    while limit is None or removed < limit:
        n = batches.size if limit is None else min(batches.size, limit - removed)
        oldest = (
            sa.select(predictions.c.id).where(where).order_by(predictions.c.id).limit(n)
        ).scalar_subquery()
        with engine.connect().execution_options(**WRITE) as conn, conn.begin():
            # The ids are chosen inside the delete's own transaction: a row inserted
            # meanwhile is never counted without being deleted.
            deleted = conn.execute(
                sa.delete(predictions).where(predictions.c.id.in_(oldest))
            ).rowcount
        report.batches += 1
        removed += deleted
        if deleted < n or not batches.rest():
            break
    return removed


def _prunable_datasets(conn: Connection, policy: RetentionPolicy, now: datetime) -> list[int]:
    """generation_ids of the datasets past their retention that no model was trained on,
    never the newest one (the monitoring flow may still be about to read it)."""
    if policy.datasets_older_than is None:
        return []
    newest = conn.execute(sa.select(sa.func.max(datasets.c.generation_id))).scalar()
    used = sa.select(models.c.generation_id).where(models.c.generation_id.is_not(None))
    rows = conn.execute(
        sa.select(datasets.c.generation_id)
        .where(datasets.c.created_at < now - policy.datasets_older_than)
        .where(datasets.c.generation_id.is_not(None))
        .where(datasets.c.generation_id.not_in(used))
        .where(datasets.c.generation_id != newest)
        .order_by(datasets.c.generation_id)
    ).all()
    return [int(r[0]) for r in rows]


def _count_datasets(
    engine: Engine, policy: RetentionPolicy, now: datetime, report: PruneReport
) -> None:
    with engine.connect() as conn:
        ids = _prunable_datasets(conn, policy, now)
        if ids:
            report.samples_removed = int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(dataset_samples)
                    .where(dataset_samples.c.generation_id.in_(ids))
                ).scalar_one()
            )
    report.datasets_removed = len(ids)


def _delete_datasets(
    engine: Engine,
    policy: RetentionPolicy,
    now: datetime,
    report: PruneReport,
    batches: _Batches,
) -> None:
    with engine.connect() as conn:
        ids = _prunable_datasets(conn, policy, now)
    for generation_id in ids:
        # Samples first, in batches, the header last: an interrupted prune leaves a
        # listed (old, unused) dataset with fewer rows, which the next prune finishes,
        # rather than sample rows that no dataset names.
        while True:
            batch = (
                sa.select(dataset_samples.c.id)
                .where(dataset_samples.c.generation_id == generation_id)
                .limit(batches.size)
            ).scalar_subquery()
            with engine.connect().execution_options(**WRITE) as conn, conn.begin():
                deleted = conn.execute(
                    sa.delete(dataset_samples).where(dataset_samples.c.id.in_(batch))
                ).rowcount
            report.samples_removed += deleted
            report.batches += 1
            if deleted < batches.size:
                break
            if not batches.rest():
                return
        with engine.connect().execution_options(**WRITE) as conn, conn.begin():
            # Checked again inside the transaction: a retrain may have used it meanwhile.
            used = conn.execute(
                sa.select(sa.func.count())
                .select_from(models)
                .where(models.c.generation_id == generation_id)
            ).scalar_one()
            if not used:
                conn.execute(sa.delete(datasets).where(datasets.c.generation_id == generation_id))
                report.datasets_removed += 1


@contextlib.contextmanager
def _prune_lock(engine: Engine, *, wait: bool) -> Iterator[bool]:
    if engine.dialect.name == "postgresql":
        key = {"k": _PG_PRUNE_LOCK_KEY}
        with engine.connect() as conn:
            if wait:
                conn.execute(sa.text(f"SELECT pg_advisory_lock({_PG_LOCK_ARGS})"), key)
                acquired = True
            else:
                acquired = bool(
                    conn.execute(
                        sa.text(f"SELECT pg_try_advisory_lock({_PG_LOCK_ARGS})"), key
                    ).scalar_one()
                )
            conn.commit()
            try:
                yield acquired
            finally:
                if acquired:
                    conn.execute(sa.text(f"SELECT pg_advisory_unlock({_PG_LOCK_ARGS})"), key)
                    conn.commit()
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield True
        return
    lock_path = Path(database).with_suffix(".prune.lock")
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
