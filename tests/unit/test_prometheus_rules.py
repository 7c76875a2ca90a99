"""The alert and recording rules of deploy/prometheus, checked by Prometheus's own tool.

`promtool check` parses them as the compose Prometheus will; `promtool test rules` runs
the unit tests of deploy/prometheus/tests (series in, alerts out, including the cases
that must not fire). A mutated copy of the rules must make those tests fail.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus_tools import PROMETHEUS_CONFIG, ROOT, RULE_TESTS, RULES, require_tool

SEVERITIES = {"critical", "warning", "info"}
DOCS = ROOT / "docs/observability.md"


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _run(*argv: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


# --- promtool ----------------------------------------------------------------------------------


def test_promtool_accepts_the_config_and_its_rule_files() -> None:
    promtool = require_tool("promtool")
    result = _run(promtool, "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    # The config's glob found the rules file (0 rule files would pass silently).
    assert "SUCCESS: 1 rule files found" in result.stdout
    result = _run(promtool, "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    promtool = require_tool("promtool")
    result = _run(promtool, "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("original", "mutated", "failing_test"),
    [
        # Counting every status, 499 and 422 included, as a server error.
        ('status=~"5.."', 'status=~"[45].."', "client disconnects (499)"),
        # A 5% threshold instead of 1%.
        ("ratio_rate5m > 0.01", "ratio_rate5m > 0.05", "2% of requests answer 500"),
        # One alert per replica instead of one per job.
        ("max by (job) (ia_monitoring_last_drift_detected)", "ia_monitoring_last_drift_detected",
         "drift on one run"),
        # Comparing against a fixed 0.8 instead of the exported IA_MIN_ACCURACY.
        ("< on (job) group_left () job:ia_config_min_accuracy:max", "< 0.8",
         "a champion above the floor"),
    ],
)  # fmt: skip
def test_promtool_rule_unit_tests_catch_a_broken_rule(
    tmp_path: Path, original: str, mutated: str, failing_test: str
) -> None:
    promtool = require_tool("promtool")
    text = RULES.read_text()
    assert original in text
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(text.replace(original, mutated))
    shutil.copy(RULE_TESTS, tmp_path / "tests" / RULE_TESTS.name)
    result = _run(promtool, "test", "rules", f"tests/{RULE_TESTS.name}", cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert failing_test in result.stdout + result.stderr


# --- what an on-call person reads ----------------------------------------------------------------


def test_every_alert_has_a_severity_and_an_explanation() -> None:
    alerts = _alerts()
    assert len(alerts) >= 8
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names))
    for alert in alerts:
        assert alert["labels"]["severity"] in SEVERITIES, alert["alert"]
        annotations = alert["annotations"]
        assert len(annotations["summary"]) > 10, alert["alert"]
        assert len(annotations["description"]) > 60, alert["alert"]


def test_every_alert_has_a_runbook_section() -> None:
    # GitHub's anchors: the heading lower-cased, spaces to hyphens, punctuation dropped.
    headings = re.findall(r"^#+ (.+)$", DOCS.read_text(), re.M)
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    for alert in _alerts():
        path, _, anchor = alert["annotations"]["runbook"].partition("#")
        assert path == "docs/observability.md", alert["alert"]
        assert anchor in anchors, (alert["alert"], anchor)


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names == fired, "every alert has a case where it fires"
    assert names == silent, "every alert has a case where it must not fire"


def test_the_five_xx_rule_matches_only_server_errors() -> None:
    # Status 499 (client went away) must never count as a server error.
    for rule in _rules():
        for selector in re.findall(r"status=~?\"([^\"]+)\"", rule["expr"]):
            assert selector in {"5..", "4.."}, (rule.get("record") or rule.get("alert"), selector)
