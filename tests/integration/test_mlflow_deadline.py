"""A frozen MLflow (SIGSTOP: connections accepted, never answered) and registry debris.

- /retrain with MLflow frozen mid-retrain answers 503 within IA_MLFLOW_DEADLINE (not the
  per-call timeout times every call), an activation meanwhile answers within its own
  deadline instead of waiting for the retrain, /predict is unaffected, and everything
  works again after SIGCONT.
- MLflow killed mid-retrain, then restarted: `ia-continu registry reconcile` (dry run
  first) leaves no RUNNING run and no registered version without a models row or the
  orphan tag; aliases only on versions with a row.
- The monitoring flow runs the reconcile step.

The bounds on elapsed times are generous multiples of the configured deadline (the old
behaviour took the per-call timeout, 10 s, per call: 30-60 s); the measured figures are
printed for docs/mlflow.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient
from sqlalchemy.engine import Engine

from ia_continu.config import Settings
from ia_continu.db import datasets as db_datasets
from ia_continu.db import models as db_models
from ia_continu.registry import core as registry
from ia_continu.registry import training_runs
from ia_continu.services import lifecycle
from ia_continu.services.reconcile import reconcile_registry
from tests.conftest import FIXED_NOW, LiveServer
from tests.integration.processes import MlflowProcess
from tests.integration.test_faults_mlflow import on_mlflow_call

# The machine is shared: MLflow's first calls after a start can take tens of seconds.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOMY = 120.0  # the deadline where the deadline is not what is tested

DEADLINE = 4.0


@pytest.fixture
def database_url(tmp_path: Path) -> str:  # the MLflow side does not depend on the database
    return f"sqlite:///{tmp_path / 'ia.db'}"


@pytest.fixture
def mlflow(tmp_path: Path) -> Iterator[MlflowProcess]:
    store = tmp_path / "mlflow"
    store.mkdir()
    server = MlflowProcess(store).start()
    try:
        yield server
    finally:
        _signal(server, signal.SIGCONT)  # a stopped process would ignore SIGTERM
        server.stop()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database

    engine = create_db_engine(database_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


def _signal(server: MlflowProcess, sig: signal.Signals) -> None:
    if server.proc is not None and server.proc.poll() is None:
        os.killpg(server.proc.pid, sig)


def _client(settings: Settings) -> Any:
    uri = settings.mlflow_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _train(settings: Settings, engine: Engine, *, hour: int, seed: int) -> db_models.ModelRecord:
    from ia_continu.ml.data import generate_dataset

    dataset = generate_dataset(500, hour=hour, seed=seed)
    record = db_datasets.insert_dataset(engine, dataset, created_at=datetime.now(UTC), seed=seed)
    return lifecycle.retrain(
        settings=settings, engine=engine, generation_id=record.generation_id
    ).record


def _assert_no_debris(settings: Settings, engine: Engine) -> None:
    """Every version has a models row or the orphan tag; no run RUNNING; aliases only on
    versions with a row, the champion on the active row's version."""
    client = _client(settings)
    rows = {m.registry_version: m for m in db_models.list_models(engine)}
    versions = client.search_model_versions(f"name = '{settings.model_name}'")
    assert versions
    for mv in versions:
        tagged = mv.tags.get(registry.ORPHAN_TAG) == "true"
        assert (int(mv.version) in rows) != tagged, (mv.version, mv.tags)
    aliases = client.get_registered_model(settings.model_name).aliases
    assert all(int(v) in rows for v in aliases.values()), aliases
    active = db_models.get_active_model(engine)
    assert active is not None and int(aliases["champion"]) == active.registry_version
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    running = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    assert running == [], [r.info.run_id for r in running]


def _wait_no_running_run(settings: Settings, timeout: float = 120) -> None:
    """The abandoned retrain's worker finishes its last call (and marks its run FAILED)
    once MLflow answers again: wait for it, so that it cannot race the checks."""
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    end = time.monotonic() + timeout
    while client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
    ):
        assert time.monotonic() < end, "a run stayed RUNNING"
        time.sleep(0.5)


