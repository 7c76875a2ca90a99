"""What the alert rules and the Grafana dashboards query exists: every metric name they
use is exported by the API's /metrics (a real app on a temporary SQLite file) or
recorded by a rule. Plus the metrics added for them: workers up, prediction-log
losses, the IA_MIN_ACCURACY / IA_MONITOR_INTERVAL thresholds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ia_continu.config import Settings
from tests.prometheus_tools import DASHBOARDS, RULES

# Series Prometheus itself creates.
PROMETHEUS_BUILTINS = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds"}
_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_NOT_METRICS |= {"and", "or", "unless", "bool", "offset", "inf", "nan"}
DATASOURCE_UID = "ia-continu-prometheus"


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, label names, strings,
    ranges and keywords left out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        if expr[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() not in _NOT_METRICS:
            names.add(match.group())
    return names


def test_metric_names_extraction() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{status=~"5.."}[5m])))'
        " / on (job) group_left () max without (instance) (b:rec) > 0.1 and c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b:rec", "c"}


def _rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def _dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _dashboard_exprs() -> Iterator[tuple[str, str, str]]:
    for name, board in _dashboards().items():
        for panel in _panels(board):
            for target in panel.get("targets", []):
                yield name, panel["title"], target["expr"]


@pytest.fixture
def exported(make_settings: Callable[..., Settings], tmp_path: Path) -> set[str]:
    """Every sample name the API's /metrics can carry (families without samples count:
    their TYPE line is there)."""
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app

    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'app.db'}", warm_up_ml=False)
    with TestClient(create_app(settings)) as client:
        assert client.post("/predict", json={"features": [0.0, 1.0]}).status_code == 503
        text = client.get("/metrics").text
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_count", "_sum"],
        }.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def test_rules_query_only_exported_or_recorded_metrics(exported: set[str]) -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    known = exported | recorded | PROMETHEUS_BUILTINS
    used = {
        name: metric_names(r["expr"]) for r in _rules() for name in [r.get("alert") or r["record"]]
    }
    assert sum(map(len, used.values())) > 20
    missing = {rule: names - known for rule, names in used.items() if names - known}
    assert not missing


def test_dashboards_query_only_exported_or_recorded_metrics(exported: set[str]) -> None:
    recorded = {r["record"] for r in _rules() if "record" in r}
    known = exported | recorded | PROMETHEUS_BUILTINS
    exprs = list(_dashboard_exprs())
    assert len(exprs) > 30
    missing = [(b, t, e, metric_names(e) - known) for b, t, e in exprs if metric_names(e) - known]
    assert not missing
    # Every recording rule earns its keep: an alert or a panel reads it.
    read = {n for _, _, e in exprs for n in metric_names(e)}
    read |= {n for r in _rules() for n in metric_names(r["expr"])}
    assert recorded <= read, recorded - read


def test_dashboards_are_provisionable() -> None:
    boards = _dashboards()
    assert set(boards) == {
        "ia-continu-service.json",
        "ia-continu-model.json",
        "ia-continu-loop.json",
    }
    uids = [b["uid"] for b in boards.values()]
    assert len(set(uids)) == len(uids)
    datasource = yaml.safe_load(
        (DASHBOARDS.parent / "provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert [d["uid"] for d in datasource] == [DATASOURCE_UID]
    for name, board in boards.items():
        ids = [p["id"] for p in _panels(board)]
        assert len(set(ids)) == len(ids), name
        for panel in _panels(board):
            box = panel["gridPos"]
            assert box["x"] + box["w"] <= 24, (name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == DATASOURCE_UID, (name, panel["title"])
            assert panel["targets"], (name, panel["title"])
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID
    # What the issue asks each dashboard to show.
    titles = {name: " | ".join(p["title"] for p in _panels(b)) for name, b in boards.items()}
    for needed in ("Request rate", "5xx ratio", "Latency p99 per route", "Workers up"):
        assert needed in titles["ia-continu-service.json"], needed
    for needed in ("Champion version", "held-out accuracy", "by class and version", "Retrains",
                   "Activations"):  # fmt: skip
        assert needed in titles["ia-continu-model.json"], needed
    for needed in ("Runs", "KS statistic", "PSI", "Decisions"):
        assert needed in titles["ia-continu-loop.json"], needed


# --- the metrics added for the rules -------------------------------------------------------------


def _scrape(client: Any) -> dict[str, list[Any]]:
    text = client.get("/metrics").text
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def test_metrics_export_thresholds_and_workers(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app

    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        min_accuracy=0.72,
        monitor_interval=900,
        warm_up_ml=False,
    )
    with TestClient(create_app(settings)) as client:
        families = _scrape(client)
    assert [s.value for s in families["ia_config_min_accuracy"]] == [0.72]
    assert [s.value for s in families["ia_config_monitor_interval_seconds"]] == [900]
    assert [s.value for s in families["ia_worker_up"]] == [1]
    for name in ("ia_prediction_log_dropped", "ia_prediction_log_abandoned"):
        assert [(s.name, s.value) for s in families[name]] == [(f"{name}_total", 0)]


def test_prediction_log_losses_reach_the_metrics(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from ia_continu.api.metrics import AppMetrics
    from ia_continu.services.predlog import PredictionLogger

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    logger = PredictionLogger(engine=engine, queue_size=2, batch_size=10, flush_interval=60)
    metrics = AppMetrics()
    for _ in range(5):
        logger.log("v1", 0.0, 1.0, 1, 0.9)
    metrics.report_prediction_log(logger.counters())
    metrics.report_prediction_log(logger.counters())  # reported once, not twice

    def value(name: str) -> float:
        from prometheus_client import generate_latest

        assert metrics.registry is not None
        text = generate_latest(metrics.registry).decode()
        [sample] = [
            s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name
        ]
        return float(sample.value)

    assert value("ia_prediction_log_dropped_total") == 3
    assert value("ia_prediction_log_queued") == 2
    logger.log_many("v1", [[0.0, 1.0]] * 4, [1] * 4, [0.9] * 4)
    metrics.report_prediction_log(logger.counters())
    assert value("ia_prediction_log_dropped_total") == 7
    assert value("ia_prediction_log_abandoned_total") == 0
    engine.dispose()
