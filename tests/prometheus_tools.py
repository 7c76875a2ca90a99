"""Debian's Prometheus tools for the observability tests (packages `prometheus` and
`prometheus-alertmanager`; `.ci/run` installs them).

Locally, without them, the tests that need them are skipped; with
IA_TEST_REQUIRE_PROMETHEUS=1 (CI) they fail instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
RULES = ROOT / "deploy/prometheus/rules/ia-continu.rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/tests/ia-continu.test.yml"
PROMETHEUS_CONFIG = ROOT / "deploy/prometheus/prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"
DASHBOARDS = ROOT / "deploy/grafana/dashboards"
# Debian installs Alertmanager's server as prometheus-alertmanager.
ALTERNATIVES = {"alertmanager": ("alertmanager", "prometheus-alertmanager")}
PACKAGE = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
}


def require_tool(name: str) -> str:
    """The path of ``name``, or skip (fail under IA_TEST_REQUIRE_PROMETHEUS=1)."""
    path = next(filter(None, map(shutil.which, ALTERNATIVES.get(name, (name,)))), None)
    if path is None:
        reason = f"{name} is missing: `apt-get install -y {PACKAGE[name]}` (CI installs it)"
        if os.environ.get("IA_TEST_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"IA_TEST_REQUIRE_PROMETHEUS=1 but {reason}")
        pytest.skip(reason)
    return path
