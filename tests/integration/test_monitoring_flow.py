"""The Prefect monitoring flow end to end: a real MLflow server, a real API (uvicorn on
loopback) for /health and serving, Prefect's test harness, a loopback Discord stub."""

from __future__ import annotations

import asyncio
import logging
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
from ia_continu.db import monitoring_runs as db_runs
from ia_continu.ml.data import generate_dataset
from ia_continu.services import lifecycle
from tests.conftest import LiveServer, free_port
from tests.integration.discord_stub import WEBHOOK_PATH, DiscordStub

pytestmark = pytest.mark.slow

CHAMPION_HOUR = 2  # even: the champion is trained on unshifted data


@pytest.fixture
def stub() -> Iterator[DiscordStub]:
    with DiscordStub() as s:
        yield s


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], tmp_path: Path, mlflow_server: str, stub: DiscordStub
) -> Settings:
    # The flow's behaviour does not depend on the database engine (the repository tests
    # cover PostgreSQL through the monitoring routes).
    return make_settings(
        database_url=f"sqlite:///{tmp_path / 'ia.db'}",
        mlflow_tracking_uri=mlflow_server,
        discord_webhook_url=stub.url,
        discord_timeout=0.5,
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database

    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def champion(settings: Settings, engine: Engine) -> db_models.ModelRecord:
    """v1, trained on an even-hour dataset and served."""
    dataset = generate_dataset(1000, hour=CHAMPION_HOUR, seed=1)
    record = db_datasets.insert_dataset(engine, dataset, created_at=datetime.now(UTC), seed=1)
    outcome = lifecycle.retrain(
        settings=settings, engine=engine, generation_id=record.generation_id
    )
    return outcome.record


@pytest.fixture
def api(champion: db_models.ModelRecord, live_server: LiveServer) -> LiveServer:
    assert _served_version(live_server.url) == champion.version
    return live_server


@pytest.fixture
def flow_settings(settings: Settings, api: LiveServer) -> Settings:
    return settings.model_copy(update={"api_url": api.url})


def _served_version(url: str) -> str:
    r = httpx.post(f"{url}/predict", json={"features": [0.1, 0.2]}, timeout=5)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def _run_flow(settings: Settings, **params: Any) -> Any:
    """One flow run; returns its final Prefect state."""
    from ia_continu.flows import flow_settings, monitoring_flow

    with flow_settings(settings):
        return asyncio.run(monitoring_flow(**params, return_state=True))


def _add_batch(engine: Engine, *, hour: int, seed: int, samples: int = 1000) -> int:
    dataset = generate_dataset(samples, hour=hour, seed=seed)
    return db_datasets.insert_dataset(
        engine, dataset, created_at=datetime.now(UTC), seed=seed
    ).generation_id


def _fields(embed: dict[str, Any]) -> dict[str, str]:
    return {f["name"]: f["value"] for f in embed["fields"]}


def _wait_served(url: str, version: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _served_version(url) != version:
        assert time.monotonic() < deadline, f"{version} not served"
        time.sleep(0.05)


def test_monitoring_flow_same_parity_takes_no_action(
    prefect_harness: None,
    flow_settings: Settings,
    engine: Engine,
    champion: db_models.ModelRecord,
    stub: DiscordStub,
) -> None:
    generation_id = _add_batch(engine, hour=CHAMPION_HOUR + 2, seed=2)  # arrived via /generate

    state = _run_flow(flow_settings)

    assert state.is_completed()
    run = db_runs.get_latest_monitoring_run(engine)
    assert run is not None
    assert (run.status, run.decision, run.drift_detected) == ("ok", "none", False)
    assert run.generation_id == generation_id and run.hour_generated == CHAMPION_HOUR + 2
    assert run.champion_version == champion.version
    assert run.reference_accuracy == pytest.approx(champion.accuracy)
    assert run.accuracy is not None and run.accuracy > 0.85
    assert run.drift is not None and set(run.drift) == {"feature1", "feature2"}
    assert all(d["ks_p_value"] >= flow_settings.drift_p_value for d in run.drift.values())
    assert run.new_version is None and run.error is None
    assert run.flow_run_id == str(state.state_details.flow_run_id)
    assert run.mlflow_run_id is not None
    assert db_models.get_active_version(engine) == champion.version
    assert [m.version for m in db_models.list_models(engine)] == [champion.version]
    # Green embed, "non" for drift.
    (embed,) = stub.embeds()
    assert embed["title"] == "Résultats du pipeline"
    assert embed["color"] == 0x2ECC71
    fields = _fields(embed)
    assert "ok" in fields["Status"] and fields["Drift"].startswith("non")
    assert fields["Model version"] == champion.version
    # The next run has no fresh data: it generates its own batch, marked as such.
    state = _run_flow(flow_settings, hour=CHAMPION_HOUR)
    assert state.is_completed()
    second = db_runs.get_latest_monitoring_run(engine)
    assert second is not None and second.generation_id is not None
    assert second.generation_id > generation_id
    record = db_datasets.get_dataset_record(engine, second.generation_id)
    assert record is not None and record.source == "monitor"
    assert record.samples_count == flow_settings.monitor_batch_size


def test_monitoring_flow_other_parity_detects_drift_retrains_promotes_and_notifies(
    prefect_harness: None,
    flow_settings: Settings,
    engine: Engine,
    champion: db_models.ModelRecord,
    api: LiveServer,
    stub: DiscordStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)

    state = _run_flow(flow_settings, hour=CHAMPION_HOUR + 1, samples=1000)

    assert state.is_completed()
    run = db_runs.get_latest_monitoring_run(engine)
    assert run is not None
    assert (run.status, run.decision, run.drift_detected) == ("drift", "promoted", True)
    assert run.hour_generated == CHAMPION_HOUR + 1 and run.batch_samples == 1000
    assert run.drift is not None
    assert run.drift["feature1"]["ks_p_value"] < 1e-6
    assert run.drift["feature1"]["psi"] > 0.1
    assert run.accuracy is not None and run.reference_accuracy is not None
    assert run.accuracy < run.reference_accuracy - flow_settings.max_accuracy_drop
    assert "feature1 KS p-value" in (run.reason or "")
    assert run.new_version is not None and run.new_version != champion.version
    assert run.new_accuracy is not None and run.champion_accuracy_on_holdout is not None
    assert run.new_accuracy > run.champion_accuracy_on_holdout
    # The new champion everywhere: database, MLflow alias, and the running API.
    assert db_models.get_active_version(engine) == run.new_version
    ml = MlflowClient(tracking_uri=flow_settings.mlflow_tracking_uri)
    promoted = ml.get_model_version_by_alias(flow_settings.model_name, "champion")
    assert f"v{promoted.version}" == run.new_version
    assert "challenger" not in promoted.aliases
    assert ml.get_run(promoted.run_id).info.run_name.startswith("retrain_")
    _wait_served(api.url, run.new_version)  # no restart: the API's watcher picked it up
    # The run's own figures are in MLflow.
    assert run.mlflow_run_id is not None
    logged = ml.get_run(run.mlflow_run_id).data
    assert logged.metrics["accuracy"] == pytest.approx(run.accuracy)
    assert logged.metrics["promoted"] == 1.0
    assert logged.params["decision"] == "promoted"
    # One orange embed with the statistics, accuracies, versions and the MLflow link.
    assert len(stub.received) == 1 and stub.received[0].path == WEBHOOK_PATH
    (embed,) = stub.embeds()
    assert embed["title"] == "Résultats du pipeline"
    assert embed["color"] == 0xE67E22
    fields = _fields(embed)
    assert "drift" in fields["Status"]
    assert fields["Drift"].startswith("oui")
    assert "feature1: KS=" in fields["Drift"] and "PSI=" in fields["Drift"]
    assert fields["Accuracy"].startswith(f"{run.accuracy:.4f} → {run.new_accuracy:.4f}")
    assert fields["Model version"] == f"{champion.version} → {run.new_version}"
    assert "promu" in fields["Decision"]
    assert run.mlflow_run_id in fields["MLflow"] and run.mlflow_run_id in embed["url"]
    assert embed["url"].startswith(flow_settings.mlflow_ui_url)
    # The webhook's token is a secret.
    assert WEBHOOK_PATH.rsplit("/", 1)[1] not in caplog.text


def test_monitoring_flow_worse_challenger_is_not_promoted_and_keeps_challenger_alias(
    prefect_harness: None,
    flow_settings: Settings,
    engine: Engine,
    champion: db_models.ModelRecord,
    api: LiveServer,
    stub: DiscordStub,
) -> None:
    # A challenger with almost no capacity (C=1e-6: coefficients ~0) predicts one class.
    weak = flow_settings.model_copy(update={"model_c": 1e-6})

    state = _run_flow(weak, hour=CHAMPION_HOUR + 1)

    assert state.is_completed()
    run = db_runs.get_latest_monitoring_run(engine)
    assert run is not None
    assert (run.status, run.decision) == ("drift", "kept_champion")
    assert run.new_version is not None
    assert run.new_accuracy is not None and run.champion_accuracy_on_holdout is not None
    assert run.new_accuracy < run.champion_accuracy_on_holdout
    assert db_models.get_active_version(engine) == champion.version
    ml = MlflowClient(tracking_uri=flow_settings.mlflow_tracking_uri)
    assert f"v{ml.get_model_version_by_alias(weak.model_name, 'challenger').version}" == (
        run.new_version
    )
    assert f"v{ml.get_model_version_by_alias(weak.model_name, 'champion').version}" == (
        champion.version
    )
    assert _served_version(api.url) == champion.version
    fields = _fields(stub.embeds()[0])
    assert fields["Model version"] == f"{champion.version} (challenger {run.new_version})"
    assert "conservé" in fields["Decision"]


@pytest.mark.parametrize(
    ("responses", "expected_requests", "delivered"),
    [
        pytest.param([(500, {"message": "boom"}, 0)] * 3, 3, False, id="500"),
        pytest.param([(429, {"retry_after": 0.2}, 0)], 2, True, id="429"),
        pytest.param([(204, None, 2.0)] * 3, 3, False, id="timeout"),
    ],
)
def test_monitoring_flow_webhook_failure_changes_no_decision(
    prefect_harness: None,
    flow_settings: Settings,
    engine: Engine,
    champion: db_models.ModelRecord,
    stub: DiscordStub,
    responses: list[tuple[int, dict[str, Any] | None, float]],
    expected_requests: int,
    delivered: bool,
) -> None:
    stub.script(*responses)

    state = _run_flow(flow_settings, hour=CHAMPION_HOUR + 1)

    assert state.is_completed()
    run = db_runs.get_latest_monitoring_run(engine)
    assert run is not None
    assert (run.status, run.decision) == ("drift", "promoted")
    assert db_models.get_active_version(engine) == run.new_version
    assert len(stub.received) == expected_requests
    if delivered:
        assert stub.received[1].at - stub.received[0].at >= 0.15  # retry_after honoured


def test_monitoring_flow_api_down_records_failed_run_and_ends_failed(
    prefect_harness: None,
    settings: Settings,
    engine: Engine,
    champion: db_models.ModelRecord,
    stub: DiscordStub,
) -> None:
    down = settings.model_copy(update={"api_url": f"http://127.0.0.1:{free_port()}"})

    state = _run_flow(down, hour=CHAMPION_HOUR + 1)

    assert state.is_failed()
    run = db_runs.get_latest_monitoring_run(engine)
    assert run is not None
    assert (run.status, run.decision) == ("failed", "failed")
    assert "ApiUnavailableError" in (run.error or "")
    assert run.generation_id is None  # stopped at step 1: no batch, no retrain
    assert run.champion_version == champion.version
    assert [m.version for m in db_models.list_models(engine)] == [champion.version]
    (embed,) = stub.embeds()
    assert embed["color"] == 0xE74C3C
    fields = _fields(embed)
    assert "failed" in fields["Status"] and "ApiUnavailableError" in fields["Decision"]
    assert fields["Model version"] == champion.version
