"""POST /models/{version}/activate: the champion moves back in the database, in MLflow and
in the serving process; unknown versions and an unreachable MLflow change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import SecretStr

from ia_continu.config import Settings
from tests.conftest import FIXED_NOW, free_port

KEY = "rollback-test-key-93b0c1d2e4"
AUTH = {"X-API-Key": KEY}


def _app_client(settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app

    with TestClient(create_app(settings, clock=lambda: FIXED_NOW)) as c:
        yield c


@pytest.fixture
def keyed_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": SecretStr(KEY)})


@pytest.fixture
def trained_client(keyed_settings: Settings) -> Iterator[Any]:
    """An app with two versions: v1 (even-hour data) then v2 (odd-hour data), v2 champion."""
    for c in _app_client(keyed_settings):
        for hour, seed in ((2, 1), (3, 2)):
            r = c.post(
                "/generate", json={"samples": 1000, "hour": hour, "seed": seed}, headers=AUTH
            )
            assert r.status_code == 200, r.text
            r = c.post("/retrain", headers=AUTH)
            assert r.status_code == 200, r.text
        yield c


def _champion_alias(settings: Settings) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    return str(client.get_model_version_by_alias(settings.model_name, "champion").version)


def test_rollback_moves_champion_everywhere(trained_client: Any, keyed_settings: Settings) -> None:
    c = trained_client
    assert _champion_alias(keyed_settings) == "2"
    assert c.post("/predict", json={"features": [0.5, 0.5]}).json()["model_version"] == "v2"

    r = c.post("/models/v1/activate", headers=AUTH)

    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "activated"
    assert (body["model_version"], body["previous_version"]) == ("v1", "v2")
    assert body["registry_version"] == 1
    assert _champion_alias(keyed_settings) == "1"
    models = c.get("/models").json()
    assert models["active_version"] == "v1"
    assert [m["version"] for m in models["models"] if m["is_active"]] == ["v1"]
    assert body["accuracy"] == next(m["accuracy"] for m in models["models"] if m["version"] == "v1")
    # This process serves it at once (other processes: see test_serve_workers).
    for x in ([0.5, 0.5], [-1.0, 2.0], [3.0, -3.0]):
        assert c.post("/predict", json={"features": x}).json()["model_version"] == "v1"
    # The served model is v1's own coefficients, not v2's relabelled.
    from ia_continu.db import models as db_models
    from ia_continu.ml.predictor import LinearModel

    stored = db_models.get_model(c.app.state.ia.engine, "v1")
    assert stored is not None and stored.parameters is not None
    assert c.app.state.ia.model == LinearModel.from_json(stored.parameters)

    # Forward again, and activating the champion itself is harmless.
    assert c.post("/models/v2/activate", headers=AUTH).json()["previous_version"] == "v1"
    again = c.post("/models/v2/activate", headers=AUTH).json()
    assert (again["model_version"], again["previous_version"]) == ("v2", "v2")
    assert _champion_alias(keyed_settings) == "2"


def test_rollback_requires_api_key(trained_client: Any, keyed_settings: Settings) -> None:
    assert trained_client.post("/models/v1/activate").status_code == 401
    wrong = trained_client.post("/models/v1/activate", headers={"X-API-Key": KEY + "x"})
    assert wrong.status_code == 401
    assert trained_client.get("/models").json()["active_version"] == "v2"
    assert _champion_alias(keyed_settings) == "2"


def test_rollback_unknown_version_is_404(trained_client: Any, keyed_settings: Settings) -> None:
    for version in ("v99", "1", "latest"):
        r = trained_client.post(f"/models/{version}/activate", headers=AUTH)
        assert r.status_code == 404
        assert version in r.json()["detail"]
    assert trained_client.get("/models").json()["active_version"] == "v2"
    assert _champion_alias(keyed_settings) == "2"


def test_rollback_with_mlflow_down_is_503_and_changes_nothing(
    trained_client: Any, keyed_settings: Settings
) -> None:
    # A second API process on the same database whose MLflow is unreachable.
    dead = keyed_settings.model_copy(
        update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"}
    )
    for other in _app_client(dead):
        r = other.post("/models/v1/activate", headers=AUTH)
        assert r.status_code == 503
        assert "unchanged" in r.json()["detail"]
        assert other.get("/models").json()["active_version"] == "v2"
        assert other.post("/predict", json={"features": [1, 1]}).json()["model_version"] == "v2"
    assert _champion_alias(keyed_settings) == "2"
    assert trained_client.get("/models").json()["active_version"] == "v2"
