"""A real Prometheus (Debian's package) with the project's rules, scraping a real
`ia-continu serve` on loopback.

Every rule must evaluate without error against what the API really exports, and alerts
must follow real conditions: a monitoring run with drift in the database fires
IaDriftDetected; the API stopped makes IaApiDown pending (its `for: 1m` cannot be waited
for here: promtool's unit tests cover the firing side of the long `for`s).
Scrape and evaluation every second; the whole test takes about 10-20 s.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, wait_http
from tests.integration.processes import ApiProcess
from tests.prometheus_tools import RULES, require_tool

JOB = "ia-continu-api"  # the job name the rules select on (deploy/prometheus/prometheus.yml)
MIN_ACCURACY = 0.85
MONITOR_INTERVAL = 120
DEADLINE = 30.0  # seconds for a condition to show up; scrapes and evaluations are 1 s

pytestmark = [pytest.mark.slow]


class Prometheus:
    def __init__(self, root: Path, target: str) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {
                    "job_name": JOB,
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        self.config = root / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, binary: str) -> Prometheus:
        log = open(self.root / "prometheus.log", "wb")  # noqa: SIM115 - closed below
        try:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.root / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        wait_http(f"{self.url}/-/ready", timeout=60, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        return body["data"]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def alert_states(self) -> dict[str, str]:
        return {a["labels"]["alertname"]: a["state"] for a in self.api("alerts")["alerts"]}

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.api("query", query=expr)["result"])

    def log(self) -> str:
        path = self.root / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def wait_for(condition: Callable[[], Any], what: str, on_fail: Callable[[], str]) -> Any:
    deadline = time.monotonic() + DEADLINE
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE:.0f} s\n{on_fail()}")
        time.sleep(0.25)


@pytest.fixture
def api_and_prometheus(tmp_path: Path) -> Iterator[tuple[ApiProcess, Prometheus, str]]:
    binary = require_tool("prometheus")
    database_url = f"sqlite:///{tmp_path / 'app.db'}"
    api = ApiProcess(
        root=tmp_path,
        database_url=database_url,
        mlflow_url="http://127.0.0.1:9",  # /metrics needs no MLflow
        workers=2,
        env={
            "IA_MIN_ACCURACY": str(MIN_ACCURACY),
            "IA_MONITOR_INTERVAL": str(MONITOR_INTERVAL),
            "IA_WARM_UP_ML": "false",
        },
    )
    (tmp_path / "prometheus").mkdir()
    prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{api.port}")
    try:
        api.start()
        prometheus.start(binary)
        yield api, prometheus, database_url
    finally:
        prometheus.stop()
        api.stop()


def _insert_drift_run(database_url: str) -> None:
    from ia_continu.db import monitoring_runs as db_runs
    from ia_continu.db.engine import create_db_engine

    engine = create_db_engine(database_url)
    try:
        now = datetime.now(UTC)
        db_runs.insert_monitoring_run(
            engine,
            db_runs.MonitoringRunRecord(
                started_at=now,
                finished_at=now,
                duration_seconds=1.5,
                status="drift",
                decision="kept_champion",
                accuracy=0.6,
                reference_accuracy=0.9,
                drift={"feature1": {"ks_statistic": 0.4, "ks_p_value": 0.001, "psi": 0.5}},
                drift_detected=True,
            ),
        )
    finally:
        engine.dispose()


def test_real_prometheus_evaluates_every_rule_and_follows_real_conditions(
    api_and_prometheus: tuple[ApiProcess, Prometheus, str],
) -> None:
    api, prometheus, database_url = api_and_prometheus
    diagnostics = lambda: prometheus.log() + "\n--- api ---\n" + api.log()[-2000:]  # noqa: E731

    # Some traffic, a 503 included (no model yet): the request rules have data.
    with httpx.Client(base_url=api.url, timeout=10) as client:
        for _ in range(5):
            assert client.post("/predict", json={"features": [0.1, 0.2]}).status_code == 503
            assert client.get("/health").status_code == 200

    def target_up() -> bool:
        return any(t["health"] == "up" for t in prometheus.api("targets")["activeTargets"])

    wait_for(target_up, "the API target is scraped", diagnostics)

    # Every rule evaluated at least once, none in error (a typo in a metric name would
    # only show as an empty result; those are checked in test_observability_metrics.py).
    def all_rules_healthy() -> list[dict[str, Any]] | None:
        rules = prometheus.rules()
        errors = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
        assert not errors, errors
        return rules if all(r["health"] == "ok" for r in rules) else None

    rules = wait_for(all_rules_healthy, "every rule evaluated", diagnostics)
    assert len(rules) == len(
        [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    )

    # The settings the rules compare against come from the API's own environment.
    def thresholds() -> dict[str, float] | None:
        floor = prometheus.query("job:ia_config_min_accuracy:max")
        interval = prometheus.query("job:ia_config_monitor_interval_seconds:max")
        if not floor or not interval:
            return None
        return {"floor": float(floor[0]["value"][1]), "interval": float(interval[0]["value"][1])}

    assert wait_for(thresholds, "the exported thresholds", diagnostics) == {
        "floor": MIN_ACCURACY,
        "interval": MONITOR_INTERVAL,
    }

    # Both workers report themselves up (one series each, multiprocess mode).
    def workers_up() -> bool:
        result = prometheus.query("sum(ia_worker_up)")
        return bool(result) and float(result[0]["value"][1]) == 2

    wait_for(workers_up, "two workers up", diagnostics)

    # No drift reported yet: the alert is inactive; the API is up: IaApiDown is too.
    states = prometheus.alert_states()
    assert "IaDriftDetected" not in states and "IaApiDown" not in states, states

    # A monitoring run with drift lands in the database: the next scrape reports it and
    # IaDriftDetected (no `for`) fires.
    _insert_drift_run(database_url)
    wait_for(
        lambda: prometheus.alert_states().get("IaDriftDetected") == "firing",
        "IaDriftDetected firing",
        diagnostics,
    )

    # The API stops: the scrapes fail, up == 0, IaApiDown becomes pending (for: 1m).
    api.stop()
    wait_for(
        lambda: prometheus.alert_states().get("IaApiDown") == "pending",
        "IaApiDown pending",
        diagnostics,
    )
