"""Load: a real `ia-continu serve --workers 2`, 50 concurrent clients mixing /predict,
/generate, /evaluate and /retrain for 10 s, against a real MLflow server, on SQLite and
PostgreSQL. Then the data is checked, not only the status codes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from bench.soak import run_load
from mlflow import MlflowClient

from tests.integration.processes import (
    ApiProcess,
    count_predictions,
    dataset_integrity,
    logged_versions,
    post,
)

pytestmark = pytest.mark.slow

LOAD_SECONDS = 10
CLIENTS = 50
# Write routes need a key (the default once keys are set); /predict stays open.
KEY = {"X-API-Key": "load-test-key"}


def test_load_mixed_routes_two_workers_keeps_data_consistent(
    database_url: str, mlflow_server: str, tmp_path: Path
) -> None:
    env = {
        "IA_LOG_LEVEL": "info",  # the log file tells which worker served what, when
        "IA_API_KEYS": "other-key," + KEY["X-API-Key"],
    }
    with ApiProcess(
        root=tmp_path, database_url=database_url, mlflow_url=mlflow_server, env=env
    ) as api:
        r = post(api.url, "/generate", {"samples": 1000, "seed": 1}, headers=KEY)
        assert r.status_code == 200, r.text
        first = post(api.url, "/retrain", timeout=300, headers=KEY)
        assert first.status_code == 200, first.text

        stats = asyncio.run(
            run_load(api.url, duration=LOAD_SECONDS, clients=CLIENTS, seed=7, headers=KEY)
        )
        print(f"\n[load {sa.make_url(database_url).get_backend_name()}]\n{stats.report()}")

        # Zero 5xx, zero failed connections; every route was exercised.
        assert stats.server_errors == {}, stats.error_samples
        assert not stats.errors, stats.error_samples
        assert {route for route, _ in stats.statuses} == {
            "/predict",
            "/generate",
            "/evaluate",
            "/retrain",
            "/feedback",
        }
        # Under load a client error would mean the server misread a valid request.
        assert all(status == 200 for _, status in stats.statuses), stats.statuses

        # Every generation id unique; every dataset stored whole.
        ids = [gid for gid, _ in stats.generations]
        assert len(ids) == len(set(ids)) > 10
        datasets, orphans = dataset_integrity(database_url)
        assert orphans == 0
        assert all(count == stored for _, count, stored in datasets), [
            d for d in datasets if d[1] != d[2]
        ]
        stored = {gid: count for gid, count, _ in datasets}
        assert all(stored[gid] == n for gid, n in stats.generations)

        # Every served version is a registered one; exactly one active at the end, the
        # one MLflow's champion alias points to.
        models = post_models(api.url)
        versions = {m["version"]: m for m in models["models"]}
        assert set(stats.served_versions) <= set(versions), (stats.served_versions, versions)
        assert set(stats.trained_versions) <= set(versions)
        assert sum(m["is_active"] for m in models["models"]) == 1
        active = versions[models["active_version"]]
        registry = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
        registered = {
            int(mv.version) for mv in registry.search_model_versions(f"name='{api.model_name}'")
        }
        assert {m["registry_version"] for m in models["models"]} <= registered
        champion = registry.get_model_version_by_alias(api.model_name, "champion")
        assert int(champion.version) == active["registry_version"]
        # The prediction log (written in the background): every answered /predict, each
        # under a registered version.
        predicted = sum(n for (route, status), n in stats.statuses.items() if route == "/predict")
        deadline = time.monotonic() + 10
        while count_predictions(database_url) < predicted and time.monotonic() < deadline:
            time.sleep(0.2)
        assert count_predictions(database_url) == predicted
        assert logged_versions(database_url) <= set(versions)
        # Every label posted under load is stored, the last one sent for each id, and all
        # of them joined to their logged prediction (no orphan).
        engine = sa.create_engine(database_url)
        with engine.connect() as conn:
            stored_labels = dict(
                conn.execute(sa.text("SELECT prediction_id, label FROM feedback")).all()
            )
        engine.dispose()
        assert stored_labels == stats.labels and stats.labels
        perf = httpx.get(f"{api.url}/predictions/performance", timeout=30).json()
        assert perf["orphans"] == 0
        assert perf["overall"]["labelled"] == len(stats.labels)
        # Keys still checked after the load; /predict open to all.
        assert post(api.url, "/generate", {"samples": 100}).status_code == 401
        assert post(api.url, "/predict", {"features": [0.1, 0.2]}).status_code == 200
        # Every worker serves the active model (each polls it every 0.2 s).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            served = {
                post(api.url, "/predict", {"features": [0.1, 0.2]}).json()["model_version"]
                for _ in range(20)
            }
            if served == {models["active_version"]}:
                break
            time.sleep(0.2)
        assert served == {models["active_version"]}


def post_models(url: str) -> dict:  # type: ignore[type-arg]
    import httpx

    response = httpx.get(f"{url}/models", timeout=60)
    assert response.status_code == 200
    return dict(response.json())
