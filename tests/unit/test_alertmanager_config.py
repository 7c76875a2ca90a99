"""deploy/alertmanager/alertmanager.yml, parsed by Alertmanager's own `amtool`.

Debian's amtool (0.25) predates `webhook_url_file` for Discord (Alertmanager 0.26+, the
version compose runs): when it refuses that one field, the rest of the file is checked
with an inline placeholder URL in its place. Everything else is the real file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.prometheus_tools import ALERTMANAGER_CONFIG, RULES, require_tool

SECRET_FILE = "/run/secrets/discord_webhook_url"


def _check(amtool: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [amtool, "check-config", str(path)], capture_output=True, text=True, timeout=60
    )


def test_amtool_accepts_the_alertmanager_config(tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    result = _check(amtool, ALERTMANAGER_CONFIG)
    output = result.stdout + result.stderr
    if result.returncode != 0 and "field webhook_url_file not found" in output:
        text = ALERTMANAGER_CONFIG.read_text()
        copy = tmp_path / "alertmanager.yml"
        copy.write_text(
            text.replace(
                f"webhook_url_file: {SECRET_FILE}",
                'webhook_url: "https://discord.invalid/api/webhooks/1/placeholder"',
            )
        )
        result = _check(amtool, copy)
        output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 inhibit rules" in output and "1 receivers" in output


def test_alerts_go_to_discord_with_resolved_messages_and_no_inline_secret() -> None:
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    [receiver] = config["receivers"]
    [discord] = receiver["discord_configs"]
    assert discord["webhook_url_file"] == SECRET_FILE
    assert "webhook_url" not in discord
    assert discord["send_resolved"] is True
    route = config["route"]
    assert route["receiver"] == receiver["name"]
    assert set(route["group_by"]) == {"alertname", "job"}
    # Every severity the rules use has a route (a sub-route or the default one).
    severities = {
        rule["labels"]["severity"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert severities == {"critical", "warning", "info"}


def test_inhibit_rules_name_existing_alerts() -> None:
    import re

    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    for inhibit in config["inhibit_rules"]:
        for matcher in inhibit["source_matchers"] + inhibit["target_matchers"]:
            name, op, value = re.fullmatch(r'(\w+)(=~|=)"(.*)"', matcher).groups()  # type: ignore[union-attr]
            assert name == "alertname"
            names = value.split("|") if op == "=~" else [value]
            assert set(names) <= alerts, names