def test_frozen_mlflow_gives_503_within_deadline_and_activation_does_not_wait(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    mlflow: MlflowProcess,
) -> None:
    # The default per-call timeout (10 s, one retry): without a total deadline the frozen
    # registration alone would wait 20 s, and every later call as long again.
    settings = make_settings(
        database_url=database_url,
        mlflow_tracking_uri=mlflow.url,
        mlflow_deadline=DEADLINE,
        mlflow_reconcile_grace=0,
    )
    # Set-up with a roomy deadline: the machine is shared and slow at times.
    roomy = settings.model_copy(update={"mlflow_deadline": ROOMY})
    v1 = _train(roomy, engine, hour=2, seed=1)
    frozen = threading.Event()

    def freeze() -> None:
        _signal(mlflow, signal.SIGSTOP)
        frozen.set()

    app = _create_app(settings)
    with LiveServer(app) as server:
        url = server.url
        assert _predict_version(url) == v1.version
        answers: dict[str, Any] = {}

        def retrain() -> None:
            t0 = time.monotonic()
            r = httpx.post(f"{url}/retrain", timeout=300)
            answers["retrain"] = (r, time.monotonic() - t0)

        with on_mlflow_call("/model-versions/create", freeze) as fired:
            worker = threading.Thread(target=retrain)
            worker.start()
            assert frozen.wait(timeout=120), "the retrain never reached registration"
            t0 = time.monotonic()
            activation = httpx.post(f"{url}/models/{v1.version}/activate", timeout=300)
            activation_s = time.monotonic() - t0
            retrain_running = worker.is_alive()
            assert _predict_version(url) == v1.version  # serving never needs MLflow
            worker.join(timeout=300)
        assert fired
        r, retrain_s = answers["retrain"]
        print(
            f"\nfrozen MLflow, IA_MLFLOW_DEADLINE={DEADLINE:g}: /retrain 503 after "
            f"{retrain_s:.2f} s; activation {activation.status_code} after {activation_s:.2f} s "
            f"(retrain still waiting then: {retrain_running})"
        )
        assert r.status_code == 503, r.text
        assert "MLflow" in r.json()["detail"] and "unchanged" in r.json()["detail"]
        assert activation.status_code == 503, activation.text
        assert "unchanged" in activation.json()["detail"]
        # Generous: the deadline plus training and scheduling on a loaded machine.
        assert retrain_s < 3 * DEADLINE
        assert activation_s < 3 * DEADLINE
        assert db_models.get_active_version(engine) == v1.version
        assert _predict_version(url) == v1.version

        _signal(mlflow, signal.SIGCONT)
        _wait_no_running_run(settings)
        app.state.ia.settings = roomy  # (only the deadline differs)
        r = httpx.post(f"{url}/retrain", timeout=300)
        assert r.status_code == 200, r.text
        new = r.json()["model_version"]
        assert db_models.get_active_version(engine) == new != v1.version
        active = db_models.get_active_model(engine)
        assert active is not None and _champion(settings) == active.registry_version
        # Rollback works again.
        r = httpx.post(f"{url}/models/{v1.version}/activate", timeout=300)
        assert r.status_code == 200, r.text
        assert _champion(settings) == v1.registry_version

    report = reconcile_registry(settings=settings, engine=engine)
    print("reconcile after the freeze:", [str(c) for c in report.changes])
    _assert_no_debris(settings, engine)


