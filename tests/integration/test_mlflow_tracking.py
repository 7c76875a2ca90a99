"""/retrain against a real `mlflow server`: experiment, run, params, metrics, registry, alias."""

from __future__ import annotations

import re
from typing import Any

import pytest
from mlflow import MlflowClient

from ia_continu.config import Settings


@pytest.fixture
def database_url(tmp_path: Any) -> str:  # MLflow behaviour does not depend on the database
    return f"sqlite:///{tmp_path / 'ia.db'}"


def test_retrain_logs_run_params_metrics_and_registers_champion(
    client: Any, settings: Settings
) -> None:
    client.post("/generate", json={"samples": 1000, "hour": 2, "seed": 4})
    body = client.post("/retrain").json()
    ml = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)

    experiment = ml.get_experiment_by_name(settings.mlflow_experiment)
    assert experiment is not None
    run = ml.get_run(body["run_id"])
    assert run.info.experiment_id == experiment.experiment_id
    assert re.fullmatch(r"retrain_\d{8}_\d{6}(_\d+)?", run.info.run_name)
    assert run.info.run_name == body["run_name"]
    params = run.data.params
    assert params["C"] == str(settings.model_c)
    assert params["solver"] == settings.model_solver
    assert params["max_iter"] == str(settings.model_max_iter)
    assert params["training_samples"] == "800"
    assert params["test_samples"] == "200"
    assert params["generation_id"] == str(body["generation_id"])
    metrics = run.data.metrics
    assert set(metrics) >= {"accuracy", "precision", "recall", "f1_score"}
    assert metrics["accuracy"] == pytest.approx(body["accuracy"])

    version = ml.get_model_version_by_alias(settings.model_name, "champion")
    assert f"v{version.version}" == body["model_version"]
    assert version.run_id == body["run_id"]
    assert version.status == "READY"


def test_retrain_run_names_unique_within_one_second(client: Any, settings: Settings) -> None:
    client.post("/generate", json={"samples": 300, "seed": 1})
    names = {client.post("/retrain").json()["run_name"] for _ in range(3)}
    # The test clock is frozen: all three retrains happen "in the same second".
    assert names == {
        "retrain_20260115_103000",
        "retrain_20260115_103000_2",
        "retrain_20260115_103000_3",
    }


def test_retrain_moves_champion_alias_to_new_version(client: Any, settings: Settings) -> None:
    client.post("/generate", json={"samples": 300, "seed": 1})
    first = client.post("/retrain").json()
    second = client.post("/retrain").json()
    ml = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    champion = ml.get_model_version_by_alias(settings.model_name, "champion")
    assert f"v{champion.version}" == second["model_version"] != first["model_version"]


def test_registered_model_loads_and_agrees_with_served_model(
    client: Any, settings: Settings
) -> None:
    import mlflow.sklearn
    import numpy as np

    client.post("/generate", json={"samples": 500, "seed": 2})
    body = client.post("/retrain").json()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    loaded = mlflow.sklearn.load_model(f"models:/{settings.model_name}@champion")
    x = np.array([[0.3, -0.7], [1.0, 2.0], [-2.0, 0.1]])
    served = client.app.state.ia.model
    assert served.version == body["model_version"]
    np.testing.assert_allclose(loaded.predict_proba(x)[:, 1], served.predict_proba(x), atol=1e-12)


def test_retrain_with_mlflow_down_is_503_and_keeps_active_model(
    client: Any, settings: Settings
) -> None:
    client.post("/generate", json={"samples": 300, "seed": 1})
    first = client.post("/retrain").json()
    state = client.app.state.ia
    state.settings = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    r = client.post("/retrain")
    assert r.status_code == 503
    assert "unchanged" in r.json()["detail"]
    assert client.get("/models").json()["active_version"] == first["model_version"]
    assert (
        client.post("/predict", json={"features": [1, 1]}).json()["model_version"]
        == (first["model_version"])
    )
