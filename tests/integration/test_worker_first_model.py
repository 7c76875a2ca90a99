"""Two API processes on one database: the first model trained through one is served by
the other at once, not "no model is trained yet" until its next poll."""

from __future__ import annotations

from fastapi.testclient import TestClient

from ia_continu.api.app import create_app
from ia_continu.config import Settings
from tests.conftest import FIXED_NOW


def test_first_model_trained_by_another_worker_is_served_at_once(settings: Settings) -> None:
    # The second worker polls the active model only once an hour: it must not need to.
    other = settings.model_copy(update={"model_refresh_interval": 3600.0})
    with (
        TestClient(create_app(settings, clock=lambda: FIXED_NOW)) as a,
        TestClient(create_app(other, clock=lambda: FIXED_NOW)) as b,
    ):
        assert b.post("/predict", json={"features": [1, 2]}).status_code == 503
        assert b.post("/evaluate").status_code == 503
        assert b.post("/predict/batch", json={"instances": [[1, 2]]}).status_code == 503
        a.post("/generate", json={"samples": 300, "seed": 1})
        trained = a.post("/retrain").json()["model_version"]
        r = b.post("/predict", json={"features": [1, 2]})
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == trained
        assert b.post("/evaluate").json()["model_version"] == trained
        batch = b.post("/predict/batch", json={"instances": [[1, 2]]})
        assert batch.status_code == 200 and batch.json()["model_version"] == trained