def test_mlflow_killed_mid_retrain_then_reconcile_cli(
    make_settings: Callable[..., Settings],
    database_url: str,
    engine: Engine,
    mlflow: MlflowProcess,
    tmp_path: Path,
) -> None:
    settings = make_settings(
        database_url=database_url,
        mlflow_tracking_uri=mlflow.url,
        mlflow_timeout=5,
        mlflow_deadline=ROOMY,
    )
    v1 = _train(settings, engine, hour=2, seed=1)
    # Killed right after registering: a version without a row, a run left RUNNING, and
    # the best-effort clean-up cannot reach MLflow either.
    with (
        on_mlflow_call("/model-versions/create", mlflow.kill, after=True) as fired,
        pytest.raises(registry.RegistryUnavailableError),
    ):
        _train(settings, engine, hour=3, seed=2)
    assert fired
    mlflow.start()
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    running = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
    )
    assert len(running) == 1
    versions = client.search_model_versions(f"name = '{settings.model_name}'")
    assert {int(mv.version) for mv in versions} == {1, 2}
    assert db_models.get_active_version(engine) == v1.version

    env = {
        **os.environ,
        "IA_DATABASE_URL": database_url,
        "IA_MLFLOW_TRACKING_URI": mlflow.url,
        "IA_MODEL_NAME": settings.model_name,
        "IA_MLFLOW_EXPERIMENT": settings.mlflow_experiment,
        "IA_DATA_DIR": str(tmp_path / "data"),
    }
    cli = [str(Path(sys.executable).parent / "ia-continu"), "registry", "reconcile"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*cli, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    # Default grace (300 s): the debris is too recent to touch.
    assert "changed 0 thing(s)" in run()
    dry = run("--dry-run", "--grace", "0")
    assert "would tag_orphan version 2" in dry and "would fail_run" in dry, dry
    assert not client.get_model_version(settings.model_name, "2").tags  # nothing changed
    assert client.get_run(running[0].info.run_id).info.status == "RUNNING"

    out = run("--grace", "0")
    print("\nreconcile:\n" + out)
    assert "tag_orphan version 2" in out and "fail_run" in out
    _assert_no_debris(settings, engine)
    assert client.get_run(running[0].info.run_id).info.status == "FAILED"
    assert "changed 0 thing(s)" in run("--grace", "0")  # idempotent


def test_monitoring_flow_runs_the_reconcile_step(
    prefect_harness: None,
    make_settings: Callable[..., Settings],
    mlflow_server: str,
    database_url: str,
    engine: Engine,
) -> None:
    from ia_continu.flows import flow_settings, monitoring_flow
    from ia_continu.ml.data import generate_dataset
    from ia_continu.ml.train import train_model

    settings = make_settings(
        database_url=database_url,
        mlflow_tracking_uri=mlflow_server,
        mlflow_reconcile_grace=0,
        mlflow_deadline=ROOMY,
    )
    _train(settings, engine, hour=2, seed=1)
    # Debris as a failed retrain leaves it: a registered version no row knows, a run
    # still RUNNING.
    result = train_model(
        generate_dataset(300, hour=2, seed=5),
        hyperparameters=lifecycle.hyperparameters_from(settings),
    )
    stray = training_runs.log_training_run(
        settings=settings, result=result, generation_id=1, now=FIXED_NOW, alias=None
    )
    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    left = client.create_run(experiment.experiment_id, run_name="left_running")

    with (
        LiveServer(_create_app(settings)) as server,
        flow_settings(settings.model_copy(update={"api_url": server.url})),
    ):
        state = asyncio.run(monitoring_flow(hour=4, return_state=True))
    assert state.is_completed()
    mv = client.get_model_version(settings.model_name, str(stray.registry_version))
    assert mv.tags.get(registry.ORPHAN_TAG) == "true"
    assert client.get_run(left.info.run_id).info.status == "FAILED"
    _assert_no_debris(settings, engine)


def _create_app(settings: Settings) -> Any:
    from ia_continu.api.app import create_app

    return create_app(settings, clock=lambda: FIXED_NOW)


def _predict_version(url: str) -> str:
    r = httpx.post(f"{url}/predict", json={"features": [0.3, -0.2]}, timeout=30)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def _champion(settings: Settings) -> int:
    return int(
        _client(settings).get_model_version_by_alias(settings.model_name, "champion").version
    )
