"""Prediction ids, POST /feedback, GET /predictions/performance and shadow scoring, on
SQLite and PostgreSQL. No MLflow needed: the models are stored in the database (as a
retrain or the monitoring flow would leave them) before the app starts."""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score
from sqlalchemy.engine import Engine

from ia_continu.api.app import create_app
from ia_continu.config import Settings
from ia_continu.db import models as db_models
from ia_continu.db import sql as db_sql
from ia_continu.db import tables
from ia_continu.db.engine import create_db_engine
from ia_continu.db.feedback import DELAY_RELATIVE_ERROR, DELAY_UNIT_SECONDS
from ia_continu.db.migrate import upgrade_database
from ia_continu.ml.predictor import LinearModel

CHAMPION = LinearModel(version="v1", coef=(1.7, -0.9), intercept=0.2)
# Disagrees with the champion on many rows: the shadow comparison is not trivial.
SHADOW = LinearModel(version="v2", coef=(-0.8, 1.3), intercept=-0.1)
KEY = "feedback-test-key-3f9a1c7e55"


def _store_model(engine: Engine, model: LinearModel, *, active: bool) -> None:
    db_models.insert_model(
        engine,
        db_models.ModelRecord(
            version=model.version,
            accuracy=0.9,
            training_samples=800,
            created_at=datetime.now(UTC),
            is_active=active,
            parameters=model.to_json(),
        ),
        activate=active,
    )


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = create_db_engine(database_url)
    upgrade_database(engine)
    _store_model(engine, CHAMPION, active=True)
    yield engine
    engine.dispose()


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings], database_url: str, db: Engine
) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def _make(**overrides: object) -> TestClient:
        # One-hour flush interval: rows reach the database only when a read flushes or
        # the app shuts down, so "before the flush" is a state, not a race.
        values: dict[str, object] = {
            "database_url": database_url,
            "prediction_log_flush_interval": 3600,
            "warm_up_ml": False,
        }
        values.update(overrides)
        client = TestClient(create_app(make_settings(**values)))
        client.__enter__()
        clients.append(client)
        return client

    yield _make
    for client in clients:
        client.__exit__(None, None, None)


def _features(n: int, seed: int = 11) -> list[list[float]]:
    rng = random.Random(seed)
    return [[round(rng.uniform(-3, 3), 6), round(rng.uniform(-3, 3), 6)] for _ in range(n)]


def _rows(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        result = conn.execute(sa.select(tables.predictions).order_by(tables.predictions.c.id))
        return [dict(r) for r in result.mappings()]


def _feedback_rows(db: Engine) -> dict[str, dict[str, Any]]:
    with db.connect() as conn:
        result = conn.execute(sa.select(tables.feedback))
        return {r["prediction_id"]: dict(r) for r in result.mappings()}


def _stop(client: TestClient) -> None:
    client.__exit__(None, None, None)  # lifespan end: the log is written


# --- ids --------------------------------------------------------------------------------------


def test_predict_ids_are_returned_and_logged(
    make_client: Callable[..., TestClient], db: Engine
) -> None:
    client = make_client()
    singles = [client.post("/predict", json={"features": f}).json() for f in _features(20)]
    batch = client.post("/predict/batch", json={"instances": _features(50, seed=3)}).json()
    assert len(batch["prediction_ids"]) == len(batch["predictions"]) == 50
    ids = [s["prediction_id"] for s in singles] + batch["prediction_ids"]
    assert len(set(ids)) == 70
    for i in ids:
        parsed = uuid.UUID(i)
        assert str(parsed) == i and parsed.version == 7
    _stop(client)
    rows = _rows(db)
    assert [r["prediction_id"] for r in rows] == ids  # row i <-> id i, in order
    # The logged row is the answered one.
    for single, row in zip(singles, rows[:20], strict=True):
        assert (row["prediction"], row["model_version"]) == (single["prediction"], "v1")
    for i, row in enumerate(rows[20:]):
        assert row["prediction"] == batch["predictions"][i]
        assert row["confidence"] == pytest.approx(batch["confidences"][i], abs=1e-12)


# --- feedback -----------------------------------------------------------------------------------


def test_feedback_before_the_flush_counts(
    make_client: Callable[..., TestClient], db: Engine
) -> None:
    client = make_client()
    pid = client.post("/predict", json={"features": [1.0, -1.0]}).json()["prediction_id"]
    r = client.post("/feedback", json={"prediction_id": pid, "label": 1})
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 1, "stored": 1, "created": 1, "updated": 0, "unchanged": 0}
    assert _rows(db) == []  # the prediction is still in the in-memory log
    assert pid in _feedback_rows(db)
    perf = client.get("/predictions/performance").json()
    assert perf["overall"]["served"] == 1
    assert perf["overall"]["labelled"] == 1
    assert perf["orphans"] == 0


