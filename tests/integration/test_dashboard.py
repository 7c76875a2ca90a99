"""The dashboard's page, static files and JSON routes, on SQLite and PostgreSQL.

These tests need no MLflow: the champion is stored with the repository directly (the
browser test in test_dashboard_browser.py trains one through /retrain and MLflow).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ia_continu.config import Settings
from tests.conftest import FIXED_NOW


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings], database_url: str
) -> Iterator[Callable[..., TestClient]]:
    from ia_continu.api.app import create_app

    opened: list[TestClient] = []

    def _make(app_hook: Callable[[Any], None] | None = None, **overrides: object) -> TestClient:
        app = create_app(
            make_settings(database_url=database_url, **overrides), clock=lambda: FIXED_NOW
        )
        if app_hook is not None:
            app_hook(app)
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        return client

    yield _make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def bare_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def _store_champion(client: TestClient, generation_id: int, version: str = "v1") -> None:
    from ia_continu.db import models as db_models

    record = db_models.ModelRecord(
        version=version,
        accuracy=0.91,
        training_samples=800,
        created_at=FIXED_NOW + timedelta(minutes=1),
        is_active=True,
        test_samples=200,
        generation_id=generation_id,
    )
    db_models.insert_model(client.app.state.ia.engine, record, activate=True)  # type: ignore[attr-defined]


def _generate(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


# --- the page and its files ------------------------------------------------------------------


def test_dashboard_page_is_html_with_csp_and_local_assets(bare_client: TestClient) -> None:
    r = bare_client.get("/dashboard")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    page = r.text
    assert "{{VERSION}}" not in page
    assets = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', page)
    assert len(assets) == 4, assets
    assert not re.search(r'(?:src|href)="https?://', page), "no CDN: the page works offline"
    assert "<script>" not in page, "no inline script (the CSP forbids it)"
    types = {}
    for url in assets:
        asset = bare_client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
        types[url.split("?")[0].rsplit(".", 1)[-1]] = asset.headers["content-type"]
    assert types["js"].split(";")[0] in {"text/javascript", "application/javascript"}
    assert types["css"].startswith("text/css")


def test_dashboard_vendored_chart_library_ships_its_license(bare_client: TestClient) -> None:
    license_text = bare_client.get("/dashboard/static/vendor/uplot/LICENSE")
    assert license_text.status_code == 200
    assert "MIT License" in license_text.text


def test_dashboard_page_is_not_in_the_way_of_unknown_routes(bare_client: TestClient) -> None:
    assert bare_client.get("/dashboard/static/nope.js").status_code == 404
    assert bare_client.get("/dashboard/nope").status_code == 404


# --- /dashboard/config --------------------------------------------------------------------


def test_dashboard_config_reports_links_refresh_and_thresholds(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(
        mlflow_ui_url="http://mlflow.example:5000",
        prefect_ui_url="http://prefect.example:4200",
        kuma_ui_url="http://kuma.example:3001",
        dashboard_refresh_seconds=7,
        min_accuracy=0.75,
        psi_threshold=0.3,
    )
    body = client.get("/dashboard/config").json()
    assert body["refresh_seconds"] == 7
    assert body["links"] == {
        "mlflow": "http://mlflow.example:5000",
        "prefect": "http://prefect.example:4200",
        "uptime_kuma": "http://kuma.example:3001",
    }
    assert body["thresholds"]["min_accuracy"] == 0.75
    assert body["thresholds"]["psi_threshold"] == 0.3
    assert body["api_key_required"] is False
    assert body["version"] == "2.0.0"


@pytest.mark.parametrize(
    ("overrides", "required", "predict"),
    [
        ({"api_keys": "k" * 32}, True, False),
        ({"api_keys": "k" * 32, "protect_predict": True}, True, True),
        ({"api_keys": ""}, False, False),
        ({}, False, False),
    ],
)
def test_dashboard_config_tells_whether_keys_are_required(
    make_client: Callable[..., TestClient],
    overrides: dict[str, object],
    required: bool,
    predict: bool,
) -> None:
    body = make_client(**overrides).get("/dashboard/config").json()
    assert body["api_key_required"] is required
    assert body["predict_requires_key"] is predict
    assert "k" * 32 not in str(body), "the key itself is never sent"


def test_dashboard_config_lists_optional_routes_the_app_serves(
    make_client: Callable[..., TestClient],
) -> None:
    def add_monitor_run(app: Any) -> None:
        @app.post("/monitoring/run")
        def _run() -> dict[str, str]:
            return {}

    client = make_client()
    plain = client.get("/dashboard/config").json()["endpoints"]
    paths = client.get("/openapi.json").json()["paths"]
    assert plain["monitoring_history"] is ("get" in paths.get("/monitoring/history", {}))
    assert plain["rollback"] is ("post" in paths.get("/models/{version}/activate", {}))
    with_run = make_client(add_monitor_run).get("/dashboard/config").json()["endpoints"]
    assert with_run["monitoring_run"] is True


def test_dashboard_config_finds_routes_of_included_routers(
    make_client: Callable[..., TestClient],
) -> None:
    from fastapi import APIRouter

    def add_router(app: Any) -> None:
        router = APIRouter(prefix="/predictions")

        @router.get("/timeseries")
        def _series() -> dict[str, str]:
            return {}

        app.include_router(router)

    endpoints = make_client(add_router).get("/dashboard/config").json()["endpoints"]
    assert endpoints["predictions_timeseries"] is True


# --- /dashboard/histograms ------------------------------------------------------------------


def test_dashboard_histograms_empty_database_has_no_sides(bare_client: TestClient) -> None:
    r = bare_client.get("/dashboard/histograms")
    assert r.status_code == 200
    assert r.json() == {"bins": 30, "reference": None, "latest": None, "features": {}}


def test_dashboard_histograms_without_champion_shows_latest_only(bare_client: TestClient) -> None:
    gen = _generate(bare_client, samples=300, hour=4, seed=2)
    body = bare_client.get("/dashboard/histograms", params={"bins": 12}).json()
    assert body["reference"] is None
    assert body["latest"]["generation_id"] == gen["generation_id"]
    assert body["latest"]["rows_used"] == 300
    f1 = body["features"]["feature1"]
    assert len(f1["edges"]) == 13
    assert f1["reference"] is None and sum(f1["latest"]) == 300


def test_dashboard_histograms_compare_champion_training_data_with_latest(
    bare_client: TestClient,
) -> None:
    trained = _generate(bare_client, samples=1000, hour=2, seed=11)
    _store_champion(bare_client, trained["generation_id"])
    _generate(bare_client, samples=400, hour=8, seed=12)  # not the latest: ignored
    latest = _generate(bare_client, samples=1000, hour=3, seed=11)  # odd hour, same draws

    r = bare_client.get("/dashboard/histograms", params={"bins": 20})
    assert r.status_code == 200
    body = r.json()
    assert body["bins"] == 20
    ref, cur = body["reference"], body["latest"]
    assert ref["generation_id"] == trained["generation_id"] and ref["model_version"] == "v1"
    assert ref["hour_generated"] == 2 and ref["samples"] == 1000
    assert cur["generation_id"] == latest["generation_id"] and cur["model_version"] is None
    assert cur["hour_generated"] == 3
    datetime.fromisoformat(cur["created_at"].replace("Z", "+00:00")).astimezone(UTC)
    f1, f2 = body["features"]["feature1"], body["features"]["feature2"]
    for h in (f1, f2):
        assert len(h["edges"]) == 21
        assert sum(h["reference"]) == 1000 and sum(h["latest"]) == 1000
    # The hour drift, visible at a glance: feature1 moves by -0.5, feature2 does not.
    assert f1["latest_mean"] - f1["reference_mean"] == pytest.approx(-0.5)
    assert f2["latest"] == f2["reference"]


def test_dashboard_histograms_after_rollback_follow_the_active_model(
    bare_client: TestClient,
) -> None:

    from ia_continu.db import models as db_models

    first = _generate(bare_client, samples=200, hour=2, seed=1)
    _store_champion(bare_client, first["generation_id"], version="v1")
    second = _generate(bare_client, samples=300, hour=3, seed=2)
    _store_champion(bare_client, second["generation_id"], version="v2")
    engine = bare_client.app.state.ia.engine  # type: ignore[attr-defined]
    assert bare_client.get("/dashboard/histograms").json()["reference"]["model_version"] == "v2"
    db_models.activate_model(engine, "v1")
    body = bare_client.get("/dashboard/histograms").json()
    assert body["reference"]["model_version"] == "v1"
    assert body["reference"]["generation_id"] == first["generation_id"]


@pytest.mark.parametrize("bins", ["1", "201", "many", "2.5"])
def test_dashboard_histograms_rejects_bad_bins_naming_it(
    bare_client: TestClient, bins: str
) -> None:
    r = bare_client.get("/dashboard/histograms", params={"bins": bins})
    assert r.status_code == 422
    assert "bins" in str(r.json()["detail"])


def test_load_feature_sample_reads_first_rows_in_order(bare_client: TestClient) -> None:

    from ia_continu.db import datasets as db_datasets

    engine = bare_client.app.state.ia.engine  # type: ignore[attr-defined]
    gen = _generate(bare_client, samples=150, hour=2, seed=5)["generation_id"]
    full = db_datasets.load_dataset(engine, gen)
    assert full is not None
    sample = db_datasets.load_feature_sample(engine, gen, limit=40)
    assert sample is not None and sample.shape == (40, 2)
    assert (sample == full.features[:40]).all()
    whole = db_datasets.load_feature_sample(engine, gen, limit=10_000)
    assert whole is not None and whole.shape == (150, 2)
    assert db_datasets.load_feature_sample(engine, 999, limit=10) is None
