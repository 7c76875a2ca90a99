"""Prediction logging through the API, /predictions/stats and /predictions/timeseries,
on SQLite and PostgreSQL. No MLflow needed: the served model is stored in the database
(as a retrain would leave it) before the app starts."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine

from ia_continu.api.app import create_app
from ia_continu.config import Settings
from ia_continu.db import models as db_models
from ia_continu.db import predictions as db_predictions
from ia_continu.db import predictions_insert as db_predictions_insert
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.ml.predictor import LinearModel
from tests.conftest import FIXED_NOW, LiveServer

MODEL = LinearModel(version="v1", coef=(1.7, -0.9), intercept=0.2)


def _seed_model(engine: Engine, model: LinearModel = MODEL) -> None:
    db_models.insert_model(
        engine,
        db_models.ModelRecord(
            version=model.version,
            accuracy=0.9,
            training_samples=800,
            created_at=FIXED_NOW,
            is_active=True,
            parameters=model.to_json(),
        ),
        activate=True,
    )


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    upgrade_database(engine)
    _seed_model(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def app_settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    # One-hour flush interval: rows reach the database only when a test (or the shutdown,
    # or a stats read) flushes, so the assertions do not depend on timing.
    return make_settings(database_url=database_url, prediction_log_flush_interval=3600)


def _features(n: int, seed: int = 7) -> list[list[float]]:
    rng = random.Random(seed)
    return [[round(rng.uniform(-3, 3), 6), round(rng.uniform(-3, 3), 6)] for _ in range(n)]


def _insert(db: Engine, rows: list[tuple[Any, ...]]) -> None:
    """Insert rows given with their time in (float) epoch seconds."""
    db_predictions_insert.insert_predictions(db, [(round(r[0] * 1_000_000), *r[1:]) for r in rows])


def _stored(db: Engine) -> list[db_predictions.PredictionRecord]:
    return db_predictions.list_recent_predictions(db, limit=100_000)


def _key(created_at: datetime, f1: float, f2: float, pred: int, conf: float, v: str) -> tuple:
    return (created_at, f1, f2, pred, round(conf, 12), v)


def test_predict_logs_every_request_written_at_shutdown(db: Engine, app_settings: Settings) -> None:
    features = _features(300)
    with TestClient(create_app(app_settings)) as client:
        answers = [client.post("/predict", json={"features": f}).json() for f in features]
        logger = client.app.state.ia.predlog  # type: ignore[attr-defined]
        assert logger.counters().queued == 300
        assert db_predictions.count_predictions(db) == 0  # nothing written before the shutdown
    rows = _stored(db)
    assert len(rows) == 300
    expected = sorted(
        _key(
            datetime.fromisoformat(a["timestamp"]),
            f[0],
            f[1],
            a["prediction"],
            a["confidence"],
            a["model_version"],
        )
        for f, a in zip(features, answers, strict=True)
    )
    got = sorted(
        _key(r.created_at, r.feature1, r.feature2, r.prediction, r.confidence, r.model_version)
        for r in rows
    )
    assert got == expected
    assert {r.model_version for r in rows} == {"v1"}


def test_predict_under_concurrent_load_loses_nothing(
    db: Engine, make_settings: Callable[..., Settings], database_url: str
) -> None:
    # A real server, small batches and a fast flush: requests, background flushes and the
    # final flush all overlap.
    settings = make_settings(
        database_url=database_url,
        prediction_log_flush_interval=0.02,
        prediction_log_batch_size=25,
    )
    errors: list[str] = []
    app = create_app(settings)
    with LiveServer(app) as server:

        def worker(seed: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for f in _features(100, seed=seed):
                    r = http.post("/predict", json={"features": f})
                    if r.status_code != 200:
                        errors.append(r.text)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    counters = app.state.ia.predlog.counters()
    assert (counters.logged, counters.flushed, counters.dropped, counters.queued) == (
        800,
        800,
        0,
        0,
    )
    rows = _stored(db)
    assert len(rows) == 800
    all_features = sorted(tuple(f) for s in range(8) for f in _features(100, seed=s))
    assert sorted((r.feature1, r.feature2) for r in rows) == all_features


def test_predict_with_full_queue_answers_and_counts_drops(
    db: Engine, make_settings: Callable[..., Settings], database_url: str
) -> None:
    settings = make_settings(
        database_url=database_url,
        prediction_log_queue_size=5,
        prediction_log_flush_interval=3600,
    )
    with TestClient(create_app(settings)) as client:
        statuses = [
            client.post("/predict", json={"features": f}).status_code for f in _features(20)
        ]
        assert statuses == [200] * 20
        stats = client.get("/predictions/stats").json()
    assert (stats["logged"], stats["dropped"], stats["count"], stats["queued"]) == (5, 15, 5, 0)
    assert db_predictions.count_predictions(db) == 5


def test_predict_keeps_answering_while_log_writes_fail(db: Engine, app_settings: Settings) -> None:
    features = _features(50)
    with TestClient(create_app(app_settings)) as client:
        logger = client.app.state.ia.predlog  # type: ignore[attr-defined]
        # A real database error on every write: the table is not there any more.
        with db.begin() as conn:
            conn.execute(sa.text("ALTER TABLE predictions RENAME TO predictions_away"))
        first = [client.post("/predict", json={"features": f}) for f in features[:25]]
        assert client.portal.call(logger.flush) == 0  # type: ignore[union-attr]
        second = [client.post("/predict", json={"features": f}) for f in features[25:]]
        assert [r.status_code for r in first + second] == [200] * 50
        c = logger.counters()
        assert c.flush_errors == 1 and c.queued == 50 and c.flushed == 0
        with db.begin() as conn:
            conn.execute(sa.text("ALTER TABLE predictions_away RENAME TO predictions"))
        assert client.portal.call(logger.flush) == 50  # type: ignore[union-attr]
    rows = _stored(db)
    assert sorted((r.feature1, r.feature2) for r in rows) == sorted(tuple(f) for f in features)


def test_stats_summarise_window_classes_features_and_versions(
    db: Engine, app_settings: Settings
) -> None:
    now = time.time()
    # Earlier traffic of another version inside the window, and older traffic outside it.
    v0_rows = [
        (now - 600, 1.0, 2.0, 1, 0.9, "v0"),
        (now - 590, 3.0, -2.0, 0, 0.7, "v0"),
        (now - 580, -1.0, 0.5, 1, 0.8, "v0"),
    ]
    old_rows = [(now - 3 * 3600, 100.0, 100.0, 0, 0.99, "v0")] * 4
    _insert(db, v0_rows + old_rows)
    features = _features(40, seed=3)
    with TestClient(create_app(app_settings)) as client:
        answers = [client.post("/predict", json={"features": f}).json() for f in features]
        stats = client.get("/predictions/stats", params={"minutes": 60}).json()
        wide = client.get("/predictions/stats", params={"minutes": 240}).json()

    live = [
        (f[0], f[1], a["prediction"], a["confidence"], a["model_version"])
        for f, a in zip(features, answers, strict=True)
    ]
    window = [r[1:] for r in v0_rows] + live
    n = len(window)
    ones = sum(1 for r in window if r[2] == 1)
    assert stats["window_minutes"] == 60
    assert stats["count"] == n == 43
    assert stats["class_counts"] == {"0": n - ones, "1": ones}
    assert stats["class_balance"] == pytest.approx(ones / n)
    assert stats["feature_means"]["feature1"] == pytest.approx(sum(r[0] for r in window) / n)
    assert stats["feature_means"]["feature2"] == pytest.approx(sum(r[1] for r in window) / n)
    v1 = [r for r in live if r[4] == "v1"]
    v1_ones = sum(1 for r in v1 if r[2] == 1)
    assert stats["by_model_version"] == {
        "v0": {
            "count": 3,
            "class_counts": {"0": 1, "1": 2},
            "mean_confidence": pytest.approx(0.8),
        },
        "v1": {
            "count": 40,
            "class_counts": {"0": 40 - v1_ones, "1": v1_ones},
            "mean_confidence": pytest.approx(sum(r[3] for r in v1) / 40),
        },
    }
    assert (stats["logged"], stats["dropped"], stats["queued"]) == (40, 0, 0)
    assert stats["logging_enabled"] is True
    assert wide["count"] == 47 and wide["by_model_version"]["v0"]["count"] == 7


def test_stats_without_traffic_has_null_balance_and_means(
    db: Engine, app_settings: Settings
) -> None:
    with TestClient(create_app(app_settings)) as client:
        stats = client.get("/predictions/stats").json()
    assert stats["count"] == 0
    assert stats["class_balance"] is None
    assert stats["feature_means"] == {"feature1": None, "feature2": None}
    assert stats["by_model_version"] == {}


@pytest.mark.parametrize("bucket_seconds", [60, 300])
def test_timeseries_counts_classes_per_bucket_and_version(
    db: Engine, app_settings: Settings, bucket_seconds: int
) -> None:
    s = 1_000_000
    base = (math.floor(time.time() / 60) * 60 - 30 * 60) * s  # a minute boundary, 30 min ago
    rows = [
        (base + 5 * s, 0.1, 0.1, 1, 0.9, "v1"),
        (base + 60 * s - 1, 0.2, 0.2, 0, 0.8, "v1"),  # the last microsecond of the minute
        (base + 60 * s, 0.3, 0.3, 1, 0.7, "v1"),
        (base + 61 * s, 0.3, 0.3, 1, 0.7, "v2"),
        (base + 420 * s, 0.4, 0.4, 0, 0.6, "v2"),
        (base - 2 * 3600 * s, 9.0, 9.0, 1, 0.9, "v1"),  # outside the 60-minute window
    ]
    db_predictions_insert.insert_predictions(db, rows)
    with TestClient(create_app(app_settings)) as client:
        r = client.get(
            "/predictions/timeseries", params={"minutes": 60, "bucket_seconds": bucket_seconds}
        )
    assert r.status_code == 200
    body = r.json()
    assert body["bucket_seconds"] == bucket_seconds
    expected: dict[tuple[int, str], list[int]] = {}
    for us, _f1, _f2, pred, _conf, version in rows[:-1]:
        start = us // s // bucket_seconds * bucket_seconds
        expected.setdefault((start, version), [0, 0])[pred] += 1
    got = [
        (
            int(datetime.fromisoformat(p["t"].replace("Z", "+00:00")).timestamp()),
            p["model_version"],
            [p["class_0"], p["class_1"]],
        )
        for p in body["points"]
    ]
    assert got == [(k[0], k[1], v) for k, v in sorted(expected.items())]
    assert all(p["t"].endswith(("Z", "+00:00")) for p in body["points"])


def test_load_live_features_returns_newest_logged_inputs(db: Engine) -> None:
    """The monitoring flow's view of live traffic, read from what the logger wrote."""
    now = time.time()
    _insert(db, [(now - 100 + i, float(i), -float(i), i % 2, 0.75, "v1") for i in range(10)])
    newest = db_predictions.load_live_features(db, limit=3)
    assert newest.shape == (3, 2)
    assert newest.tolist() == [[9.0, -9.0], [8.0, -8.0], [7.0, -7.0]]
    since = datetime.fromtimestamp(now - 100 + 7.5, UTC)
    assert db_predictions.load_live_features(db, limit=100, since=since).tolist() == [
        [9.0, -9.0],
        [8.0, -8.0],
    ]


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/predictions/stats", {"minutes": 0}, "minutes"),
        ("/predictions/stats", {"minutes": "an hour"}, "minutes"),
        ("/predictions/stats", {"minutes": 10081}, "minutes"),
        ("/predictions/timeseries", {"bucket_seconds": 0}, "bucket_seconds"),
        ("/predictions/timeseries", {"bucket_seconds": 86401}, "bucket_seconds"),
        ("/predictions/timeseries", {"minutes": 10080, "bucket_seconds": 1}, "bucket_seconds"),
        ("/predictions/timeseries", {"minutes": -5}, "minutes"),
    ],
)
def test_prediction_routes_reject_bad_params_naming_field(
    make_settings: Callable[..., Settings], path: str, params: dict[str, Any], field: str
) -> None:
    with TestClient(create_app(make_settings())) as client:
        r = client.get(path, params=params)
    assert r.status_code == 422
    assert field in str(r.json()["detail"])


def test_logging_disabled_writes_nothing(
    db: Engine, make_settings: Callable[..., Settings], database_url: str
) -> None:
    settings = make_settings(database_url=database_url, prediction_log_enabled=False)
    with TestClient(create_app(settings)) as client:
        for f in _features(10):
            assert client.post("/predict", json={"features": f}).status_code == 200
        stats = client.get("/predictions/stats").json()
    assert stats["logging_enabled"] is False
    assert (stats["count"], stats["logged"]) == (0, 0)
    assert db_predictions.count_predictions(db) == 0
