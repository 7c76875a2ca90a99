"""An in-process stand-in for Uptime Kuma 1.23 behind ``uptime_kuma_api.UptimeKumaApi``.

Why a fake: Uptime Kuma is a Node.js application distributed as a Docker image; it cannot
be installed from the package registries reachable here and no Docker engine runs.

What it fakes, and only that: the ten client methods ``ia_continu.ops.kuma`` calls, with
the real methods' names and signatures (checked by a test). Inputs go through the
library's own payload builders and validators (``_build_monitor_data``,
``_check_arguments_monitor``, ``_build_notification_data``, ...), so an argument the
real client would reject is rejected here too; answers have the shapes the real client
returns (``{"monitorID": ..}``, ``{"id": ..}``, lists of dicts with ``notificationIDList``
as a list of ints). Server-side rules mirrored from Uptime Kuma 1.23: setup only once,
password strength on setup, wrong credentials refused, nothing before login.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from uptime_kuma_api import Timeout, UptimeKumaApi, UptimeKumaException
from uptime_kuma_api import api as kuma_lib

KUMA_VERSION = "1.23.16"


@dataclass
class FakeKumaServer:
    """The server's state, shared by every connection (so a second run sees the first)."""

    admin: tuple[str, str] | None = None
    monitors: dict[int, dict[str, Any]] = field(default_factory=dict)
    notifications: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    connections: list[FakeKumaClient] = field(default_factory=list)
    _next_id: int = 1

    def connect(self, url: str) -> FakeKumaClient:
        client = FakeKumaClient(self, url)
        self.connections.append(client)
        return client

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def method_names(self) -> list[str]:
        return [name for name, _, _ in self.calls]


class FakeKumaClient:
    """Same public methods and signatures as ``UptimeKumaApi`` for the calls used."""

    def __init__(self, server: FakeKumaServer, url: str) -> None:
        self._server = server
        self.url = url
        self.logged_in = False
        self.connected = True

    # --- setup and login --------------------------------------------------------------

    def need_setup(self) -> bool:
        self._record("need_setup")
        return self._server.admin is None

    def setup(self, username: str, password: str) -> dict:
        self._record("setup", username, "***")
        if self._server.admin is not None:
            raise UptimeKumaException(
                "Uptime Kuma has been initialized. If you want to run setup again, "
                "please delete the database."
            )
        has_both = re.search(r"[A-Za-z]", password) and re.search(r"\d", password)
        if len(password) < 6 or not has_both:
            raise UptimeKumaException(
                "Password is too weak. It should contain alphabetic and numeric characters. "
                "It must be at least 6 characters in length."
            )
        self._server.admin = (username, password)
        return {"msg": "Added Successfully."}

    def login(
        self, username: str | None = None, password: str | None = None, token: str = ""
    ) -> dict:
        self._record("login", username, "***")
        if self._server.admin != (username, password):
            raise UptimeKumaException("Incorrect username or password.")
        self.logged_in = True
        return {"token": "fake-jwt"}

    # --- monitors ---------------------------------------------------------------------

    def get_monitors(self) -> list[dict]:
        self._record("get_monitors")
        self._wait_for_list("MONITOR_LIST")
        monitors = []
        for stored in self._server.monitors.values():
            monitor = copy.deepcopy(stored)
            kuma_lib._convert_monitor_return(monitor)
            monitors.append(monitor)
        return monitors

    def add_monitor(self, **kwargs) -> dict:
        self._record("add_monitor", **kwargs)
        self._require_login()
        data = UptimeKumaApi._build_monitor_data(_VERSIONED, **kwargs)
        kuma_lib._convert_monitor_input(data)
        kuma_lib._check_arguments_monitor(data)
        monitor_id = self._server.new_id()
        self._server.monitors[monitor_id] = {**data, "id": monitor_id, "active": True}
        return {"msg": "Added Successfully.", "monitorID": monitor_id}

    def edit_monitor(self, id_: int, **kwargs) -> dict:
        self._record("edit_monitor", id_, **kwargs)
        self._require_login()
        if id_ not in self._server.monitors:
            raise UptimeKumaException("monitor does not exist")
        # As the real client: read the monitor, overlay the arguments, validate, save.
        data = copy.deepcopy(self._server.monitors[id_])
        kuma_lib._convert_monitor_return(data)
        data.update(kwargs)
        kuma_lib._convert_monitor_input(data)
        kuma_lib._check_arguments_monitor(data)
        self._server.monitors[id_] = data
        return {"msg": "Saved.", "monitorID": id_}

    # --- notifications ----------------------------------------------------------------

    def get_notifications(self) -> list[dict]:
        self._record("get_notifications")
        self._wait_for_list("NOTIFICATION_LIST")
        return [copy.deepcopy(n) for n in self._server.notifications.values()]

    def add_notification(self, **kwargs) -> dict:
        self._record("add_notification", **kwargs)
        self._require_login()
        data = kuma_lib._build_notification_data(**kwargs)
        kuma_lib._check_arguments_notification(data)
        notification_id = self._server.new_id()
        self._server.notifications[notification_id] = {
            **data,
            "id": notification_id,
            "active": True,
            "userId": 1,
        }
        return {"id": notification_id, "msg": "Saved"}

    def edit_notification(self, id_: int, **kwargs) -> dict:
        self._record("edit_notification", id_, **kwargs)
        self._require_login()
        if id_ not in self._server.notifications:
            raise UptimeKumaException("notification does not exist")
        notification = copy.deepcopy(self._server.notifications[id_])
        notification.update(kwargs)
        kuma_lib._check_arguments_notification(notification)
        self._server.notifications[id_] = notification
        return {"id": id_, "msg": "Saved"}

    def disconnect(self) -> None:
        self._record("disconnect")
        self.connected = False

    # --- helpers ----------------------------------------------------------------------

    def _record(self, method: str, /, *args: Any, **kwargs: Any) -> None:
        if not self.connected:
            raise UptimeKumaException("not connected")
        self._server.calls.append((method, args, kwargs))

    def _require_login(self) -> None:
        if not self.logged_in:
            raise UptimeKumaException("You are not logged in.")

    def _wait_for_list(self, event: str) -> None:
        # The real server pushes these lists only after a login: the client times out.
        if not self.logged_in:
            raise Timeout(f"Timed out while waiting for event Event.{event}")


# `self` for the library's own payload builder, which only reads the server version.
_VERSIONED = SimpleNamespace(version=KUMA_VERSION)
