"""Provision Uptime Kuma (1.23) by command: first-time setup, the /health monitor, Discord.

The call sequence is deliberately short and always the same:

    connect -> need_setup [-> setup] -> login
            -> [get_notifications -> add_notification | edit_notification]
            -> get_monitors -> add_monitor | edit_monitor
            -> disconnect

Objects are found by name, so a second run updates them and never duplicates them.
The client is injected (``connect``): the real one is ``uptime_kuma_api.UptimeKumaApi``,
tests pass an in-process fake with the same methods (Uptime Kuma itself cannot be
installed from the package registries reachable here).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

MONITOR_NAME = "ia-continu API /health"
NOTIFICATION_NAME = "ia-continu Discord"
HEALTH_PATH = "/health"
HEALTH_KEYWORD = "ok"  # GET /health answers {"status": "ok", ...}
CHECK_INTERVAL_SECONDS = 30
# One retry before "down": a single lost packet should not page anyone.
MAX_RETRIES = 1


class KumaClient(Protocol):
    """The subset of ``uptime_kuma_api.UptimeKumaApi`` used here (same names and signatures)."""

    def need_setup(self) -> bool: ...
    def setup(self, username: str, password: str) -> dict[str, Any]: ...
    def login(
        self, username: str | None = None, password: str | None = None, token: str = ""
    ) -> dict[str, Any]: ...
    def get_monitors(self) -> list[dict[str, Any]]: ...
    def add_monitor(self, **kwargs: Any) -> dict[str, Any]: ...
    def edit_monitor(self, id_: int, **kwargs: Any) -> dict[str, Any]: ...
    def get_notifications(self) -> list[dict[str, Any]]: ...
    def add_notification(self, **kwargs: Any) -> dict[str, Any]: ...
    def edit_notification(self, id_: int, **kwargs: Any) -> dict[str, Any]: ...
    def disconnect(self) -> None: ...


class KumaError(RuntimeError):
    """A provisioning failure, worded as one line for the operator."""


@dataclass(frozen=True)
class KumaSetupResult:
    url: str
    initialised: bool  # True when this run did the first-time setup
    monitor_id: int
    monitor_action: Literal["created", "updated"]
    monitor_url: str
    notification_id: int | None
    notification_action: Literal["created", "updated"] | None


def connect_kuma(url: str, *, timeout: float) -> KumaClient:
    """The real client. Raises ``KumaError`` when Uptime Kuma cannot be reached."""
    from uptime_kuma_api import UptimeKumaApi, UptimeKumaException

    try:
        client: KumaClient = UptimeKumaApi(url, timeout=timeout)
    except UptimeKumaException as exc:
        raise KumaError(
            f"cannot reach Uptime Kuma at {url} ({describe_connection_failure(exc)}); "
            "is it running, and is the URL right?"
        ) from None
    return client


def provision_kuma(
    *,
    connect: Callable[[str], KumaClient],
    url: str,
    username: str,
    password: str,
    target_url: str,
    discord_webhook_url: str | None = None,
) -> KumaSetupResult:
    """Make Uptime Kuma watch ``{target_url}/health``; idempotent."""
    from uptime_kuma_api import MonitorType, NotificationType, UptimeKumaException

    if not username or not password:
        raise KumaError("Uptime Kuma username and password are required")
    client = connect(url)
    step = "the connection"
    try:
        step = "the first-time setup check"
        initialised = bool(client.need_setup())
        if initialised:
            step = "the first-time setup"
            client.setup(username, password)
        step = "the login"
        try:
            client.login(username, password)
        except UptimeKumaException as exc:
            raise KumaError(
                f"Uptime Kuma at {url} refused the login of user {username!r}: {exc}"
            ) from None

        notification_id: int | None = None
        notification_action: Literal["created", "updated"] | None = None
        webhook = (discord_webhook_url or "").strip()
        if webhook:
            step = "the Discord notification"
            notification = dict(
                name=NOTIFICATION_NAME,
                type=NotificationType.DISCORD,
                discordWebhookUrl=webhook,
                discordUsername="Uptime Kuma (ia-continu)",
                isDefault=False,
                applyExisting=False,
            )
            existing = _find_by_name(client.get_notifications(), NOTIFICATION_NAME)
            if existing is None:
                notification_id = int(client.add_notification(**notification)["id"])
                notification_action = "created"
            else:
                notification_id = int(existing["id"])
                client.edit_notification(notification_id, **notification)
                notification_action = "updated"

        step = "the monitor"
        monitor_url = target_url.rstrip("/") + HEALTH_PATH
        monitor: dict[str, Any] = dict(
            type=MonitorType.KEYWORD,
            name=MONITOR_NAME,
            description="ia-continu API liveness (provisioned by `ia-continu kuma setup`)",
            url=monitor_url,
            keyword=HEALTH_KEYWORD,
            interval=CHECK_INTERVAL_SECONDS,
            retryInterval=CHECK_INTERVAL_SECONDS,
            maxretries=MAX_RETRIES,
        )
        existing = _find_by_name(client.get_monitors(), MONITOR_NAME)
        attached = [int(i) for i in (existing or {}).get("notificationIDList") or []]
        if notification_id is not None and notification_id not in attached:
            attached.append(notification_id)
        # Other notifications someone attached by hand are kept.
        monitor["notificationIDList"] = attached
        if existing is None:
            monitor_id = int(client.add_monitor(**monitor)["monitorID"])
            monitor_action: Literal["created", "updated"] = "created"
        else:
            monitor_id = int(existing["id"])
            client.edit_monitor(monitor_id, **monitor)
            monitor_action = "updated"
    except UptimeKumaException as exc:
        raise KumaError(f"Uptime Kuma at {url} failed during {step}: {exc}") from None
    finally:
        _disconnect_quietly(client)
    return KumaSetupResult(
        url=url,
        initialised=initialised,
        monitor_id=monitor_id,
        monitor_action=monitor_action,
        monitor_url=monitor_url,
        notification_id=notification_id,
        notification_action=notification_action,
    )


def describe_connection_failure(exc: BaseException) -> str:
    """The OS-level reason hidden in the client's chained exceptions ("Connection refused")."""
    seen: BaseException | None = exc
    texts: list[str] = []
    while seen is not None and len(texts) < 10:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    for text in reversed(texts):
        match = re.search(r"\[Errno -?\d+\] ([^'\"()\]]+)", text)
        if match:
            return match.group(1).strip()
        if "timed out" in text.lower():
            return "timed out"
    return "no Socket.IO answer"


def _find_by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    # Several objects may share a name when someone created one by hand: the oldest wins.
    matches = sorted((i for i in items if i.get("name") == name), key=lambda i: int(i["id"]))
    return matches[0] if matches else None


def _disconnect_quietly(client: KumaClient) -> None:
    # The outcome is known already; a failing close adds nothing.
    with contextlib.suppress(Exception):
        client.disconnect()