def test_feedback_same_label_changes_nothing_different_label_replaces(
    make_client: Callable[..., TestClient], db: Engine
) -> None:
    client = make_client()
    ids = client.post("/predict/batch", json={"instances": _features(3)}).json()["prediction_ids"]
    items = [{"prediction_id": i, "label": 1} for i in ids]
    assert client.post("/feedback", json={"items": items}).json()["created"] == 3
    first = _feedback_rows(db)
    again = client.post("/feedback", json={"items": items}).json()
    assert again == {"received": 3, "stored": 0, "created": 0, "updated": 0, "unchanged": 3}
    assert _feedback_rows(db) == first  # not even updated_at moved

    changed = client.post("/feedback", json={"prediction_id": ids[0], "label": 0}).json()
    assert changed == {"received": 1, "stored": 1, "created": 0, "updated": 1, "unchanged": 0}
    after = _feedback_rows(db)
    assert after[ids[0]]["label"] == 0
    assert after[ids[0]]["received_at"] == first[ids[0]]["received_at"]  # first arrival kept
    assert after[ids[0]]["updated_at"] is not None
    assert after[ids[1]] == first[ids[1]]

    # An id repeated in one request: the last label wins, the others are unchanged.
    dup = client.post(
        "/feedback",
        json={
            "items": [{"prediction_id": ids[1], "label": 0}, {"prediction_id": ids[1], "label": 1}]
        },
    ).json()
    assert dup == {"received": 2, "stored": 0, "created": 0, "updated": 0, "unchanged": 2}
    assert _feedback_rows(db)[ids[1]]["label"] == 1


def test_feedback_orphans_are_kept_and_counted(
    make_client: Callable[..., TestClient], db: Engine
) -> None:
    client = make_client()
    client.post("/predict", json={"features": [0.1, 0.2]})
    orphan = str(uuid.uuid4())
    r = client.post("/feedback", json={"prediction_id": orphan.upper(), "label": 0})
    assert r.status_code == 200 and r.json()["created"] == 1
    assert orphan in _feedback_rows(db)  # stored lowercased, as ids are issued
    perf = client.get("/predictions/performance").json()
    assert perf["orphans"] == 1
    assert perf["overall"]["labelled"] == 0 and perf["overall"]["served"] == 1
    assert perf["overall"]["accuracy"] is None


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (
            {
                "items": [{"prediction_id": str(uuid.uuid4()), "label": 1}] * 3
                + [{"prediction_id": str(uuid.uuid4()), "label": 2}]
            },
            ["body", "items", 3, "label"],
        ),
        (
            {"items": [{"prediction_id": "not-an-id", "label": 1}]},
            ["body", "items", 0, "prediction_id"],
        ),
        ({"prediction_id": str(uuid.uuid4()), "label": True}, ["body", "label"]),
        ({"prediction_id": str(uuid.uuid4()), "label": "1"}, ["body", "label"]),
        ({"prediction_id": "g" * 8 + str(uuid.uuid4())[8:], "label": 0}, ["body", "prediction_id"]),
        ({"prediction_id": str(uuid.uuid4())}, ["body", "label"]),
        ({"items": []}, ["body", "items"]),
        ({"items": [{"prediction_id": str(uuid.uuid4()), "label": 0}] * 10_001}, ["body", "items"]),
        ({"items": [], "prediction_id": str(uuid.uuid4()), "label": 0}, ["body", "prediction_id"]),
        ([1, 2], ["body"]),
    ],
)
def test_feedback_422_names_the_item(
    make_client: Callable[..., TestClient], db: Engine, body: Any, loc: list[Any]
) -> None:
    client = make_client()
    r = client.post("/feedback", json=body)
    assert r.status_code == 422, r.text
    assert loc in [e["loc"] for e in r.json()["detail"]], r.json()
    assert _feedback_rows(db) == {}


def test_feedback_needs_an_api_key(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys=KEY)
    body = {"prediction_id": str(uuid.uuid4()), "label": 1}
    assert client.post("/feedback", json=body).status_code == 401
    assert client.post("/feedback", json=body, headers={"X-API-Key": KEY}).status_code == 200
    assert client.get("/predictions/performance").status_code == 200  # a read stays open


