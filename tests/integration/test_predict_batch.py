"""POST /predict/batch: same model and validation as /predict, rows in parallel arrays."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pytest

from ia_continu.config import Settings


@pytest.fixture
def database_url(tmp_path: Any) -> str:  # the batch route does not touch the database
    return f"sqlite:///{tmp_path / 'ia.db'}"


def _train(client: Any) -> dict[str, Any]:
    assert client.post("/generate", json={"samples": 2000, "hour": 2, "seed": 5}).status_code == 200
    r = client.post("/retrain")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _post_raw(client: Any, raw: bytes | str) -> Any:
    return client.post("/predict/batch", content=raw, headers={"content-type": "application/json"})


def test_predict_batch_equals_registered_sklearn_model(client: Any, settings: Settings) -> None:
    import mlflow.sklearn

    trained = _train(client)
    rng = np.random.default_rng(11)
    rows = np.concatenate(
        [rng.normal(0, 2, (9_000, 2)), rng.normal(0, 60, (990, 2)), np.zeros((10, 2))]
    )
    r = _post_raw(client, orjson.dumps({"instances": rows.tolist()}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "predictions",
        "confidences",
        "model_version",
        "timestamp",
        "prediction_ids",
    }
    assert body["model_version"] == trained["model_version"]
    assert len(body["predictions"]) == len(body["confidences"]) == 10_000

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    estimator = mlflow.sklearn.load_model(f"models:/{settings.model_name}@champion")
    proba = estimator.predict_proba(rows)
    np.testing.assert_array_equal(body["predictions"], estimator.predict(rows))
    np.testing.assert_allclose(body["confidences"], proba.max(axis=1), rtol=0, atol=1e-12)


def test_predict_batch_rows_equal_single_predictions(client: Any) -> None:
    _train(client)
    rows = [[0.0, 0.0], [0.3, -0.7], [-2.0, 1.5], [4.0, 4.0], [1e6, -1e6]]
    batch = client.post("/predict/batch", json={"instances": rows}).json()
    for i, row in enumerate(rows):
        single = client.post("/predict", json={"features": row}).json()
        assert batch["predictions"][i] == single["prediction"]
        assert batch["confidences"][i] == single["confidence"]


def test_predict_batch_accepts_one_row(client: Any) -> None:
    _train(client)
    r = client.post("/predict/batch", json={"instances": [[5, 5]]})
    assert r.status_code == 200
    assert r.json()["predictions"] == [1]


def test_predict_batch_without_model_is_503(client: Any) -> None:
    r = client.post("/predict/batch", json={"instances": [[0.1, 0.2]]})
    assert r.status_code == 503
    assert "/retrain" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"instances": []}, ["body", "instances"]),
        ({"instances": [[0.0, 0.0]] * 10_001}, ["body", "instances"]),
        ({"instances": [[1.0, 2.0], [1.0, 2.0, 3.0]]}, ["body", "instances", 1]),
        ({"instances": [[1.0]]}, ["body", "instances", 0]),
        ({"instances": [["a", 2.0]]}, ["body", "instances", 0, 0]),
        ({"instances": [[1.0, None]]}, ["body", "instances", 0, 1]),
        ({"instances": [1.0, 2.0]}, ["body", "instances", 0]),
        ({"instances": "rows"}, ["body", "instances"]),
        ({}, ["body", "instances"]),
        ({"instances": [[1.0, 2.0]], "extra": 1}, ["body", "extra"]),
        ([[1.0, 2.0]], ["body"]),
    ],
)
def test_predict_batch_rejects_bad_input_naming_field(
    client: Any, body: Any, loc: list[Any]
) -> None:
    r = client.post("/predict/batch", json=body)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail
    assert detail[0]["loc"] == loc


@pytest.mark.parametrize(
    "raw",
    [
        '{"instances": [[1, 2], [NaN, 1]]}',
        '{"instances": [[1, 2], [1, Infinity]]}',
        '{"instances": [[1e400, 1]]}',
    ],
)
def test_predict_batch_rejects_non_finite_numbers(client: Any, raw: str) -> None:
    r = _post_raw(client, raw)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][:2] == ["body", "instances"]


@pytest.mark.parametrize("raw", ["{not json", "", "   "])
def test_predict_batch_malformed_or_empty_body_is_422(client: Any, raw: str) -> None:
    r = _post_raw(client, raw)
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"][0] == "body"


def test_predict_batch_is_documented_with_its_schema(client: Any) -> None:
    spec = client.get("/openapi.json").json()
    for path, field in (("/predict/batch", "instances"), ("/predict", "features")):
        body = spec["paths"][path]["post"]["requestBody"]
        schema = body["content"]["application/json"]["schema"]
        assert body["required"] is True
        assert schema["required"] == [field]
        assert schema["additionalProperties"] is False
    responses = spec["paths"]["/predict/batch"]["post"]["responses"]
    assert {"200", "422", "503"} <= set(responses)


def test_predict_batch_counts_each_prediction_in_metrics(client: Any) -> None:
    from tests.integration.test_metrics import parse_metrics, sample_value

    trained = _train(client)
    rows = np.random.default_rng(2).normal(0, 2, (500, 2)).tolist()
    predicted = client.post("/predict/batch", json={"instances": rows}).json()["predictions"]
    m = parse_metrics(client.get("/metrics").text)
    version = trained["model_version"]
    for cls in (0, 1):
        got = sample_value(m, "ia_predictions_total", model_version=version, prediction=str(cls))
        assert got == predicted.count(cls)


def test_prediction_routes_are_tried_first_and_documented_once(client: Any) -> None:
    paths = [getattr(route, "path", None) for route in client.app.router.routes]
    assert paths[:3] == ["/predict", "/predict/batch", "/health"]
    spec = client.get("/openapi.json").json()
    operation_ids = [op["operationId"] for item in spec["paths"].values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert client.get("/predict").status_code == 405  # method rules unchanged


def test_predict_batch_logs_every_row_like_predict(make_settings: Any, database_url: str) -> None:
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app
    from ia_continu.db import predictions as db_predictions
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from tests.integration.test_prediction_log import _seed_model

    engine = create_db_engine(database_url)
    upgrade_database(engine)
    _seed_model(engine)
    settings = make_settings(database_url=database_url, prediction_log_flush_interval=3600)
    rows = np.random.default_rng(4).normal(0, 2, (300, 2)).tolist()
    with TestClient(create_app(settings)) as client:
        answer = client.post("/predict/batch", json={"instances": rows}).json()
        assert client.app.state.ia.predlog.counters().queued == 300
    stored = db_predictions.list_recent_predictions(engine, limit=1000)
    engine.dispose()
    got = sorted((r.feature1, r.feature2, r.prediction, round(r.confidence, 12)) for r in stored)
    expected = sorted(
        (f[0], f[1], p, round(c, 12))
        for f, p, c in zip(rows, answer["predictions"], answer["confidences"], strict=True)
    )
    assert got == expected
    assert {r.created_at for r in stored} == {datetime.fromisoformat(answer["timestamp"])}
    assert {r.model_version for r in stored} == {answer["model_version"]}
