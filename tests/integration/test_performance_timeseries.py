"""GET /predictions/performance/timeseries: realized accuracy per time bucket and model
version, against the same figures computed here from the rows (SQLite and PostgreSQL)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from ia_continu.api.app import create_app
from ia_continu.api.ids import new_prediction_ids
from ia_continu.config import Settings
from ia_continu.db import models as db_models
from ia_continu.db import predictions_insert as db_predictions_insert
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.ml.predictor import LinearModel

CHAMPION = LinearModel(version="v1", coef=(1.7, -0.9), intercept=0.2)


@pytest.fixture
def client(
    make_settings: Callable[..., Settings], database_url: str
) -> Iterator[tuple[TestClient, sa.Engine]]:
    engine = create_db_engine(database_url)
    upgrade_database(engine)
    db_models.insert_model(
        engine,
        db_models.ModelRecord(
            version="v1",
            accuracy=0.9,
            training_samples=800,
            created_at=datetime.now(UTC),
            is_active=True,
            parameters=CHAMPION.to_json(),
        ),
        activate=True,
    )
    settings = make_settings(database_url=database_url, warm_up_ml=False)
    with TestClient(create_app(settings)) as test_client:
        yield test_client, engine
    engine.dispose()


def test_buckets_match_the_rows(client: tuple[TestClient, sa.Engine]) -> None:
    http, engine = client
    rng = random.Random(3)
    x = [[rng.uniform(-3, 3), rng.uniform(-3, 3)] for _ in range(120)]
    # The first 60 predictions made two hours ago by v0, through the prediction writer
    # (it keeps the rollups): two buckets, two versions.
    old_us = (time.time_ns() // 1000) - 2 * 3600 * 1_000_000
    old_ids = new_prediction_ids(60, old_us)
    classes, confidences = CHAMPION.predict_batch(np.array(x[:60]))
    db_predictions_insert.insert_predictions(
        engine,
        [
            (old_us, x[i][0], x[i][1], int(classes[i]), float(confidences[i]), "v0",
             old_ids[i], None, None, None)
            for i in range(60)
        ],
    )  # fmt: skip
    body = http.post("/predict/batch", json={"instances": x[60:]}).json()
    ids = old_ids + body["prediction_ids"]
    served = [int(c) for c in classes] + body["predictions"]
    labels = [rng.randint(0, 1) for _ in ids]
    labelled = list(range(0, 120, 3))  # 40 labels, some perhaps before the v1 rows' flush
    items = [{"prediction_id": ids[i], "label": labels[i]} for i in labelled]
    assert http.post("/feedback", json={"items": items}).json()["stored"] == 40
    response = http.get("/predictions/performance/timeseries", params={"bucket_seconds": 3600})
    assert response.status_code == 200, response.text
    points = response.json()["points"]
    assert [pt["model_version"] for pt in points] == ["v0", "v1"]
    assert points[0]["t"] < points[1]["t"]
    for pt, rows in zip(points, (range(60), range(60, 120)), strict=True):
        mine = [i for i in rows if i in labelled]
        assert pt["served"] == 60 and pt["labelled"] == len(mine) == 20
        assert pt["coverage"] == pytest.approx(20 / 60)
        assert pt["accuracy"] == pytest.approx(sum(served[i] == labels[i] for i in mine) / 20)
    # A window without traffic: no points.
    empty = http.get(
        "/predictions/performance/timeseries",
        params={"since": "2026-01-01T00:00:00Z", "until": "2026-01-02T00:00:00Z"},
    )
    assert empty.status_code == 200 and empty.json()["points"] == []


def test_too_many_buckets_is_a_422_naming_the_field(
    client: tuple[TestClient, sa.Engine],
) -> None:
    http, _ = client
    response = http.get("/predictions/performance/timeseries", params={"bucket_seconds": 60})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "bucket_seconds"]
    response = http.get("/predictions/performance/timeseries", params={"bucket_seconds": 10})
    assert response.status_code == 422
