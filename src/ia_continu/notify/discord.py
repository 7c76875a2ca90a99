"""Discord webhook notifications for monitoring runs.

Sending never raises and never changes what the caller decided: timeouts, 4xx/5xx and
rate limits are logged. The webhook URL is a secret: it is never logged or returned,
and httpx's own request log line is redacted while a message is being sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from ia_continu.config import Settings

log = logging.getLogger(__name__)

TITLE = "Résultats du pipeline"
COLOURS = {"ok": 0x2ECC71, "drift": 0xE67E22, "failed": 0xE74C3C}  # green, orange, red
STATUS_LABELS = {"ok": "✅ ok", "drift": "⚠️ drift", "failed": "❌ failed"}
DECISION_LABELS = {
    "none": "aucune action",
    "promoted": "nouveau champion promu",
    "kept_champion": "champion conservé (challenger moins bon)",
    "failed": "échec du pipeline",
}
MAX_ATTEMPTS = 3  # the first try and 2 retries
RETRY_DELAY = 0.5  # seconds between attempts after a 5xx or a network error
MAX_RETRY_AFTER = 5.0  # a 429's retry_after is honoured up to this many seconds
FIELD_LIMIT = 1024  # Discord's limit on a field value


@dataclass(frozen=True, slots=True)
class Delivery:
    """What happened to one notification (no URL in here)."""

    sent: bool
    configured: bool
    attempts: int = 0
    status_code: int | None = None
    error: str | None = None


def webhook_url(settings: Settings) -> str | None:
    """The configured webhook, or None when unset or empty."""
    secret = settings.discord_webhook_url
    if secret is None:
        return None
    value = secret.get_secret_value().strip()
    return value or None


# --- the embed ------------------------------------------------------------------------------


def build_run_embed(run: Mapping[str, Any], *, mlflow_url: str | None = None) -> dict[str, Any]:
    """One embed describing a monitoring run (``run`` holds the run's JSON fields)."""
    status = str(run.get("status") or "failed")
    fields = [
        {"name": "Status", "value": STATUS_LABELS.get(status, status), "inline": True},
        {"name": "Drift", "value": _drift_text(run), "inline": False},
        {"name": "Accuracy", "value": _accuracy_text(run), "inline": True},
        {"name": "Model version", "value": _version_text(run), "inline": True},
        {"name": "Decision", "value": _decision_text(run), "inline": False},
        {
            "name": "MLflow",
            "value": f"[run MLflow]({mlflow_url})" if mlflow_url else "non enregistré",
            "inline": False,
        },
        # Which labelled rows the run learned from (feedback, upload, generated, none).
        {"name": "Données", "value": _data_text(run), "inline": False},
    ]
    embed: dict[str, Any] = {
        "title": TITLE,
        "color": COLOURS.get(status, COLOURS["failed"]),
        "fields": [{**f, "value": _clip(str(f["value"]))} for f in fields],
        "footer": {"text": f"ia-continu · monitoring run {run.get('id') or '-'}"},
    }
    if mlflow_url:
        embed["url"] = mlflow_url
    started = run.get("started_at")
    if isinstance(started, datetime):
        embed["timestamp"] = started.isoformat()
    elif isinstance(started, str):
        embed["timestamp"] = started
    return embed


DATA_SOURCE_LABELS = {
    "feedback": "trafic étiqueté (feedback)",
    "upload": "jeu importé (upload)",
    "generated": "lot généré",
}


def _data_text(run: Mapping[str, Any]) -> str:
    source = run.get("data_source")
    if not source:
        return "aucune donnée fraîche"
    text = DATA_SOURCE_LABELS.get(str(source), str(source))
    if run.get("labelled_samples") is not None:
        text += f" · {run['labelled_samples']} lignes"
    return text


def _drift_text(run: Mapping[str, Any]) -> str:
    lines = ["oui" if run.get("drift_detected") else "non"]
    for label, report in (("lot", run.get("drift")), ("trafic", run.get("live_drift"))):
        if not report:
            continue
        for feature, stats in report.items():
            lines.append(
                f"{label} {feature}: KS={stats['ks_statistic']:.3f} "
                f"p={stats['ks_p_value']:.2e} PSI={stats['psi']:.3f}"
            )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "n/a"


def _accuracy_text(run: Mapping[str, Any]) -> str:
    before = run.get("accuracy")
    after = run.get("new_accuracy") if run.get("decision") == "promoted" else before
    text = f"{_fmt(before)} → {_fmt(after)}"
    if run.get("reference_accuracy") is not None:
        text += f"\n(held-out du champion : {_fmt(run.get('reference_accuracy'))})"
    return text


def _version_text(run: Mapping[str, Any]) -> str:
    champion = run.get("champion_version") or "aucun"
    new = run.get("new_version")
    if run.get("decision") == "promoted" and new:
        return f"{champion} → {new}"
    if new:
        return f"{champion} (challenger {new})"
    return str(champion)


def _decision_text(run: Mapping[str, Any]) -> str:
    decision = str(run.get("decision") or "failed")
    text = DECISION_LABELS.get(decision, decision)
    if run.get("new_accuracy") is not None and run.get("champion_accuracy_on_holdout") is not None:
        text += (
            f"\nchallenger {_fmt(run['new_accuracy'])} vs champion "
            f"{_fmt(run['champion_accuracy_on_holdout'])} (held-out du challenger)"
        )
    if run.get("reason"):
        text += f"\n{run['reason']}"
    if run.get("error"):
        text += f"\nerreur : {run['error']}"
    return text


def _clip(text: str, limit: int = FIELD_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- sending ----------------------------------------------------------------------------------


def send_embed(
    *,
    settings: Settings,
    embed: Mapping[str, Any],
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST one embed to the webhook. Never raises; without a webhook, logs the embed."""
    url = webhook_url(settings)
    if url is None:
        log.info("Discord webhook not configured; notification: %s", _summary(embed))
        return Delivery(sent=False, configured=False)
    payload = {"embeds": [dict(embed)]}
    attempts = 0
    status: int | None = None
    error: str | None = None
    with _redacted(url), httpx.Client(timeout=settings.discord_timeout) as client:
        while attempts < MAX_ATTEMPTS:
            attempts += 1
            wait = RETRY_DELAY
            try:
                response = client.post(url, json=payload)
            except httpx.HTTPError as exc:
                status, error = None, _redact(f"{type(exc).__name__}: {exc}", url)
                log.warning("Discord notification attempt %d failed: %s", attempts, error)
            except Exception as exc:  # never into the caller
                status, error = None, _redact(f"{type(exc).__name__}: {exc}", url)
                log.warning("Discord notification failed: %s", error)
                break
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return Delivery(
                        sent=True, configured=True, attempts=attempts, status_code=status
                    )
                body = _redact(response.text[:300], url)
                error = f"HTTP {status}: {body}"
                if status == 429:
                    wait = _retry_after(response)
                    log.warning(
                        "Discord rate limit (429), retry after %.2f s (attempt %d)", wait, attempts
                    )
                elif status >= 500:
                    log.warning("Discord answered %d (attempt %d): %s", status, attempts, body)
                else:  # 4xx: the request itself is wrong, retrying will not help
                    log.warning("Discord refused the notification: HTTP %d: %s", status, body)
                    break
            if attempts < MAX_ATTEMPTS:
                sleep(wait)
    log.warning("Discord notification not delivered after %d attempt(s): %s", attempts, error)
    return Delivery(sent=False, configured=True, attempts=attempts, status_code=status, error=error)


def _retry_after(response: httpx.Response) -> float:
    """Seconds to wait from a 429 (JSON ``retry_after`` or the header), bounded."""
    value: Any = None
    try:
        data = response.json()
        if isinstance(data, dict):
            value = data.get("retry_after")
    except ValueError:
        pass
    if value is None:
        value = response.headers.get("retry-after")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = 1.0
    if seconds != seconds or seconds < 0:  # NaN or negative
        seconds = 1.0
    return min(seconds, MAX_RETRY_AFTER)


def _summary(embed: Mapping[str, Any]) -> str:
    parts = [str(embed.get("title", ""))]
    for f in embed.get("fields", []):
        parts.append(f"{f['name']}: {str(f['value']).replace(chr(10), ' | ')}")
    return " · ".join(parts)


def _redact(text: str, url: str) -> str:
    return _redact_all(text, _secret_forms(url))


# httpx logs every request with its full URL at INFO level: that line would leak the
# webhook's token. A filter on the "httpx" logger rewrites it while a send is running.
_secrets: dict[str, int] = {}
_secrets_lock = threading.Lock()


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        with _secrets_lock:
            secrets = sorted(_secrets, key=len, reverse=True)
        if not secrets:
            return True
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(
                _redact_all(str(a), secrets) if _has(a, secrets) else a for a in args
            )
        if isinstance(record.msg, str) and _has(record.msg, secrets):
            record.msg = _redact_all(record.msg, secrets)
        return True


def _has(value: Any, secrets: list[str]) -> bool:
    text = str(value)
    return any(s in text for s in secrets)


def _redact_all(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<discord webhook>")
    return text


_filter = _RedactFilter()


def _secret_forms(url: str) -> list[str]:
    """The URL as given, as httpx prints it, and its path (which holds the token)."""
    forms = {url}
    try:
        parsed = httpx.URL(url)
        forms.add(str(parsed))
        if len(parsed.path) > 1:
            forms.add(parsed.path)
    except Exception:  # an invalid URL fails later, in the request, and is redacted there
        pass
    return sorted(forms, key=len, reverse=True)  # longest first: whole URL before path


class _redacted:
    def __init__(self, url: str) -> None:
        self._forms = _secret_forms(url)

    def __enter__(self) -> None:
        with _secrets_lock:
            for form in self._forms:
                _secrets[form] = _secrets.get(form, 0) + 1
        for name in ("httpx", "httpcore"):
            logger = logging.getLogger(name)
            if _filter not in logger.filters:
                logger.addFilter(_filter)

    def __exit__(self, *exc: object) -> None:
        with _secrets_lock:
            for form in self._forms:
                count = _secrets.get(form, 0) - 1
                if count > 0:
                    _secrets[form] = count
                else:
                    _secrets.pop(form, None)