# --- realized performance --------------------------------------------------------------------


def _sk(y: list[int], p: list[int]) -> dict[str, float]:
    return {
        "accuracy": accuracy_score(y, p),
        "precision": precision_score(y, p, zero_division=0),
        "recall": recall_score(y, p, zero_division=0),
        "f1_score": f1_score(y, p, zero_division=0),
    }


def test_realized_metrics_equal_sklearn_on_the_same_rows(
    make_client: Callable[..., TestClient], db: Engine
) -> None:
    _store_model(db, SHADOW, active=False)  # registered after the champion: the shadow
    # No refresh during the test: the in-process swap to v3 below stays in place.
    client = make_client(shadow=True, model_refresh_interval=3600)
    app_state = client.app.state.ia  # type: ignore[attr-defined]
    assert app_state.shadow is not None and app_state.shadow.version == "v2"
    ids = client.post("/predict/batch", json={"instances": _features(300)}).json()["prediction_ids"]
    # A second served version for part of the traffic (a promotion between requests).
    app_state.serve(LinearModel(version="v3", coef=(0.4, 0.4), intercept=0.0))
    ids += client.post("/predict/batch", json={"instances": _features(200, seed=5)}).json()[
        "prediction_ids"
    ]
    rng = random.Random(2)
    labelled = {i: rng.randint(0, 1) for i in rng.sample(ids, 260)}
    items = [{"prediction_id": i, "label": y} for i, y in labelled.items()]
    items.append({"prediction_id": str(uuid.uuid4()), "label": 1})  # an orphan
    assert client.post("/feedback", json={"items": items}).json()["created"] == 261
    perf = client.get("/predictions/performance").json()

    rows = {r["prediction_id"]: r for r in _rows(db)}
    assert set(rows) == set(ids)
    fb = _feedback_rows(db)

    def expect(versions: set[str]) -> dict[str, Any]:
        mine = [i for i in labelled if rows[i]["model_version"] in versions]
        delays = [
            (db_sql._utc(fb[i]["received_at"]) - db_sql._utc(rows[i]["created_at"])).total_seconds()
            for i in mine
        ]
        served = sum(1 for r in rows.values() if r["model_version"] in versions)
        return {
            "served": served,
            "labelled": len(mine),
            "coverage": len(mine) / served,
            **_sk([labelled[i] for i in mine], [rows[i]["prediction"] for i in mine]),
            "label_delay_p50_seconds": float(np.percentile(delays, 50)),
            "label_delay_p95_seconds": float(np.percentile(delays, 95)),
        }

    for got, want in [
        (perf["overall"], expect({"v1", "v3"})),
        (perf["by_model_version"]["v1"], expect({"v1"})),
        (perf["by_model_version"]["v3"], expect({"v3"})),
    ]:
        for k in ("served", "labelled", "coverage", "accuracy", "precision", "recall", "f1_score"):
            assert got[k] == pytest.approx(want[k], abs=1e-12), k
        # Delays: from a log-scale histogram, within DELAY_RELATIVE_ERROR (+ 1 ms, and a
        # little for SQL time arithmetic) of numpy's percentiles of the exact delays.
        for k in ("label_delay_p50_seconds", "label_delay_p95_seconds"):
            bound = DELAY_RELATIVE_ERROR * abs(want[k]) + DELAY_UNIT_SECONDS + 1e-4
            assert abs(got[k] - want[k]) <= bound, (k, got[k], want[k])
    assert perf["orphans"] == 1

    # The shadow on the same labelled rows (every row was scored by v2).
    shadow = perf["shadow"]["v2"]
    assert shadow["scored"] == 500 and shadow["labelled"] == 260
    ys = list(labelled.values())
    assert shadow["shadow"] == pytest.approx(
        _sk(ys, [rows[i]["shadow_prediction"] for i in labelled]), abs=1e-12
    )
    assert shadow["champion"] == pytest.approx(
        _sk(ys, [rows[i]["prediction"] for i in labelled]), abs=1e-12
    )

    only_v3 = client.get("/predictions/performance", params={"version": "v3"}).json()
    assert only_v3["overall"] == perf["by_model_version"]["v3"]
    assert list(only_v3["by_model_version"]) == ["v3"]

    # Gauges: the served champion (v3 now) and the shadow, nothing else.
    text = client.get("/metrics").text
    lines = [ln for ln in text.splitlines() if ln.startswith("ia_realized_accuracy{")]
    assert sorted(lines) == sorted(
        [
            f'ia_realized_accuracy{{role="champion",version="v3"}} '
            f"{float(perf['by_model_version']['v3']['accuracy'])!r}",
            f'ia_realized_accuracy{{role="shadow",version="v2"}} '
            f"{float(shadow['shadow']['accuracy'])!r}",
        ]
    )
    assert "ia_feedback_orphans 1.0" in text


