"""Retention of the prediction log on SQLite and PostgreSQL: by age and by count while a
real API serves /predict, feedback-labelled rows kept, dry runs that count exactly what a
prune removes, datasets used by a model kept, one prune at a time, space given back."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ia_continu.api.app import create_app
from ia_continu.config import Settings
from ia_continu.db import datasets as db_datasets
from ia_continu.db import models as db_models
from ia_continu.db import monitoring_runs as db_runs
from ia_continu.db import predictions_insert as db_predictions_insert
from ia_continu.db import sql as db_sql
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.db.retention import RetentionPolicy, _prune_lock, parse_duration, prune
from ia_continu.db.tables import predictions
from ia_continu.db.vacuum import database_bytes, sqlite_auto_vacuum
from ia_continu.ml.data import Dataset
from ia_continu.ml.predictor import LinearModel
from tests.conftest import LiveServer
from tests.integration.processes import BIN

MODEL = LinearModel(version="v1", coef=(1.7, -0.9), intercept=0.2)
DAY_US = 86_400 * 1_000_000


def _now_us() -> int:
    return time.time_ns() // 1000


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    upgrade_database(engine)
    db_models.insert_model(
        engine,
        db_models.ModelRecord(
            version=MODEL.version,
            accuracy=0.9,
            training_samples=800,
            created_at=datetime.now(UTC),
            is_active=True,
            parameters=MODEL.to_json(),
        ),
        activate=True,
    )
    yield engine
    engine.dispose()


def _insert_old(db: Engine, n: int, *, age_days: float, start: int = 0) -> None:
    t = _now_us() - int(age_days * DAY_US)
    # Distinct times, oldest first: id order and time order agree, as in production.
    db_predictions_insert.insert_predictions(
        db, [(t + i, 0.1, 0.2, 1, 0.9, "v0") for i in range(start, start + n)]
    )


def _label_oldest(db: Engine, n: int) -> set[str]:
    """Give the n oldest rows a prediction id and feedback; returns the ids."""
    with db.begin() as conn:
        ids = conn.execute(sa.text("SELECT id FROM predictions ORDER BY id LIMIT :n"), {"n": n})
        pairs = [(row[0], str(uuid.uuid4())) for row in ids]
        for row_id, pid in pairs:
            conn.execute(
                sa.text("UPDATE predictions SET prediction_id = :p WHERE id = :i"),
                {"p": pid, "i": row_id},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO feedback (prediction_id, label, received_at) VALUES (:p, 1, :t)"
                ),
                {"p": pid, "t": datetime.now(UTC)},
            )
    return {pid for _, pid in pairs}


def _rows(db: Engine) -> list[tuple[int, str | None, datetime]]:
    with db.connect() as conn:
        p = predictions.c
        rows = conn.execute(sa.select(p.id, p.prediction_id, p.created_at).order_by(p.id)).all()
    return [(r[0], r[1], db_sql._utc(r[2])) for r in rows]


def test_api_prunes_by_age_and_count_under_concurrent_predict(
    db: Engine, make_settings: Callable[..., Settings], database_url: str
) -> None:
    _insert_old(db, 1_500, age_days=40)  # past the 30-day retention
    labelled = _label_oldest(db, 20)  # the oldest of all: kept whatever their age
    settings = make_settings(
        database_url=database_url,
        prediction_log_flush_interval=0.05,
        prediction_retention_days=30,
        prediction_max_rows=400,
        prune_interval=0.2,
        prune_batch_size=100,
    )
    app = create_app(settings)
    errors: list[str] = []
    sent = 0
    lock = threading.Lock()

    def client(seed: int) -> None:
        nonlocal sent
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for i in range(150):
                r = http.post("/predict", json={"features": [seed + i / 100, -1.0]})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                with lock:
                    sent += 1

    with LiveServer(app) as server:
        pruner = app.state.ia.extras["pruner"]
        threads = [threading.Thread(target=client, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        # Every served prediction written, then one more prune after the last write.
        deadline = time.monotonic() + 120
        while True:
            counters = app.state.ia.predlog.counters()
            if counters.queued == 0 and counters.flushed == sent:
                break
            assert time.monotonic() < deadline, counters
            time.sleep(0.05)
        runs = pruner.runs
        while pruner.runs < runs + 2:  # a whole prune started after the flush
            assert time.monotonic() < deadline, "the background prune did not run"
            time.sleep(0.05)
    rows = _rows(db)
    cutoff = datetime.now(UTC) - timedelta(days=30)
    assert len(rows) == 400
    kept_ids = {pid for _, pid, _ in rows if pid is not None}
    assert labelled <= kept_ids  # feedback-labelled rows survive both limits
    unlabelled = [r for r in rows if r[1] not in labelled]
    assert all(created >= cutoff for _, _, created in unlabelled)  # age limit
    # The count limit removed the oldest: what is left is the newest 380 by id.
    with db.connect() as conn:
        newest = conn.execute(
            sa.text(
                "SELECT id FROM predictions WHERE prediction_id IS NULL "
                "OR prediction_id NOT IN (SELECT prediction_id FROM feedback) "
                "ORDER BY id DESC LIMIT 380"
            )
        ).all()
    assert sorted(r[0] for r in unlabelled) == sorted(r[0] for r in newest)
    assert max(r[0] for r in unlabelled) == max(r[0] for r in rows)


def _snapshot(db: Engine) -> tuple[list[tuple[object, ...]], ...]:
    with db.connect() as conn:
        return tuple(
            [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY 1")).all()]
            for t in ("predictions", "feedback", "datasets", "dataset_samples", "models")
        )


def _dataset(db: Engine, n: int, *, age_days: float) -> int:
    data = Dataset(
        features=np.array([[0.1 * i, -0.1 * i] for i in range(n)], dtype=np.float64),
        target=np.array([i % 2 for i in range(n)], dtype=np.int64),
        hour=2,
    )
    record = db_datasets.insert_dataset(
        db, data, created_at=datetime.now(UTC) - timedelta(days=age_days)
    )
    return record.generation_id


def test_dry_run_changes_nothing_and_counts_what_the_prune_removes(db: Engine) -> None:
    _insert_old(db, 700, age_days=10)
    _insert_old(db, 300, age_days=2, start=700)
    labelled = _label_oldest(db, 15)
    _insert_old(db, 500, age_days=0, start=1000)
    old_unused = _dataset(db, 50, age_days=20)
    old_used = _dataset(db, 40, age_days=20)
    newest = _dataset(db, 30, age_days=20)  # old but the newest: kept
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE models SET generation_id = :g"), {"g": old_used})
    policy = RetentionPolicy(
        older_than=parse_duration("7d"), max_rows=600, datasets_older_than=parse_duration("7d")
    )
    now = datetime.now(UTC)
    before = _snapshot(db)
    dry = prune(db, policy, now=now, dry_run=True)
    assert _snapshot(db) == before  # nothing changed
    assert (dry.predictions_by_age, dry.predictions_by_count) == (685, 215)
    assert (dry.datasets_removed, dry.samples_removed) == (1, 50)
    real = prune(db, policy, now=now, batch_size=64, batch_pause=0)
    assert (real.predictions_by_age, real.predictions_by_count) == (
        dry.predictions_by_age,
        dry.predictions_by_count,
    )
    assert (real.datasets_removed, real.samples_removed) == (1, 50)
    assert real.predictions_remaining == dry.predictions_remaining == 600
    assert real.predictions_kept_with_feedback == dry.predictions_kept_with_feedback == 15
    rows = _rows(db)
    assert len(rows) == 600
    assert labelled <= {pid for _, pid, _ in rows}
    with db.connect() as conn:
        ids = {r[0] for r in conn.execute(sa.text("SELECT generation_id FROM datasets"))}
        orphans = conn.execute(
            sa.text("SELECT COUNT(*) FROM dataset_samples WHERE generation_id = :g"),
            {"g": old_unused},
        ).scalar_one()
    assert ids == {old_used, newest} and orphans == 0
    # Nothing left to remove: a second dry run says so.
    again = prune(db, policy, now=now, dry_run=True)
    assert again.predictions_removed == 0 and again.datasets_removed == 0


def test_feedback_rows_are_pruned_only_when_asked(db: Engine) -> None:
    _insert_old(db, 50, age_days=40)
    _label_oldest(db, 5)
    report = prune(
        db,
        RetentionPolicy(older_than=timedelta(days=30), keep_feedback=False),
        now=datetime.now(UTC),
    )
    assert report.predictions_by_age == 50 and _rows(db) == []


def test_a_second_prune_skips_while_one_runs(db: Engine) -> None:
    _insert_old(db, 100, age_days=40)
    policy = RetentionPolicy(older_than=timedelta(days=30))
    with _prune_lock(db, wait=True) as held:
        assert held
        skipped = prune(db, policy, now=datetime.now(UTC))
        assert skipped.skipped and skipped.predictions_removed == 0
        assert len(_rows(db)) == 100
    assert prune(db, policy, now=datetime.now(UTC)).predictions_by_age == 100


def test_sqlite_gives_space_back(tmp_path: Path) -> None:
    """A new file is incremental: a prune alone shrinks it. A file created without
    auto_vacuum is converted by one `--vacuum`."""
    new = create_db_engine(f"sqlite:///{tmp_path / 'new.db'}")
    upgrade_database(new)
    assert sqlite_auto_vacuum(new) == 2
    old_path = tmp_path / "old.db"
    sqlite3.connect(old_path).execute("CREATE TABLE placeholder (x)").connection.close()
    old = create_db_engine(f"sqlite:///{old_path}")
    upgrade_database(old)
    assert sqlite_auto_vacuum(old) == 0
    for engine in (new, old):
        _insert_old(engine, 20_000, age_days=40)
    full = database_bytes(new)
    report = prune(new, RetentionPolicy(older_than=timedelta(days=30)), now=datetime.now(UTC))
    assert report.vacuum is not None and report.vacuum.method == "incremental"
    assert database_bytes(new) < full / 4
    report = prune(
        old, RetentionPolicy(older_than=timedelta(days=30)), now=datetime.now(UTC), vacuum=True
    )
    assert report.vacuum is not None and report.vacuum.method == "full"
    assert database_bytes(old) < full / 4
    assert sqlite_auto_vacuum(old) == 2  # the next prunes are incremental
    new.dispose()
    old.dispose()


def test_cli_prune_dry_run_then_prune(db: Engine, database_url: str, tmp_path: Path) -> None:
    _insert_old(db, 120, age_days=10)
    _insert_old(db, 30, age_days=0, start=120)
    env = {"IA_DATABASE_URL": database_url, "IA_DATA_DIR": str(tmp_path / "data")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "ia-continu"), "db", "prune", *args],
            env={**os.environ, **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    dry = cli("--older-than", "7d", "--keep-rows", "20", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "would remove 130 (120 by age, 10 by count)" in dry.stdout
    assert len(_rows(db)) == 150
    done = cli("--older-than", "7d", "--keep-rows", "20")
    assert done.returncode == 0, done.stderr
    assert "removed 130 (120 by age, 10 by count)" in done.stdout
    assert len(_rows(db)) == 20
    bad = cli("--older-than", "soon")
    assert bad.returncode == 2 and "invalid duration" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_monitoring_flow_prunes_once_per_run(
    prefect_harness: None, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The flow's prune-data task runs after the run is recorded, even a failed run (here
    the API is down and MLflow absent: the cheapest complete run)."""
    from ia_continu.flows import flow_settings, monitoring_flow
    from tests.conftest import free_port

    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'ia.db'}",
        api_url=f"http://127.0.0.1:{free_port()}",
        prediction_retention_days=30,
        mlflow_timeout=1.0,
        mlflow_max_retries=0,
    )
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    _insert_old(engine, 300, age_days=40)
    _insert_old(engine, 50, age_days=1, start=300)
    with flow_settings(settings):
        state = asyncio.run(monitoring_flow(return_state=True))
    assert state.is_failed()  # the run itself failed (API down) ...
    assert db_runs.get_latest_monitoring_run(engine) is not None
    rows = _rows(engine)
    assert len(rows) == 50  # ... and the retention still applied once it was recorded
    engine.dispose()
