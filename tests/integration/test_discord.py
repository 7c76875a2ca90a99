"""Discord notifications against a real HTTP server on loopback."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from ia_continu.config import Settings
from ia_continu.notify import discord
from tests.integration.discord_stub import WEBHOOK_PATH, DiscordStub

RUN: dict[str, Any] = {
    "id": 7,
    "started_at": datetime(2026, 1, 15, 11, 0, tzinfo=UTC),
    "status": "drift",
    "champion_version": "v1",
    "reference_accuracy": 0.915,
    "accuracy": 0.781,
    "drift": {
        "feature1": {"ks_statistic": 0.21, "ks_p_value": 1.2e-19, "psi": 0.27},
        "feature2": {"ks_statistic": 0.03, "ks_p_value": 0.71, "psi": 0.004},
    },
    "live_drift": None,
    "drift_detected": True,
    "decision": "promoted",
    "reason": "feature1 KS p-value 1.20e-19 < 0.01",
    "new_version": "v2",
    "new_accuracy": 0.92,
    "champion_accuracy_on_holdout": 0.775,
    "error": None,
}


@pytest.fixture
def stub() -> Iterator[DiscordStub]:
    with DiscordStub() as s:
        yield s


@pytest.fixture
def discord_settings(make_settings: Callable[..., Settings], stub: DiscordStub) -> Settings:
    return make_settings(discord_webhook_url=stub.url, discord_timeout=0.3)


def _no_sleep(_: float) -> None:
    pass


def test_build_run_embed_has_course_title_colour_and_fields() -> None:
    embed = discord.build_run_embed(RUN, mlflow_url="http://mlflow.local/#/experiments/1/runs/ab")
    assert embed["title"] == "Résultats du pipeline"
    assert embed["color"] == discord.COLOURS["drift"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert list(fields) == [
        "Status", "Drift", "Accuracy", "Model version", "Decision", "MLflow", "Données"
    ]  # fmt: skip
    assert fields["Données"] == "aucune donnée fraîche"  # RUN has no data_source
    assert "drift" in fields["Status"]
    assert fields["Drift"].startswith("oui")
    assert "feature1: KS=0.210 p=1.20e-19 PSI=0.270" in fields["Drift"]
    assert fields["Accuracy"].startswith("0.7810 → 0.9200")
    assert fields["Model version"] == "v1 → v2"
    assert "promu" in fields["Decision"] and "0.7750" in fields["Decision"]
    assert "http://mlflow.local/#/experiments/1/runs/ab" in fields["MLflow"]
    assert embed["url"] == "http://mlflow.local/#/experiments/1/runs/ab"
    assert embed["timestamp"].startswith("2026-01-15T11:00")


def test_build_run_embed_names_the_data_source() -> None:
    embed = discord.build_run_embed({**RUN, "data_source": "feedback", "labelled_samples": 250})
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["Données"] == "trafic étiqueté (feedback) · 250 lignes"
    embed = discord.build_run_embed({**RUN, "data_source": "upload", "labelled_samples": 100})
    assert {f["name"]: f["value"] for f in embed["fields"]}["Données"].startswith("jeu importé")


@pytest.mark.parametrize(
    ("status", "colour"),
    [("ok", 0x2ECC71), ("drift", 0xE67E22), ("failed", 0xE74C3C)],
)
def test_build_run_embed_colour_follows_status(status: str, colour: int) -> None:
    assert discord.build_run_embed({**RUN, "status": status})["color"] == colour


def test_build_run_embed_kept_champion_shows_unchanged_accuracy_and_challenger() -> None:
    run = {**RUN, "decision": "kept_champion", "new_accuracy": 0.5}
    fields = {f["name"]: f["value"] for f in discord.build_run_embed(run)["fields"]}
    assert fields["Accuracy"].startswith("0.7810 → 0.7810")
    assert fields["Model version"] == "v1 (challenger v2)"
    assert fields["MLflow"] == "non enregistré"


def test_build_run_embed_clips_long_field_values() -> None:
    embed = discord.build_run_embed({**RUN, "status": "failed", "error": "x" * 5000})
    assert all(len(f["value"]) <= 1024 for f in embed["fields"])


def test_send_embed_posts_one_message(discord_settings: Settings, stub: DiscordStub) -> None:
    embed = discord.build_run_embed(RUN)
    delivery = discord.send_embed(settings=discord_settings, embed=embed)
    assert delivery.sent and delivery.attempts == 1 and delivery.status_code == 204
    assert len(stub.received) == 1
    assert stub.received[0].path == WEBHOOK_PATH
    assert stub.received[0].body == {"embeds": [embed]}


def test_send_embed_without_webhook_logs_instead(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ia_continu.notify.discord")
    for value in (None, "", "  "):
        delivery = discord.send_embed(
            settings=make_settings(discord_webhook_url=value), embed=discord.build_run_embed(RUN)
        )
        assert delivery == discord.Delivery(sent=False, configured=False)
    assert "not configured" in caplog.text and "Résultats du pipeline" in caplog.text


def test_send_embed_retries_5xx_then_gives_up_without_raising(
    discord_settings: Settings, stub: DiscordStub
) -> None:
    stub.script((500, {"message": "boom"}, 0), (502, None, 0), (503, None, 0))
    delivery = discord.send_embed(
        settings=discord_settings, embed=discord.build_run_embed(RUN), sleep=_no_sleep
    )
    assert not delivery.sent
    assert delivery.attempts == 3 and delivery.status_code == 503
    assert len(stub.received) == 3


def test_send_embed_recovers_after_a_5xx(discord_settings: Settings, stub: DiscordStub) -> None:
    stub.script((500, None, 0), (204, None, 0))
    delivery = discord.send_embed(
        settings=discord_settings, embed=discord.build_run_embed(RUN), sleep=_no_sleep
    )
    assert delivery.sent and delivery.attempts == 2


def test_send_embed_honours_429_retry_after(discord_settings: Settings, stub: DiscordStub) -> None:
    stub.script((429, {"message": "rate limited", "retry_after": 0.4, "global": False}, 0))
    delivery = discord.send_embed(settings=discord_settings, embed=discord.build_run_embed(RUN))
    assert delivery.sent and delivery.attempts == 2
    first, second = stub.received
    assert second.at - first.at >= 0.35  # waited as told before the second try


def test_send_embed_bounds_429_retry_after(discord_settings: Settings, stub: DiscordStub) -> None:
    stub.script((429, {"retry_after": 3600}, 0))
    waits: list[float] = []
    delivery = discord.send_embed(
        settings=discord_settings, embed=discord.build_run_embed(RUN), sleep=waits.append
    )
    assert delivery.sent
    assert waits == [discord.MAX_RETRY_AFTER]


def test_send_embed_does_not_retry_a_4xx(discord_settings: Settings, stub: DiscordStub) -> None:
    stub.script((404, {"message": "Unknown Webhook", "code": 10015}, 0))
    delivery = discord.send_embed(
        settings=discord_settings, embed=discord.build_run_embed(RUN), sleep=_no_sleep
    )
    assert not delivery.sent and delivery.attempts == 1 and delivery.status_code == 404
    assert "Unknown Webhook" in (delivery.error or "")


def test_send_embed_timeout_is_logged_not_raised(
    discord_settings: Settings, stub: DiscordStub
) -> None:
    stub.default = (204, None, 1.0)  # slower than the 0.3 s timeout
    delivery = discord.send_embed(
        settings=discord_settings, embed=discord.build_run_embed(RUN), sleep=_no_sleep
    )
    assert not delivery.sent and delivery.attempts == 3
    assert "Timeout" in (delivery.error or "")


def test_send_embed_unreachable_webhook_is_logged_not_raised(
    make_settings: Callable[..., Settings],
) -> None:
    from tests.conftest import free_port

    settings = make_settings(discord_webhook_url=f"http://127.0.0.1:{free_port()}{WEBHOOK_PATH}")
    delivery = discord.send_embed(
        settings=settings, embed=discord.build_run_embed(RUN), sleep=_no_sleep
    )
    assert not delivery.sent and delivery.attempts == 3


def test_send_embed_never_logs_or_returns_the_webhook_url(
    discord_settings: Settings, stub: DiscordStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx logs each request with its URL at INFO
    stub.script((500, {"message": "boom"}, 0), (429, {"retry_after": 0.01}, 0), (404, None, 0))
    delivery = discord.send_embed(
        settings=discord_settings, embed=discord.build_run_embed(RUN), sleep=_no_sleep
    )
    stub.default = (204, None, 1.0)
    timed_out = discord.send_embed(
        settings=discord_settings, embed=discord.build_run_embed(RUN), sleep=_no_sleep
    )
    token = WEBHOOK_PATH.rsplit("/", 1)[1]
    assert "HTTP Request" in caplog.text  # httpx did log its lines, redacted
    assert token not in caplog.text
    assert token not in repr(delivery) and token not in repr(timed_out)
    assert token not in repr(discord_settings)