def test_performance_window_and_params_are_validated(
    make_client: Callable[..., TestClient], db: Engine
) -> None:
    client = make_client()
    now = datetime.now(UTC)
    cases = [
        ({"since": now.isoformat(), "until": (now - timedelta(hours=1)).isoformat()}, "since"),
        ({"since": (now - timedelta(days=91)).isoformat()}, "since"),
        ({"until": "yesterday"}, "until"),
        ({"version": "v" * 33}, "version"),
        ({"version": ""}, "version"),
        ({"version": "v\x00"}, "version"),  # PostgreSQL refuses NUL: a 422, not a 503
        ({"until": "0001-01-01T00:00:00Z"}, "until"),  # 7 days earlier does not exist
        ({"until": "0.5"}, "until"),  # not a Unix time
        ({"since": "2026-01-01"}, "since"),  # not a date alone
        ({"since": "2026-01-01T00:00:00"}, "since"),  # a zone is needed
    ]
    for params, field in cases:
        r = client.get("/predictions/performance", params=params)
        assert r.status_code == 422, (params, r.text)
        assert ["query", field] in [e["loc"] for e in r.json()["detail"]], r.json()
    client.post("/predict", json={"features": [0.5, 0.5]})
    # Default: the last 7 days; an explicit past window without traffic is empty.
    perf = client.get("/predictions/performance").json()
    assert perf["overall"]["served"] == 1
    until = datetime.fromisoformat(perf["until"])
    assert until - datetime.fromisoformat(perf["since"]) == timedelta(days=7)
    past = client.get(
        "/predictions/performance",
        params={
            "since": (now - timedelta(days=3)).isoformat(),
            "until": (now - timedelta(days=2)).isoformat(),
        },
    ).json()
    assert past["overall"]["served"] == 0 and past["overall"]["coverage"] is None


# --- shadow scoring ------------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_shadow_scores_logged_for_every_prediction_only_when_enabled(
    make_client: Callable[..., TestClient], db: Engine, enabled: bool
) -> None:
    _store_model(db, SHADOW, active=False)
    client = make_client(shadow=enabled)
    features = _features(40)
    answers = [client.post("/predict", json={"features": f}).json() for f in features]
    batch = client.post("/predict/batch", json={"instances": features}).json()
    for a in answers:  # never returned
        assert set(a) == {"prediction", "model_version", "confidence", "timestamp", "prediction_id"}
    assert not any("shadow" in k for k in batch)
    _stop(client)
    rows = _rows(db)
    assert len(rows) == 80
    for row, (x1, x2) in zip(rows, features + features, strict=True):
        if enabled:
            pred, conf = SHADOW.predict_one(x1, x2)
            assert row["shadow_version"] == "v2"
            assert row["shadow_prediction"] == pred
            assert row["shadow_confidence"] == pytest.approx(conf, abs=1e-12)
        else:
            assert (row["shadow_version"], row["shadow_prediction"], row["shadow_confidence"]) == (
                None,
                None,
                None,
            )


def test_shadow_rule_follows_the_models_table(
    make_client: Callable[..., TestClient], db: Engine
) -> None:
    from ia_continu.db.models import get_shadow_version

    assert get_shadow_version(db) is None  # only the champion
    _store_model(db, SHADOW, active=False)
    assert get_shadow_version(db) == "v2"
    _store_model(db, LinearModel(version="v4", coef=(1.0, 1.0), intercept=0.0), active=False)
    assert get_shadow_version(db) == "v4"  # the newest challenger
    db_models.activate_model(db, "v2")  # v4 is still newer than the champion
    assert get_shadow_version(db) == "v4"
    db_models.activate_model(db, "v4")
    assert get_shadow_version(db) is None  # nothing registered after the champion
    client = make_client(shadow=True)
    assert client.app.state.ia.shadow is None  # type: ignore[attr-defined]
