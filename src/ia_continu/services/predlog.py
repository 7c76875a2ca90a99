"""Prediction logging off the request path.

``/predict`` appends one tuple to a bounded in-memory queue (no lock, no await, no I/O);
a background asyncio task writes the queue to the ``predictions`` table in batches
from a worker thread, so the event loop never waits on the database. When the queue is
full, new rows are dropped and counted: a slow or absent database must never slow down
or fail a prediction. On a clean shutdown everything still queued is written.

The queue is meant to be fed from the event loop's thread (async routes). ``deque``
appends are atomic in CPython, so a call from a worker thread is safe too; only the
counters could then be off by a few under contention.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ia_continu.config import Settings
    from ia_continu.db.predictions_insert import FullPredictionRow
    from ia_continu.ml.predictor import LinearModel

# One queued prediction: (epoch_us, feature1, feature2, prediction, confidence,
# model_version, prediction_id, shadow model or None). The shadow model is the object the
# request saw (a reference, no copy): its scores are computed at flush time, off the
# request path, with the coefficients of the shadow at the time the request was served.
QueuedRow = tuple[int, float, float, int, float, str, "str | None", "LinearModel | None"]

log = logging.getLogger(__name__)

# A failed batch is kept and retried on each tick for this long (and at least
# MIN_ATTEMPTS times), then given up and counted as ``abandoned``: long enough for a
# database restart, short enough that a batch the database will never accept does not
# stop logging for good. Memory stays bounded meanwhile: queue_size + one batch.
DEFAULT_RETRY_SECONDS = 300.0
MIN_ATTEMPTS = 3
# At shutdown the database gets this many more tries before the queue is given up.
SHUTDOWN_ATTEMPTS = 3
SHUTDOWN_RETRY_DELAY = 0.5


@dataclass(frozen=True, slots=True)
class PredictionLogCounters:
    logged: int  # accepted into the queue since start
    dropped: int  # refused because the queue was full
    flushed: int  # written to the database
    flush_errors: int  # failed write attempts (the batch is kept and retried)
    abandoned: int  # given up after failing for the whole retry window, or at shutdown
    queued: int  # accepted, not yet written (queue + the batch being retried)


class PredictionLogger:
    """Bounded queue of predictions plus the task that flushes it.

    Lifecycle: ``start()`` inside a running event loop, ``await close()`` at the end
    (stops the task, then writes what is left).
    """

    def __init__(
        self,
        *,
        engine: Engine,
        queue_size: int,
        batch_size: int,
        flush_interval: float,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
    ) -> None:
        if queue_size < 1 or batch_size < 1 or flush_interval <= 0:
            raise ValueError("queue_size and batch_size must be >= 1, flush_interval > 0")
        self.engine = engine
        self.capacity = queue_size
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retry_seconds = retry_seconds
        self._queue: deque[QueuedRow] = deque()
        self._pending: list[QueuedRow] = []  # the batch that failed, retried first
        self._attempts = 0
        self._failing_since = 0.0  # monotonic time of the pending batch's first failure
        self.logged = 0
        self.dropped = 0
        self.flushed = 0
        self.flush_errors = 0
        self.abandoned = 0
        self._failing = False
        # Neither binds to an event loop before it is first waited on.
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, *, engine: Engine) -> PredictionLogger:
        return cls(
            engine=engine,
            queue_size=settings.prediction_log_queue_size,
            batch_size=settings.prediction_log_batch_size,
            flush_interval=settings.prediction_log_flush_interval,
        )

    # --- the request path ------------------------------------------------------------

    def log(
        self,
        model_version: str,
        feature1: float,
        feature2: float,
        prediction: int,
        confidence: float,
        epoch_us: int | None = None,
        prediction_id: str | None = None,
        shadow: LinearModel | None = None,
    ) -> bool:
        """Queue one prediction made at ``epoch_us`` (integer microseconds since the
        epoch, default now), with its id and the shadow model to score it with at flush
        time. Never blocks; returns False when the queue is full and the row was dropped."""
        queue = self._queue
        if len(queue) >= self.capacity:
            self.dropped += 1
            return False
        queue.append(
            (
                time.time_ns() // 1000 if epoch_us is None else epoch_us,
                feature1,
                feature2,
                prediction,
                confidence,
                model_version,
                prediction_id,
                shadow,
            )
        )
        self.logged += 1
        return True

    def log_many(
        self,
        model_version: str,
        features: Any,
        predictions: Any,
        confidences: Any,
        epoch_us: int | None = None,
        prediction_ids: list[str] | None = None,
        shadow: LinearModel | None = None,
    ) -> int:
        """Queue many predictions made at one time (a batch route): ``features`` is
        (n, 2), ``predictions`` and ``confidences`` have n items; numpy arrays or lists.
        Rows beyond the free space are dropped and counted. Returns how many were queued."""
        t = time.time_ns() // 1000 if epoch_us is None else epoch_us
        # Plain Python numbers: numpy scalars would reach the database driver as such.
        features, predictions, confidences = (
            v.tolist() if hasattr(v, "tolist") else v for v in (features, predictions, confidences)
        )
        ids: list[str | None] = (
            list(prediction_ids) if prediction_ids is not None else [None] * len(predictions)
        )
        rows: list[QueuedRow] = [
            (t, float(x[0]), float(x[1]), int(p), float(c), model_version, i, shadow)
            for x, p, c, i in zip(features, predictions, confidences, ids, strict=True)
        ]
        free = max(0, self.capacity - len(self._queue))
        accepted = rows[:free]
        self._queue.extend(accepted)
        self.logged += len(accepted)
        self.dropped += len(rows) - len(accepted)
        return len(accepted)

    # --- counters ----------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue) + len(self._pending)

    def counters(self) -> PredictionLogCounters:
        return PredictionLogCounters(
            logged=self.logged,
            dropped=self.dropped,
            flushed=self.flushed,
            flush_errors=self.flush_errors,
            abandoned=self.abandoned,
            queued=self.queued,
        )

    # --- the background side ---------------------------------------------------------

    def start(self) -> None:
        """Start the periodic flush task (call from the running event loop)."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name="prediction-log-flush")

    async def _run(self) -> None:
        while not self._stop.is_set():
            # Woken early by close(): the final flush happens there, not here.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.flush_interval)
            if self._stop.is_set():
                break
            try:
                await self.flush()
            except Exception:  # never let the task die: the next tick tries again
                log.exception("prediction log flush failed unexpectedly")

    async def flush(self) -> int:
        """Write what is queued now, batch by batch. On a database error the batch is
        kept for the next call and this call stops (it does not raise). Returns the
        number of rows written."""
        async with self._lock:
            written = 0
            # Only what is queued now: under steady traffic the queue never empties,
            # and the next tick takes the rest.
            budget = len(self._queue) + len(self._pending)
            while budget > 0:
                batch = self._pending or self._take(min(self.batch_size, budget))
                if not batch:
                    break
                self._pending = batch
                try:
                    await asyncio.to_thread(self._write, batch)
                except Exception as exc:
                    self._on_failure(exc)
                    break
                self._pending = []
                self._attempts = 0
                self.flushed += len(batch)
                written += len(batch)
                budget -= len(batch)
                if self._failing:
                    log.info("prediction log writes recovered")
                    self._failing = False
            return written

    def _take(self, n: int) -> list[QueuedRow]:
        queue = self._queue
        popleft = queue.popleft
        return [popleft() for _ in range(min(n, len(queue)))]

    def _write(self, batch: list[QueuedRow]) -> int:
        from ia_continu.db.predictions_insert import insert_predictions

        return insert_predictions(self.engine, score_shadow(batch))

    def _on_failure(self, exc: Exception) -> None:
        self.flush_errors += 1
        self._attempts += 1
        if self._attempts == 1:
            self._failing_since = time.monotonic()
        if not self._failing:
            # Once per outage, not once per tick.
            log.warning(
                "cannot write %d logged predictions (kept, retried every %.1f s): %s",
                len(self._pending),
                self.flush_interval,
                _describe(exc),
            )
            self._failing = True
        elapsed = time.monotonic() - self._failing_since
        if self._attempts >= MIN_ATTEMPTS and elapsed >= self.retry_seconds:
            log.error(
                "giving up %d logged predictions after %d failed writes in %.0f s",
                len(self._pending),
                self._attempts,
                elapsed,
            )
            self.abandoned += len(self._pending)
            self._pending = []
            self._attempts = 0

    async def close(self) -> None:
        """Stop the periodic task, then write everything still queued (a few tries)."""
        if self._task is not None:
            self._stop.set()
            await self._task
            self._task = None
        for attempt in range(SHUTDOWN_ATTEMPTS):
            before = self.flush_errors
            while self.queued:
                await self.flush()
                if self.flush_errors != before:
                    break
            if not self.queued:
                return
            if attempt + 1 < SHUTDOWN_ATTEMPTS:
                await asyncio.sleep(SHUTDOWN_RETRY_DELAY)
        lost = self.queued
        log.error("shutting down with %d logged predictions not written", lost)
        self.abandoned += lost
        self._queue.clear()
        self._pending = []


def score_shadow(batch: list[QueuedRow]) -> list[FullPredictionRow]:
    """The rows to write: each with its shadow model's class and confidence, computed
    with numpy per shadow model (one matrix product per flushed batch)."""
    out: list[FullPredictionRow] = []
    by_shadow: dict[int, tuple[LinearModel, list[int]]] = {}
    for i, (us, x1, x2, pred, conf, version, pid, shadow) in enumerate(batch):
        out.append((us, x1, x2, pred, conf, version, pid, None, None, None))
        # Just promoted: the shadow is the champion now, nothing to compare.
        if shadow is not None and shadow.version != version:
            by_shadow.setdefault(id(shadow), (shadow, []))[1].append(i)
    if by_shadow:
        import numpy as np

        for shadow, positions in by_shadow.values():
            features = np.array([(batch[i][1], batch[i][2]) for i in positions], dtype=np.float64)
            classes, confidences = shadow.predict_batch(features)
            for i, c, p in zip(positions, classes.tolist(), confidences.tolist(), strict=True):
                out[i] = (*out[i][:7], shadow.version, c, p)
    return out


def _describe(exc: Exception) -> str:
    # SQLAlchemy's message goes on with the statement and a sample of the bound rows.
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line[:300]}"
