"""Models survive restarts; concurrent requests never corrupt data or answer 500."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from ia_continu.config import Settings
from tests.conftest import FIXED_NOW, LiveServer


def _app(settings: Settings) -> Any:
    from ia_continu.api.app import create_app

    return create_app(settings, clock=lambda: FIXED_NOW)


def test_restart_serves_same_model_version(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    with TestClient(_app(settings)) as c:
        c.post("/generate", json={"samples": 500, "seed": 1})
        trained = c.post("/retrain").json()
        before = c.post("/predict", json={"features": [0.2, -0.4]}).json()
    with TestClient(_app(settings)) as c:
        after = c.post("/predict", json={"features": [0.2, -0.4]}).json()
    assert after["model_version"] == trained["model_version"] == before["model_version"]
    assert after["confidence"] == before["confidence"]


def test_restart_serves_model_with_mlflow_down_and_no_disk_copy(settings: Settings) -> None:
    from fastapi.testclient import TestClient

    with TestClient(_app(settings)) as c:
        c.post("/generate", json={"samples": 500, "seed": 1})
        version = c.post("/retrain").json()["model_version"]
    # MLflow unreachable, and the local file gone: the database copy still serves it.
    for f in settings.models_dir.glob("*.json"):
        f.unlink()
    offline = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    with TestClient(_app(offline)) as c:
        assert c.post("/predict", json={"features": [1, 1]}).json()["model_version"] == version
    assert (settings.models_dir / f"{version}.json").exists()


def test_other_process_activation_is_served_within_a_second(settings: Settings) -> None:
    """A model activated by another process (the flow, another worker) is picked up."""
    from ia_continu.db import models as db_models

    with LiveServer(_app(settings)) as server:
        httpx.post(f"{server.url}/generate", json={"samples": 300, "seed": 1})
        v1 = httpx.post(f"{server.url}/retrain", timeout=60).json()["model_version"]
        v2 = httpx.post(f"{server.url}/retrain", timeout=60).json()["model_version"]
        engine = server.server.config.app.state.ia.engine  # type: ignore[attr-defined]
        db_models.activate_model(engine, v1)  # as another process would, straight in the database
        deadline = time.monotonic() + 1.0
        served = v2
        while time.monotonic() < deadline and served != v1:
            served = httpx.post(f"{server.url}/predict", json={"features": [0, 1]}).json()[
                "model_version"
            ]
            time.sleep(0.05)
        assert served == v1


def test_parallel_generate_all_succeed_with_distinct_ids(live_server: LiveServer) -> None:

    from ia_continu.db import datasets as db_datasets

    def call(i: int) -> httpx.Response:
        return httpx.post(
            f"{live_server.url}/generate", json={"samples": 100 + 10 * i, "seed": i}, timeout=60
        )

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(call, range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    ids = [r.json()["generation_id"] for r in responses]
    assert len(set(ids)) == 20
    engine = live_server.server.config.app.state.ia.engine  # type: ignore[attr-defined]
    for i, r in enumerate(responses):
        assert db_datasets.count_samples(engine, r.json()["generation_id"]) == 100 + 10 * i


def test_parallel_retrain_never_500(live_server: LiveServer) -> None:

    from ia_continu.db import models as db_models

    httpx.post(f"{live_server.url}/generate", json={"samples": 500, "seed": 1})
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(
            pool.map(lambda _: httpx.post(f"{live_server.url}/retrain", timeout=120), range(2))
        )
    assert all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
    assert any(r.status_code == 200 for r in responses)
    engine = live_server.server.config.app.state.ia.engine  # type: ignore[attr-defined]
    models = db_models.list_models(engine)
    assert sum(m.is_active for m in models) == 1
    versions = [r.json()["model_version"] for r in responses if r.status_code == 200]
    assert len(set(versions)) == len(versions)
