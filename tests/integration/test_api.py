"""Every route of the seed's contract, its statuses and errors, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any

import pytest

ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")


def _is_iso(value: str) -> bool:
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return bool(ISO.match(value))


def _train(client: Any, *, samples: int = 1000, hour: int = 2, seed: int = 1) -> dict[str, Any]:
    r = client.post("/generate", json={"samples": samples, "hour": hour, "seed": seed})
    assert r.status_code == 200, r.text
    r = client.post("/retrain")
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_health_returns_ok_with_version(client: Any) -> None:
    r = client.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["version"] == "2.0.0"
    assert _is_iso(body["timestamp"])


def test_generate_stores_dataset_with_seed_contract(client: Any) -> None:
    from ia_continu.db import datasets as db_datasets

    r = client.post("/generate", json={"samples": 250})
    assert r.status_code == 200
    body = r.json()
    assert set(body) >= {"generation_id", "samples_created", "timestamp"}
    assert body["samples_created"] == 250
    assert _is_iso(body["timestamp"])
    engine = client.app.state.ia.engine
    assert db_datasets.count_samples(engine, body["generation_id"]) == 250
    record = db_datasets.get_dataset_record(engine, body["generation_id"])
    assert record is not None and record.samples_count == 250
    # The fixed test clock says 10:30 UTC (even hour) and IA_TIMEZONE=UTC.
    assert record.hour_generated == 10


def test_generate_defaults_to_1000_samples(client: Any) -> None:
    r = client.post("/generate")
    assert r.status_code == 200
    assert r.json()["samples_created"] == 1000
    r2 = client.post("/generate", json={})
    assert r2.json()["generation_id"] > r.json()["generation_id"]


def test_generate_hour_override_applies_drift_rule(client: Any) -> None:

    from ia_continu.db import datasets as db_datasets

    engine = client.app.state.ia.engine
    even = client.post("/generate", json={"samples": 500, "seed": 3, "hour": 4}).json()
    odd = client.post("/generate", json={"samples": 500, "seed": 3, "hour": 5}).json()
    a = db_datasets.load_dataset(engine, even["generation_id"])
    b = db_datasets.load_dataset(engine, odd["generation_id"])
    assert a is not None and b is not None
    assert (a.hour, b.hour) == (4, 5)
    assert float((a.feature1 - b.feature1).mean()) == pytest.approx(0.5)
    assert (a.target == b.target).all()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"samples": 99}, "samples"),
        ({"samples": 10001}, "samples"),
        ({"samples": "many"}, "samples"),
        ({"samples": 1.5}, "samples"),
        ({"samples": 500, "hour": 24}, "hour"),
        ({"samples": 500, "seed": -1}, "seed"),
        ({"sample": 500}, "sample"),
    ],
)
def test_generate_rejects_bad_input_naming_field(
    client: Any, body: dict[str, Any], field: str
) -> None:
    r = client.post("/generate", json=body)
    assert r.status_code == 422
    assert field in str(r.json()["detail"])


def test_predict_without_model_is_503_with_guidance(client: Any) -> None:
    r = client.post("/predict", json={"features": [0.1, 0.2]})
    assert r.status_code == 503
    assert "/generate" in r.json()["detail"] and "/retrain" in r.json()["detail"]


def test_retrain_without_dataset_is_409(client: Any) -> None:
    r = client.post("/retrain")
    assert r.status_code == 409
    assert "generate" in r.json()["detail"]


def test_retrain_unknown_generation_is_404(client: Any) -> None:
    client.post("/generate", json={"samples": 200})
    r = client.post("/retrain", json={"generation_id": 999})
    assert r.status_code == 404
    assert "999" in r.json()["detail"]


def test_retrain_then_predict_follows_contract(client: Any) -> None:
    trained = _train(client)
    assert trained["status"] == "success"
    assert trained["model_version"] == "v1"
    assert trained["training_samples"] == 800
    assert trained["test_samples"] == 200
    assert 0.8 < trained["accuracy"] <= 1.0
    assert _is_iso(trained["timestamp"])
    r = client.post("/predict", json={"features": [1.5, 0.3]})
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"prediction", "model_version", "confidence", "timestamp", "prediction_id"}
    assert body["prediction"] in (0, 1)
    assert body["model_version"] == "v1"
    assert 0.5 <= body["confidence"] <= 1.0
    assert _is_iso(body["timestamp"])
    # Far on either side of the boundary the answer is certain.
    assert client.post("/predict", json={"features": [5, 5]}).json()["prediction"] == 1
    assert client.post("/predict", json={"features": [-5, -5]}).json()["prediction"] == 0


def test_retrain_confidence_is_probability_of_predicted_class(client: Any) -> None:
    _train(client)
    model = client.app.state.ia.model
    for x in ([0.0, 0.0], [0.3, -0.2], [-1.0, 2.0]):
        body = client.post("/predict", json={"features": x}).json()
        p1 = 1 / (1 + math.exp(-(model.coef[0] * x[0] + model.coef[1] * x[1] + model.intercept)))
        assert body["confidence"] == pytest.approx(max(p1, 1 - p1), abs=1e-12)


def test_retrain_one_class_dataset_is_422_and_changes_nothing(client: Any) -> None:
    import numpy as np

    from ia_continu.db import datasets as db_datasets
    from ia_continu.db import models as db_models
    from ia_continu.ml.data import Dataset

    _train(client)
    engine = client.app.state.ia.engine
    one_class = Dataset(features=np.zeros((200, 2)), target=np.ones(200, dtype=np.int64), hour=2)
    rec = db_datasets.insert_dataset(engine, one_class, created_at=datetime.now().astimezone())
    r = client.post("/retrain", json={"generation_id": rec.generation_id})
    assert r.status_code == 422
    assert "class" in r.json()["detail"]
    assert db_models.get_active_version(engine) == "v1"
    assert client.post("/predict", json={"features": [1, 1]}).json()["model_version"] == "v1"


@pytest.mark.parametrize(
    "body",
    [
        {"features": [1.0]},
        {"features": [1.0, 2.0, 3.0]},
        {"features": ["a", 2.0]},
        {"features": None},
        {},
        {"features": [1.0, 2.0], "extra": 1},
    ],
)
def test_predict_rejects_bad_input_naming_field(client: Any, body: dict[str, Any]) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    detail = str(r.json()["detail"])
    assert "features" in detail or "extra" in detail


@pytest.mark.parametrize(
    "raw", ['{"features": [NaN, 1]}', '{"features": [Infinity, 1]}', '{"features": [1e400, 1]}']
)
def test_predict_rejects_non_finite_numbers(client: Any, raw: str) -> None:
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "features" in str(r.json()["detail"])


def test_malformed_json_is_422(client: Any) -> None:
    for route in ("/predict", "/generate", "/retrain", "/evaluate"):
        r = client.post(route, content="{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422, route


def test_evaluate_summarises_active_model_on_dataset(client: Any) -> None:
    _train(client, hour=2)
    same = client.post("/generate", json={"samples": 2000, "hour": 4, "seed": 8}).json()
    other = client.post("/generate", json={"samples": 2000, "hour": 5, "seed": 8}).json()
    r_same = client.post("/evaluate", json={"generation_id": same["generation_id"]})
    r_latest = client.post("/evaluate")
    assert r_same.status_code == 200 and r_latest.status_code == 200
    a, b = r_same.json(), r_latest.json()
    assert set(a) == {
        "generation_id",
        "samples",
        "model_version",
        "accuracy",
        "precision",
        "recall",
        "f1_score",
        "timestamp",
    }
    assert a["samples"] == 2000 and a["model_version"] == "v1"
    assert b["generation_id"] == other["generation_id"]
    assert a["accuracy"] - b["accuracy"] >= 0.05  # the odd-hour batch has drifted


def test_evaluate_errors(client: Any) -> None:
    assert client.post("/evaluate").status_code == 503  # no model
    _train(client)
    assert client.post("/evaluate", json={"generation_id": 12345}).status_code == 404


def test_models_lists_versions_and_active(client: Any) -> None:
    assert client.get("/models").json() == {
        "models": [],
        "active_version": None,
        # Paging (additive to the seed's two fields): docs/operations-disk.md.
        "total": 0,
        "limit": 50,
        "offset": 0,
        "active_model": None,
    }
    _train(client, seed=1)
    _train(client, seed=2)
    body = client.get("/models").json()
    assert body["active_version"] == "v2"
    versions = {m["version"]: m for m in body["models"]}
    assert set(versions) == {"v1", "v2"}
    assert versions["v2"]["is_active"] and not versions["v1"]["is_active"]
    for m in body["models"]:
        assert {
            "version",
            "accuracy",
            "training_samples",
            "created_at",
            "is_active",
            "precision",
            "recall",
            "f1_score",
            "generation_id",
        } <= set(m)
    assert sum(m["is_active"] for m in body["models"]) == 1


def test_docs_serves_openapi_ui(client: Any) -> None:
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/health", "/generate", "/predict", "/retrain", "/evaluate", "/models"} <= set(paths)


def test_unknown_route_is_json_404(client: Any) -> None:
    r = client.get("/nope")
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found"}
