"""The retrain's MLflow records are those of ``mlflow.sklearn.log_model`` in MLflow 3
(logged in fewer round trips): run, logged model, metrics, registered version, links."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mlflow import MlflowClient

from ia_continu.config import Settings


@pytest.fixture
def database_url(tmp_path: Any) -> str:  # MLflow behaviour does not depend on the database
    return f"sqlite:///{tmp_path / 'ia.db'}"


def test_retrain_records_logged_model_linked_to_run_and_version(
    client: Any, settings: Settings
) -> None:
    client.post("/generate", json={"samples": 1000, "hour": 2, "seed": 4})
    body = client.post("/retrain").json()
    ml = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)

    run = ml.get_run(body["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.runName"] == body["run_name"]
    assert "mlflow.user" in run.data.tags and "mlflow.source.type" in run.data.tags
    outputs = run.outputs.model_outputs
    assert len(outputs) == 1
    model_id = outputs[0].model_id

    logged = ml.get_logged_model(model_id)
    assert logged.status.to_proto() == logged.status.READY.to_proto()
    assert logged.name == "model"
    assert logged.source_run_id == body["run_id"]
    assert logged.params["generation_id"] == str(body["generation_id"])
    assert logged.params["training_samples"] == "800"
    model_metrics = {m.key: m.value for m in logged.metrics or []}
    assert model_metrics["accuracy"] == pytest.approx(body["accuracy"])
    assert set(model_metrics) == {"accuracy", "precision", "recall", "f1_score"}
    assert logged.tags["mlflow.user"] == run.data.tags["mlflow.user"]
    linked = json.loads(logged.tags["mlflow.modelVersions"])  # set by the server
    assert [(v["name"], str(v["version"])) for v in linked] == [
        (settings.model_name, body["model_version"][1:])
    ]
    artifacts = {f.path for f in ml.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "model.skops", "requirements.txt"} <= artifacts

    import mlflow
    from mlflow.models import Model

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlmodel = Model.load(f"models:/{settings.model_name}/{body['model_version'][1:]}")
    assert (mlmodel.model_id, mlmodel.run_id) == (model_id, body["run_id"])
    assert mlmodel.artifact_path == logged.artifact_location
    assert mlmodel.flavors["sklearn"]["serialization_format"] == "skops"
    assert mlmodel.signature is not None

    version = ml.get_model_version(settings.model_name, body["model_version"][1:])
    assert version.source == f"models:/{model_id}"
    assert version.run_id == body["run_id"]
    # Each metric is stored once, not once per run and again per model.
    assert len(ml.get_metric_history(body["run_id"], "accuracy")) == 1


def test_retrain_reports_each_step_duration(client: Any, settings: Settings) -> None:
    from ia_continu.services import lifecycle

    client.post("/generate", json={"samples": 500, "hour": 2, "seed": 4})
    outcome = lifecycle.retrain(settings=settings, engine=client.app.state.ia.engine)
    assert set(outcome.timings) == {
        "warm_up_wait",
        "load_data",
        "fit",
        "metrics",
        "mlflow",
        "mlflow_run",
        "mlflow_model_log",
        "mlflow_registration",
        "mlflow_alias",
        "mlflow_finish",
        "activation",
    }
    assert all(v >= 0 for v in outcome.timings.values())
    steps = sum(v for k, v in outcome.timings.items() if k.startswith("mlflow_"))
    assert steps <= outcome.timings["mlflow"]


def test_retrain_answers_server_timing_header(client: Any) -> None:
    client.post("/generate", json={"samples": 500, "hour": 2, "seed": 4})
    r = client.post("/retrain")
    assert r.status_code == 200
    steps = dict(part.strip().split(";dur=") for part in r.headers["server-timing"].split(","))
    assert {"load_data", "fit", "metrics", "mlflow", "activation"} <= set(steps)
    assert all(float(ms) >= 0 for ms in steps.values())
