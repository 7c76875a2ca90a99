"""Database unavailable under a real `ia-continu serve --workers 2`: clear 503s during the
outage (never a 500, never a hang), /predict and /health unaffected, full recovery
afterwards without restarting the API.

SQLite: another process holds an exclusive write transaction (in WAL mode readers go on
reading: the database is unavailable for writes). PostgreSQL: the backends
are terminated, and a dedicated temporary database refuses connections for a while (the
server itself keeps running: other people use it)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from tests.conftest import POSTGRES_ADMIN_URL
from tests.integration.processes import ApiProcess, dataset_integrity, post

pytestmark = pytest.mark.slow

# Requests during an outage fail after this long instead of the 30 s default.
BUSY_TIMEOUT_MS = "1000"


def probe(url: str) -> dict[str, int]:
    """One request to each route; the status of each."""
    with httpx.Client(base_url=url, timeout=60) as http:
        return {
            "health": http.get("/health").status_code,
            "predict": http.post("/predict", json={"features": [0.5, -0.5]}).status_code,
            "generate": http.post("/generate", json={"samples": 300}).status_code,
            "evaluate": http.post("/evaluate", json={}).status_code,
            "models": http.get("/models").status_code,
            "retrain": http.post("/retrain", json={"generation_id": 1}).status_code,
        }


def assert_outage_answers(url: str, *, refused: set[str]) -> None:
    """The ``refused`` routes answer 503, every other one 200."""
    for _ in range(3):  # both workers, several connections of each pool
        statuses = probe(url)
        expected = {route: 503 if route in refused else 200 for route in statuses}
        assert statuses == expected
    r = httpx.post(f"{url}/generate", json={"samples": 100}, timeout=60)
    assert r.json() == {"detail": "database unavailable, retry shortly"}
    assert r.headers["retry-after"] == "1"


def wait_recovery(url: str, timeout: float = 60) -> float:
    """Seconds until a write (/generate) succeeds again; then every route answers 200."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = httpx.post(f"{url}/generate", json={"samples": 100}, timeout=60)
        assert r.status_code in (200, 503), r.text
        if r.status_code == 200:
            recovered = time.monotonic() - t0
            statuses = probe(url)
            assert set(statuses.values()) == {200}, statuses
            return recovered
        time.sleep(0.05)
    raise AssertionError(f"no recovery within {timeout} s: {probe(url)}")


def _train(url: str) -> None:
    assert post(url, "/generate", {"samples": 500, "seed": 1}).status_code == 200
    r = post(url, "/retrain", timeout=300)
    assert r.status_code == 200, r.text


def test_sqlite_locked_by_another_process_503_then_recovers(
    mlflow_server: str, tmp_path: Path
) -> None:
    db_file = tmp_path / "ia.db"
    env = {"IA_DB_BUSY_TIMEOUT_MS": BUSY_TIMEOUT_MS}
    with ApiProcess(
        root=tmp_path, database_url=f"sqlite:///{db_file}", mlflow_url=mlflow_server, env=env
    ) as api:
        _train(api.url)
        locker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys\n"
                f"c = sqlite3.connect({str(db_file)!r}, isolation_level=None, timeout=30)\n"
                "c.execute('BEGIN EXCLUSIVE')\n"
                "c.execute('DELETE FROM dataset_samples')\n"  # never committed
                "print('locked', flush=True)\n"
                "sys.stdin.read()\n",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            # Writers wait IA_DB_BUSY_TIMEOUT_MS, then 503; /retrain registers its model in
            # MLflow, then cannot store it: 503, and the champion alias has not moved.
            assert_outage_answers(api.url, refused={"generate", "retrain"})
        finally:
            assert locker.stdin is not None
            locker.stdin.close()  # the locker exits: its transaction is rolled back
            locker.wait(timeout=30)
        recovery = wait_recovery(api.url)
        print(f"\n[sqlite lock] writes back {recovery:.2f} s after the lock was released")
        # The retrains refused during the outage did not move MLflow's champion alias.
        active = httpx.get(f"{api.url}/models").json()
        registry_version = next(m["registry_version"] for m in active["models"] if m["is_active"])
        champion = MlflowClient(
            tracking_uri=mlflow_server, registry_uri=mlflow_server
        ).get_model_version_by_alias(api.model_name, "champion")
        assert int(champion.version) == registry_version
        assert api.proc is not None and api.proc.poll() is None and api.starts == 1
        datasets, orphans = dataset_integrity(f"sqlite:///{db_file}")
        assert orphans == 0 and all(count == stored for _, count, stored in datasets)


@pytest.fixture
def temporary_database(postgres_available: bool) -> Iterator[tuple[str, str]]:
    """A database of its own on the local server, dropped afterwards: (name, url)."""
    if not postgres_available:
        pytest.skip("PostgreSQL not reachable")
    name = f"ia_fault_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_ADMIN_URL).set(database=name)
    try:
        yield name, url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            conn.execute(sa.text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


def _admin(sql: str, **params: object) -> int:
    """Run one statement as the administrator; the number of rows it returned."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            result = conn.execute(sa.text(sql), params)
            return len(result.all()) if result.returns_rows else 0
    finally:
        admin.dispose()


TERMINATE = (
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
    "WHERE datname = :name AND pid <> pg_backend_pid()"
)


@pytest.mark.postgres
def test_postgres_backends_terminated_reconnect_transparently(
    temporary_database: tuple[str, str], mlflow_server: str, tmp_path: Path
) -> None:
    name, url = temporary_database
    with ApiProcess(root=tmp_path, database_url=url, mlflow_url=mlflow_server) as api:
        _train(api.url)
        for _ in range(3):
            probe(api.url)  # fill both workers' pools
            assert _admin(TERMINATE, name=name) > 0
            # Dead pooled connections are detected at checkout and replaced.
            statuses = probe(api.url)
            assert set(statuses.values()) == {200}, statuses


@pytest.mark.postgres
def test_postgres_database_refusing_connections_503_then_recovers(
    temporary_database: tuple[str, str], mlflow_server: str, tmp_path: Path
) -> None:
    name, url = temporary_database
    with ApiProcess(root=tmp_path, database_url=url, mlflow_url=mlflow_server) as api:
        _train(api.url)
        probe(api.url)
        _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            assert _admin(TERMINATE, name=name) > 0
            assert_outage_answers(api.url, refused={"generate", "evaluate", "models", "retrain"})
        finally:
            _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        recovery = wait_recovery(api.url)
        print(f"\n[postgres outage] writes back {recovery:.2f} s after connections allowed")
        assert api.proc is not None and api.proc.poll() is None and api.starts == 1
        datasets, orphans = dataset_integrity(url)
        assert orphans == 0 and all(count == stored for _, count, stored in datasets)
