"""The prediction logger on its own: bounded queue, counters, batches, retries, close."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from ia_continu.db import predictions as db_predictions
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.services import predlog as predlog_module
from ia_continu.services.predlog import PredictionLogger

T0 = 1_768_473_000_000_000  # 2026-01-15 10:30:00 UTC, in microseconds
S = 1_000_000  # one second in microseconds


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'log.db'}")
    upgrade_database(engine)
    return engine


@pytest.fixture
def bare_engine(tmp_path: Path) -> Engine:
    """A real database without the predictions table: every write fails."""
    return create_db_engine(f"sqlite:///{tmp_path / 'empty.db'}")


def _logger(engine: Engine, **overrides: float) -> PredictionLogger:
    values: dict[str, float] = {"queue_size": 100, "batch_size": 10, "flush_interval": 3600}
    values.update(overrides)
    return PredictionLogger(engine=engine, **values)  # type: ignore[arg-type]


def test_logger_drops_new_rows_when_full_and_counts_them(engine: Engine) -> None:
    logger = _logger(engine, queue_size=5)
    accepted = [logger.log("v1", float(i), 0.0, 1, 0.9, T0 + i * S) for i in range(8)]
    assert accepted == [True] * 5 + [False] * 3
    c = logger.counters()
    assert (c.logged, c.dropped, c.queued, c.flushed) == (5, 3, 5, 0)
    assert asyncio.run(logger.flush()) == 5
    # The first five are the ones kept: dropping never evicts accepted rows.
    rows = db_predictions.list_recent_predictions(engine, limit=10)
    assert sorted(r.feature1 for r in rows) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert logger.log("v1", 9.0, 0.0, 0, 0.6, T0)  # room again
    assert logger.counters().queued == 1


def test_logger_log_many_fills_free_space_with_plain_numbers(engine: Engine) -> None:
    logger = _logger(engine, queue_size=10)
    for i in range(4):
        logger.log("v1", float(i), 0.0, 0, 0.7, T0)
    features = np.arange(20, dtype=np.float64).reshape(10, 2)
    classes = np.array([1, 0] * 5, dtype=np.int64)
    confidence = np.linspace(0.5, 1.0, 10)
    assert logger.log_many("v2", features, classes, confidence, epoch_us=T0 + S) == 6
    c = logger.counters()
    assert (c.logged, c.dropped, c.queued) == (10, 4, 10)
    asyncio.run(logger.flush())
    v2 = [
        r
        for r in db_predictions.list_recent_predictions(engine, limit=20)
        if r.model_version == "v2"
    ]
    assert sorted((r.feature1, r.feature2, r.prediction) for r in v2) == [
        (float(features[i, 0]), float(features[i, 1]), int(classes[i])) for i in range(6)
    ]
    assert all(type(r.feature1) is float and type(r.prediction) is int for r in v2)


def test_logger_flush_writes_all_queued_across_batches(engine: Engine) -> None:
    logger = _logger(engine, batch_size=7)
    for i in range(30):
        logger.log("v1", float(i), -float(i), i % 2, 0.8, T0 + i * S)
    assert asyncio.run(logger.flush()) == 30
    assert db_predictions.count_predictions(engine) == 30
    assert logger.counters().flushed == 30


def test_logger_keeps_failed_batch_and_gives_up_after_retry_window(bare_engine: Engine) -> None:
    # No retry window: a batch is abandoned after the minimum number of attempts.
    logger = _logger(bare_engine, batch_size=4, retry_seconds=0)
    for i in range(10):
        logger.log("v1", float(i), 0.0, 1, 0.9, T0)

    async def tick(times: int) -> list[int]:
        return [await logger.flush() for _ in range(times)]

    attempts = predlog_module.MIN_ATTEMPTS
    assert asyncio.run(tick(attempts - 1)) == [0] * (attempts - 1)
    c = logger.counters()
    assert (c.flush_errors, c.abandoned, c.queued) == (attempts - 1, 0, 10)  # all kept
    asyncio.run(tick(1))
    c = logger.counters()
    assert c.flush_errors == attempts
    assert c.abandoned == 4  # one batch, after its last attempt
    assert c.queued == 6  # the rest stays queued


def test_logger_keeps_failed_batch_within_retry_window(bare_engine: Engine) -> None:
    logger = _logger(bare_engine, batch_size=4, retry_seconds=3600)
    for i in range(10):
        logger.log("v1", float(i), 0.0, 1, 0.9, T0)

    async def tick(times: int) -> None:
        for _ in range(times):
            await logger.flush()

    asyncio.run(tick(predlog_module.MIN_ATTEMPTS + 5))
    c = logger.counters()
    assert (c.abandoned, c.queued, c.flush_errors) == (0, 10, predlog_module.MIN_ATTEMPTS + 5)


def test_logger_close_stops_task_and_writes_everything(engine: Engine) -> None:
    logger = _logger(engine, batch_size=3)

    async def scenario() -> None:
        logger.start()
        for i in range(11):
            logger.log("v1", float(i), 1.0, 0, 0.55, T0 + i * S)
        await logger.close()

    asyncio.run(scenario())
    assert db_predictions.count_predictions(engine) == 11
    assert logger.counters().queued == 0


def test_logger_close_with_database_down_reports_loss_without_raising(
    bare_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predlog_module, "SHUTDOWN_RETRY_DELAY", 0.0)
    logger = _logger(bare_engine)

    async def scenario() -> None:
        logger.start()
        for i in range(5):
            logger.log("v1", float(i), 1.0, 0, 0.55, T0)
        await logger.close()

    asyncio.run(scenario())
    c = logger.counters()
    assert c.flush_errors == predlog_module.SHUTDOWN_ATTEMPTS
    assert (c.abandoned, c.queued, c.flushed) == (5, 0, 0)


def test_logger_periodic_task_survives_failures_and_recovers(tmp_path: Path) -> None:
    """The background task keeps ticking through failed writes; once the table exists,
    the kept batch is written (not lost, not duplicated)."""
    engine = create_db_engine(f"sqlite:///{tmp_path / 'late.db'}")
    logger = _logger(engine, flush_interval=0.01)

    async def scenario() -> None:
        logger.start()
        for i in range(5):
            logger.log("v1", float(i), 1.0, 0, 0.55, T0)
        while logger.counters().flush_errors < 2:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(upgrade_database, engine)
        while logger.counters().flushed < 5:
            await asyncio.sleep(0.01)
        await logger.close()

    asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert db_predictions.count_predictions(engine) == 5
