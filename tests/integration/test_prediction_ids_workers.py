"""Prediction ids from a real `ia-continu serve --workers 2`, across a restart: unique,
and every logged row carries the id its answer gave. SQLite file; no MLflow needed (the
model is stored in the database with its parameters)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from ia_continu.db import models as db_models
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.db.tables import predictions
from ia_continu.ml.predictor import LinearModel
from tests.conftest import free_port, wait_http

pytestmark = pytest.mark.slow


def _serve(tmp_path: Path, db_url: str, run: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IA_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        IA_DATA_DIR=str(tmp_path / "data"),
        IA_DATABASE_URL=db_url,
        IA_MLFLOW_TRACKING_URI="http://127.0.0.1:9",  # never called: nothing is retrained
        IA_WARM_UP_ML="false",
        IA_LOG_LEVEL="warning",
    )
    log = open(tmp_path / f"serve{run}.log", "wb")  # noqa: SIM115 - the process owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "ia_continu", "serve", "--workers", "2", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/health", timeout=120, proc=proc)
    return proc, url


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)  # a clean shutdown writes each worker's queue
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _predict_many(url: str, n: int) -> list[str]:
    def one(i: int) -> str:
        # A new connection per request: either worker may answer.
        r = httpx.post(f"{url}/predict", json={"features": [i / n, -i / n]}, timeout=10)
        assert r.status_code == 200, r.text
        return str(r.json()["prediction_id"])

    with ThreadPoolExecutor(8) as pool:
        singles = list(pool.map(one, range(n)))
    r = httpx.post(f"{url}/predict/batch", json={"instances": [[0.1, 0.2]] * 50}, timeout=10)
    assert r.status_code == 200, r.text
    return singles + r.json()["prediction_ids"]


def test_ids_unique_across_two_workers_and_a_restart(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'ids.db'}"
    engine = create_db_engine(db_url)
    upgrade_database(engine)
    model = LinearModel(version="v1", coef=(1.0, -1.0), intercept=0.0)
    db_models.insert_model(
        engine,
        db_models.ModelRecord(
            version="v1",
            accuracy=0.9,
            training_samples=100,
            created_at=datetime.now(UTC),
            is_active=True,
            parameters=model.to_json(),
        ),
        activate=True,
    )
    answered: list[str] = []
    nodes_per_run: list[set[str]] = []
    for run in range(2):
        proc, url = _serve(tmp_path, db_url, run)
        try:
            ids = _predict_many(url, 300)
        finally:
            _stop(proc)
        answered += ids
        # The last 12 hex digits are the process's random node: two workers answered.
        nodes_per_run.append({i.rsplit("-", 1)[1] for i in ids})
    for i in answered:
        assert uuid.UUID(i).version == 7
    assert len(answered) == len(set(answered)) == 2 * 350
    assert len(nodes_per_run[0]) == 2, "both workers should have answered"
    assert len(nodes_per_run[1]) >= 1
    assert not nodes_per_run[0] & nodes_per_run[1]  # new processes, new nodes
    with engine.connect() as conn:
        logged = conn.execute(sa.select(predictions.c.prediction_id)).scalars().all()
    engine.dispose()
    assert sorted(logged) == sorted(answered)  # every answer logged with its id, once
