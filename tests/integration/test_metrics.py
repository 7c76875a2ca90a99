"""GET /metrics after real traffic, read back with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from ia_continu.config import Settings
from tests.conftest import FIXED_NOW

KEY = "metrics-test-key-7d2e4b9a01"
AUTH = {"X-API-Key": KEY}


def parse_metrics(text: str) -> dict[str, list[Any]]:
    """Family name -> samples, through prometheus_client's parser (fails on bad syntax)."""
    return {family.name: list(family.samples) for family in text_string_to_metric_families(text)}


def sample_value(families: dict[str, list[Any]], name: str, **labels: str) -> float:
    family = name.removesuffix("_total").removesuffix("_count").removesuffix("_bucket")
    matches = [
        s.value
        for key in dict.fromkeys((family, name))
        for s in families.get(key, [])
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return float(sum(matches))


@pytest.fixture
def metrics_client(settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app

    keyed = settings.model_copy(update={"api_keys": SecretStr(KEY)})
    with TestClient(create_app(keyed, clock=lambda: FIXED_NOW)) as c:
        yield c


def test_metrics_after_real_traffic(metrics_client: Any) -> None:
    c = metrics_client
    assert c.post("/generate", json={"samples": 1000, "hour": 2, "seed": 1}).status_code == 401
    assert c.post(
        "/generate", json={"samples": 1000, "hour": 2, "seed": 1}, headers=AUTH
    ).is_success
    trained = c.post("/retrain", headers=AUTH)
    assert trained.status_code == 200, trained.text
    predicted = []
    for i in range(25):
        r = c.post("/predict", json={"features": [i / 5 - 2.5, (i % 7) - 3.0]})
        assert r.status_code == 200
        predicted.append(r.json()["prediction"])
    assert c.post("/predict", json={"features": [1.0]}).status_code == 422
    assert c.get("/nope").status_code == 404

    text = c.get("/metrics")
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    m = parse_metrics(text.text)

    requests = "ia_http_requests_total"
    assert sample_value(m, requests, route="/predict", status="200", method="POST") == 25
    assert sample_value(m, requests, route="/predict", status="422") == 1
    assert sample_value(m, requests, route="/generate", status="401") == 1
    assert sample_value(m, requests, route="/generate", status="200") == 1
    assert sample_value(m, requests, route="/retrain", status="200") == 1
    assert sample_value(m, requests, route="<unmatched>", status="404") == 1

    latency = "ia_http_request_duration_seconds"
    assert sample_value(m, f"{latency}_count", route="/predict", status="200") == 25
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in m[latency]
        if s.name == f"{latency}_bucket"
        and s.labels["route"] == "/predict"
        and s.labels["status"] == "200"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert buckets[-1] == (float("inf"), 25)

    for cls in (0, 1):
        expected = predicted.count(cls)
        got = sample_value(m, "ia_predictions_total", model_version="v1", prediction=str(cls))
        assert got == expected

    active = c.get("/models").json()["models"][0]
    assert sample_value(m, "ia_champion_info", version="v1") == 1
    assert sample_value(m, "ia_champion_accuracy", version="v1") == pytest.approx(
        active["accuracy"]
    )
    assert sample_value(m, "ia_model_versions") == 1
    assert sample_value(m, "ia_retrains_total", outcome="success") == 1
    assert sample_value(m, "ia_retrain_duration_seconds_count", outcome="success") == 1
    assert sample_value(m, "ia_served_model", version="v1") == 1
    assert sample_value(m, "ia_database_up") == 1
    assert sample_value(m, "ia_monitoring_runs") == 0
    assert m["ia_monitoring_last_run_info"] == []


def test_metrics_report_latest_monitoring_run(metrics_client: Any) -> None:
    import sqlalchemy as sa

    from ia_continu.db.tables import monitoring_runs

    engine = metrics_client.app.state.ia.engine
    base = {
        "started_at": datetime(2026, 1, 15, 9, 0, tzinfo=UTC),
        "status": "ok",
        "decision": "keep",
        "drift_detected": False,
    }
    latest = {
        "started_at": datetime(2026, 1, 15, 10, 0, tzinfo=UTC),
        "finished_at": datetime(2026, 1, 15, 10, 0, 12, tzinfo=UTC),
        "duration_seconds": 12.5,
        "status": "drift",
        "decision": "retrained",
        "drift_detected": True,
        "accuracy": 0.71,
        "reference_accuracy": 0.93,
        "ks_statistic_feature1": 0.31,
        "ks_p_value_feature1": 1e-9,
        "psi_feature1": 0.42,
        "ks_statistic_feature2": 0.02,
        "ks_p_value_feature2": 0.64,
        "psi_feature2": 0.01,
    }
    with engine.begin() as conn:  # as the monitoring flow writes them
        for row in (base, latest):  # one by one: executemany would keep the first row's keys
            conn.execute(sa.insert(monitoring_runs).values(**row))
    m = parse_metrics(metrics_client.get("/metrics").text)
    assert sample_value(m, "ia_monitoring_runs") == 2
    assert sample_value(m, "ia_monitoring_last_run_info", status="drift", decision="retrained") == 1
    assert len(m["ia_monitoring_last_run_info"]) == 1
    assert sample_value(m, "ia_monitoring_last_run_timestamp_seconds") == pytest.approx(
        latest["finished_at"].timestamp(),  # type: ignore[attr-defined]
        abs=1e-3,
    )
    assert sample_value(m, "ia_monitoring_last_run_duration_seconds") == 12.5
    assert sample_value(m, "ia_monitoring_last_drift_detected") == 1
    assert sample_value(m, "ia_monitoring_last_accuracy") == pytest.approx(0.71)
    assert sample_value(m, "ia_monitoring_last_reference_accuracy") == pytest.approx(0.93)
    for feature in ("feature1", "feature2"):
        ks = sample_value(m, "ia_monitoring_last_ks_statistic", feature=feature)
        assert ks == pytest.approx(latest[f"ks_statistic_{feature}"])
        p = sample_value(m, "ia_monitoring_last_ks_p_value", feature=feature)
        assert p == pytest.approx(latest[f"ks_p_value_{feature}"])
        psi = sample_value(m, "ia_monitoring_last_psi", feature=feature)
        assert psi == pytest.approx(latest[f"psi_{feature}"])
    assert sample_value(m, "ia_champion_info") == 0  # no model trained in this test
