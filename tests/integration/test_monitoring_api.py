"""/monitoring routes on SQLite and PostgreSQL, against a real MLflow server; runs
execute in-process (no Prefect)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from ia_continu.db import monitoring_runs as db_runs
from ia_continu.db.tables import predictions
from tests.conftest import FIXED_NOW

RUN_FIELDS = {
    "id", "started_at", "finished_at", "duration_seconds", "status", "champion_version",
    "generation_id", "batch_samples", "hour_generated", "reference_accuracy", "accuracy",
    "precision", "recall", "f1_score", "drift", "live_drift", "drift_detected", "decision",
    "reason", "new_version", "new_accuracy", "champion_accuracy_on_holdout", "mlflow_run_id",
    "flow_run_id", "error", "data_source", "labelled_samples",
}  # fmt: skip


def _run(client: Any, body: dict[str, Any] | None = None) -> dict[str, Any]:
    r = (
        client.post("/monitoring/run", json=body)
        if body is not None
        else client.post("/monitoring/run")
    )
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_monitoring_latest_is_404_before_any_run(client: Any) -> None:
    r = client.get("/monitoring/latest")
    assert r.status_code == 404
    assert r.json() == {"detail": "no monitoring run yet"}
    r = client.get("/monitoring/history")
    assert r.json() == {"items": [], "total": 0, "limit": 20, "offset": 0}


def test_monitoring_run_bootstraps_then_detects_drift_and_promotes(client: Any) -> None:
    # No model yet: the first run trains one on its batch and serves it.
    first = _run(client, {"hour": 2, "samples": 500, "seed": 1})
    assert set(first) == RUN_FIELDS
    assert (first["status"], first["decision"]) == ("ok", "promoted")
    assert first["champion_version"] is None and first["new_version"] == "v1"
    assert first["batch_samples"] == 500 and first["hour_generated"] == 2
    assert first["flow_run_id"] is None  # in-process, not a Prefect flow run
    assert client.post("/predict", json={"features": [0.1, 0.2]}).json()["model_version"] == "v1"

    same = _run(client, {"hour": 4, "seed": 2})
    assert (same["status"], same["decision"], same["drift_detected"]) == ("ok", "none", False)
    assert same["champion_version"] == "v1"
    assert set(same["drift"]) == {"feature1", "feature2"}
    assert set(same["drift"]["feature1"]) == {"ks_statistic", "ks_p_value", "psi"}
    assert same["live_drift"] is None
    assert same["batch_samples"] == client.app.state.ia.settings.monitor_batch_size

    odd = _run(client, {"hour": 5, "seed": 3})
    assert (odd["status"], odd["decision"], odd["drift_detected"]) == ("drift", "promoted", True)
    assert odd["new_version"] == "v2"
    assert odd["new_accuracy"] >= odd["champion_accuracy_on_holdout"]
    # Served at once by this process, listed as active.
    assert client.post("/predict", json={"features": [0.1, 0.2]}).json()["model_version"] == "v2"
    assert client.get("/models").json()["active_version"] == "v2"

    latest = client.get("/monitoring/latest").json()
    assert latest == odd


def test_monitoring_history_is_paginated_newest_first(client: Any) -> None:
    ids = [_run(client, {"hour": 2, "samples": 200})["id"] for _ in range(3)]
    page = client.get("/monitoring/history", params={"limit": 2}).json()
    assert page["total"] == 3 and page["limit"] == 2 and page["offset"] == 0
    assert [i["id"] for i in page["items"]] == ids[::-1][:2]
    rest = client.get("/monitoring/history", params={"limit": 2, "offset": 2}).json()
    assert [i["id"] for i in rest["items"]] == [ids[0]]


def test_monitoring_run_uses_fresh_generated_data_then_generates(client: Any) -> None:
    _run(client, {"hour": 2, "samples": 500})  # champion v1
    gen = client.post("/generate", json={"samples": 300, "hour": 4, "seed": 9}).json()
    run = _run(client)
    assert run["generation_id"] == gen["generation_id"] and run["batch_samples"] == 300
    # Nothing new since: the next run generates a batch at the clock's hour.
    again = _run(client)
    assert again["generation_id"] > gen["generation_id"]
    assert again["hour_generated"] == FIXED_NOW.hour


def test_monitoring_run_compares_live_traffic_when_enough_is_logged(client: Any) -> None:
    from ia_continu.ml.data import generate_dataset

    _run(client, {"hour": 2, "samples": 1000, "seed": 11})  # champion v1 on even-hour data
    engine = client.app.state.ia.engine
    min_live = client.app.state.ia.settings.min_live_predictions
    live = generate_dataset(min_live, hour=3, seed=5)  # odd-hour inputs reach /predict
    with engine.begin() as conn:
        conn.execute(
            sa.insert(predictions),
            [
                {
                    "created_at": FIXED_NOW + timedelta(seconds=1),
                    "feature1": float(x1),
                    "feature2": float(x2),
                    "prediction": 1,
                    "confidence": 0.9,
                    "model_version": "v1",
                }
                for x1, x2 in live.features
            ],
        )
    run = _run(client, {"hour": 2, "seed": 12})
    assert run["live_drift"] is not None
    assert run["live_drift"]["feature1"]["ks_p_value"] < 1e-6
    assert run["live_drift"]["feature2"]["ks_p_value"] > 1e-3
    # Live drift is reported, not decisive: the labelled batch is of the same parity.
    assert run["decision"] == "none" and run["drift_detected"] is False


def test_monitoring_run_with_mlflow_down_records_a_failed_run(client: Any) -> None:
    state = client.app.state.ia
    _run(client, {"hour": 2, "samples": 300})
    state.settings = state.settings.model_copy(
        update={"mlflow_tracking_uri": "http://127.0.0.1:9", "mlflow_timeout": 1.0}
    )
    run = _run(client, {"hour": 3})
    assert (run["status"], run["decision"]) == ("failed", "failed")
    assert "MLflow" in run["error"]
    assert run["drift_detected"] is True  # measured before the retrain failed
    assert client.post("/predict", json={"features": [0.1, 0.2]}).json()["model_version"] == "v1"
    assert client.get("/monitoring/latest").json()["id"] == run["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hour": 24}, "hour"),
        ({"hour": -1}, "hour"),
        ({"samples": 99}, "samples"),
        ({"samples": 10_001}, "samples"),
        ({"hours": 3}, "hours"),
        ({"hour": "noon"}, "hour"),
    ],
)
def test_monitoring_run_rejects_bad_body_naming_the_field(
    client: Any, body: dict[str, Any], field: str
) -> None:
    r = client.post("/monitoring/run", json=body)
    assert r.status_code == 422
    assert any(e["loc"][-1] == field for e in r.json()["detail"])
    assert db_runs.count_monitoring_runs(client.app.state.ia.engine) == 0


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 501}, {"offset": -1}, {"limit": "x"}])
def test_monitoring_history_rejects_bad_pagination(client: Any, params: dict[str, Any]) -> None:
    assert client.get("/monitoring/history", params=params).status_code == 422
