"""A real Alertmanager (Debian's package) with the project's config, posting to a loopback
HTTP server standing in for Discord.

The config is the real file with two test changes: the webhook inline (Debian's 0.25 has
no `webhook_url_file` for Discord, see tests/unit/test_alertmanager_config.py) pointing at
the stub, and the grouping waits cut to a second. Alerts are pushed through Alertmanager's
API as Prometheus does: two replicas down make ONE message, re-sending them adds none, and
their end sends a resolved message.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, wait_http
from tests.integration.discord_stub import DiscordStub
from tests.prometheus_tools import ALERTMANAGER_CONFIG, require_tool

pytestmark = [pytest.mark.slow]


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[tuple[str, DiscordStub]]:
    binary = require_tool("alertmanager")
    with DiscordStub() as stub:
        config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
        [discord] = config["receivers"][0]["discord_configs"]
        del discord["webhook_url_file"]
        discord["webhook_url"] = stub.url
        for route in [config["route"], *config["route"]["routes"]]:
            route.update(group_wait="1s", group_interval="1s")
        path = tmp_path / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config))
        port = free_port()
        log = open(tmp_path / "alertmanager.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",  # no gossip port
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(f"{url}/-/ready", timeout=60, proc=proc)
            yield url, stub
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _alert(instance: str, *, ends: datetime | None = None) -> dict[str, Any]:
    alert: dict[str, Any] = {
        "labels": {
            "alertname": "IaApiDown",
            "job": "ia-continu-api",
            "instance": instance,
            "severity": "critical",
        },
        "annotations": {
            "summary": f"API replica {instance} does not answer /metrics",
            "description": "Prometheus has failed to scrape it for over a minute.",
            "runbook": "docs/observability.md#iaapidown",
        },
        "startsAt": (datetime.now(UTC) - timedelta(minutes=2)).isoformat(),
    }
    if ends is not None:
        alert["endsAt"] = ends.isoformat()
    return alert


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.2)


def test_alertmanager_groups_deduplicates_and_resolves_on_discord(
    alertmanager: tuple[str, DiscordStub],
) -> None:
    url, stub = alertmanager

    def push(*alerts: dict[str, Any]) -> None:
        response = httpx.post(f"{url}/api/v2/alerts", json=list(alerts), timeout=10)
        assert response.status_code == 200, response.text

    # Two replicas down, pushed three times (Prometheus re-sends firing alerts).
    for _ in range(3):
        push(_alert("10.0.0.2:9000"), _alert("10.0.0.3:9000"))
    _wait(lambda: len(stub.received) >= 1, "the firing message")
    time.sleep(3)  # three group intervals: any duplicate would have been sent by now
    assert len(stub.received) == 1, [r.body for r in stub.received]
    [firing] = stub.embeds()
    assert firing["title"].startswith("[FIRING:2] IaApiDown (critical)")
    assert "API replica 10.0.0.2:9000 does not answer /metrics" in firing["description"]
    assert "API replica 10.0.0.3:9000 does not answer /metrics" in firing["description"]
    assert "Runbook: docs/observability.md#iaapidown" in firing["description"]
    assert stub.received[0].path.endswith("/s3cr3t-t0ken-do-not-log")

    # Both replicas back: one resolved message for the group.
    ended = datetime.now(UTC) - timedelta(seconds=1)
    push(_alert("10.0.0.2:9000", ends=ended), _alert("10.0.0.3:9000", ends=ended))
    _wait(lambda: len(stub.received) >= 2, "the resolved message")
    resolved = stub.embeds()[1]
    assert resolved["title"].startswith("[RESOLVED] IaApiDown")
    assert resolved["description"].count("RESOLVED: API replica") == 2
