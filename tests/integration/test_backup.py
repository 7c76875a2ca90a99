"""`ia-continu db backup` while a real API serves /predict and /generate, then `db
restore` into another, empty instance: a new API serves the same champion and the same
models, and every dataset is whole. SQLite (online backup API) and PostgreSQL
(pg_dump/pg_restore, each side in its own fresh database)."""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from ia_continu.api.app import create_app
from ia_continu.config import Settings
from ia_continu.db import datasets as db_datasets
from ia_continu.db import models as db_models
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.ml.predictor import LinearModel
from tests.conftest import POSTGRES_ADMIN_URL, LiveServer
from tests.integration.processes import BIN, dataset_integrity

MODELS = (
    LinearModel(version="v1", coef=(1.7, -0.9), intercept=0.2),
    LinearModel(version="v2", coef=(-0.4, 1.1), intercept=-0.3),
    LinearModel(version="v3", coef=(0.8, 0.8), intercept=0.0),
)
CHAMPION = "v2"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_databases(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_available: bool
) -> Iterator[tuple[str, str]]:
    """(source URL, target URL): two files, or two fresh PostgreSQL databases (pg_dump
    works per database; the restore recreates the tables in the source's schema)."""
    if request.param == "sqlite":
        yield (
            f"sqlite:///{tmp_path / 'src' / 'data' / 'ia_continu_solution.db'}",
            f"sqlite:///{tmp_path / 'dst' / 'data' / 'ia_continu_solution.db'}",
        )
        return
    if not postgres_available:
        pytest.skip("PostgreSQL not reachable")
    names = [f"bk_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for name in names:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = sa.make_url(POSTGRES_ADMIN_URL)
    try:
        yield tuple(  # type: ignore[misc]
            base.set(database=name).render_as_string(hide_password=False) for name in names
        )
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _seed(database_url: str) -> None:
    engine = create_db_engine(database_url)
    upgrade_database(engine)
    for model in MODELS:
        db_models.insert_model(
            engine,
            db_models.ModelRecord(
                version=model.version,
                accuracy=0.9,
                training_samples=800,
                created_at=datetime.now(UTC),
                is_active=model.version == CHAMPION,
                parameters=model.to_json(),
            ),
            activate=model.version == CHAMPION,
        )
    engine.dispose()


def _cli(args: list[str], *, database_url: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ia-continu"), "db", *args],
        env={**os.environ, "IA_DATABASE_URL": database_url, "IA_DATA_DIR": str(data_dir)},
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _datasets(database_url: str) -> dict[int, tuple[int, int]]:
    engine = create_db_engine(database_url)
    try:
        return {
            d.generation_id: (d.samples_count, d.hour_generated)
            for d in db_datasets.list_datasets(engine, limit=10_000)
        }
    finally:
        engine.dispose()


def test_backup_under_load_then_restore_serves_the_same(
    two_databases: tuple[str, str], make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    source_url, target_url = two_databases
    src_dir, dst_dir = tmp_path / "src" / "data", tmp_path / "dst" / "data"
    src_dir.mkdir(parents=True)
    dst_dir.parent.mkdir(parents=True)
    _seed(source_url)
    settings = make_settings(
        database_url=source_url, data_dir=src_dir, prediction_log_flush_interval=0.05
    )
    backup = tmp_path / "backup.bin"
    errors: list[str] = []
    stop = threading.Event()

    def load(path: str, body: dict[str, object]) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while not stop.is_set():
                r = http.post(path, json=body)
                if r.status_code != 200:
                    errors.append(f"{path}: {r.status_code} {r.text[:200]}")

    with LiveServer(create_app(settings)) as server:
        httpx.post(f"{server.url}/generate", json={"samples": 500, "seed": 1}, timeout=60)
        threads = [
            threading.Thread(target=load, args=("/predict", {"features": [0.3, -0.2]})),
            threading.Thread(target=load, args=("/predict", {"features": [-1.0, 2.0]})),
            threading.Thread(target=load, args=("/generate", {"samples": 2000})),
        ]
        for t in threads:
            t.start()
        try:
            done = _cli(["backup", str(backup)], database_url=source_url, data_dir=src_dir)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert done.returncode == 0, done.stderr
        assert not errors, errors[:3]
        source_models = httpx.get(f"{server.url}/models").json()
    source_datasets = _datasets(source_url)

    restored = _cli(["restore", str(backup)], database_url=target_url, data_dir=dst_dir)
    assert restored.returncode == 0, restored.stderr
    assert f"champion {CHAMPION}, 3 models" in restored.stdout
    # The model files are rebuilt from the restored models table.
    assert sorted(p.name for p in (dst_dir / "models").glob("*.json")) == [
        f"{m.version}.json" for m in MODELS
    ]
    # Consistent: every dataset whole, no sample without its dataset, and each one equal
    # to the source's (the ones generated after the snapshot are simply absent).
    integrity, orphans = dataset_integrity(target_url)
    assert orphans == 0 and integrity
    assert all(count == stored for _, count, stored in integrity)
    target_datasets = _datasets(target_url)
    assert len(target_datasets) >= 1
    assert all(source_datasets[g] == v for g, v in target_datasets.items())

    restored_settings = make_settings(database_url=target_url, data_dir=dst_dir)
    with LiveServer(create_app(restored_settings)) as server:
        assert httpx.get(f"{server.url}/models").json() == source_models
        answer = httpx.post(f"{server.url}/predict", json={"features": [0.3, -0.2]}).json()
        assert answer["model_version"] == CHAMPION

    # A second restore into the now non-empty instance is refused in one line...
    again = _cli(["restore", str(backup)], database_url=target_url, data_dir=dst_dir)
    assert again.returncode == 1
    assert "not empty" in again.stderr or "already has tables" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    # ... unless forced.
    forced = _cli(["restore", "--force", str(backup)], database_url=target_url, data_dir=dst_dir)
    assert forced.returncode == 0, forced.stderr
    assert f"champion {CHAMPION}" in forced.stdout


def test_restore_refuses_what_is_not_a_backup(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    data_dir = tmp_path / "instance" / "data"
    data_dir.parent.mkdir()
    done = _cli(
        ["restore", str(junk)],
        database_url=f"sqlite:///{data_dir / 'ia.db'}",
        data_dir=data_dir,
    )
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (data_dir / "ia.db").exists()
    missing = _cli(
        ["backup", str(tmp_path / "nowhere" / "b.db")],
        database_url=f"sqlite:///{data_dir / 'ia.db'}",
        data_dir=data_dir,
    )
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1
