"""`ia-continu kuma setup`: provisioning logic against an in-process fake of Uptime Kuma's
client (see tests/unit/fake_kuma.py for why and what), errors through the real client."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner
from uptime_kuma_api import MonitorType, NotificationType, UptimeKumaApi

from ia_continu.ops import kuma
from tests.conftest import free_port
from tests.unit.fake_kuma import FakeKumaClient, FakeKumaServer

URL = "http://uptime-kuma:3001"
TARGET = "http://api:9000"
WEBHOOK = "https://discord.example/api/webhooks/1/abc"


def _provision(server: FakeKumaServer, **overrides: object) -> kuma.KumaSetupResult:
    args: dict[str, object] = {
        "connect": server.connect,
        "url": URL,
        "username": "admin",
        "password": "s3cret-pass1",
        "target_url": TARGET,
        "discord_webhook_url": None,
    }
    args.update(overrides)
    return kuma.provision_kuma(**args)  # type: ignore[arg-type]


def _only(items: dict[int, dict[str, object]]) -> dict[str, object]:
    assert len(items) == 1, items
    return next(iter(items.values()))


# --- the fake has the real client's methods -------------------------------------------------


def test_fake_kuma_client_matches_real_client_signatures() -> None:
    used = [n for n in vars(kuma.KumaClient) if not n.startswith("_")]
    assert len(used) == 10
    for name in used:
        real = inspect.signature(getattr(UptimeKumaApi, name))
        fake = inspect.signature(getattr(FakeKumaClient, name))
        shape = [(p.name, p.kind, p.default) for p in real.parameters.values()]
        assert [(p.name, p.kind, p.default) for p in fake.parameters.values()] == shape, name


# --- provisioning ---------------------------------------------------------------------------


def test_provision_kuma_first_run_sets_up_admin_and_creates_keyword_monitor() -> None:
    server = FakeKumaServer()
    result = _provision(server)

    assert result.initialised is True
    assert server.admin == ("admin", "s3cret-pass1")
    monitor = _only(server.monitors)
    assert monitor["type"] == MonitorType.KEYWORD
    assert monitor["name"] == kuma.MONITOR_NAME
    assert monitor["url"] == "http://api:9000/health"
    assert monitor["keyword"] == "ok"
    assert monitor["interval"] == 30
    assert monitor["notificationIDList"] == {}
    assert (result.monitor_action, result.monitor_id) == ("created", monitor["id"])
    assert result.notification_id is None and server.notifications == {}
    assert server.method_names()[:3] == ["need_setup", "setup", "login"]
    assert server.method_names()[-1] == "disconnect"


def test_provision_kuma_second_run_updates_and_never_duplicates() -> None:
    server = FakeKumaServer()
    first = _provision(server, target_url="http://api:9000/")
    server.calls.clear()
    second = _provision(server, target_url="http://api-new:9000")

    assert second.initialised is False
    assert "setup" not in server.method_names()
    assert (second.monitor_action, second.monitor_id) == ("updated", first.monitor_id)
    monitor = _only(server.monitors)
    assert monitor["url"] == "http://api-new:9000/health"
    assert monitor["interval"] == 30


def test_provision_kuma_creates_and_attaches_discord_notification_once() -> None:
    server = FakeKumaServer()
    first = _provision(server, discord_webhook_url=WEBHOOK)
    second = _provision(server, discord_webhook_url=WEBHOOK + "-rotated")

    notification = _only(server.notifications)
    assert notification["type"] == NotificationType.DISCORD
    assert notification["name"] == kuma.NOTIFICATION_NAME
    assert notification["discordWebhookUrl"] == WEBHOOK + "-rotated"
    assert notification["isDefault"] is False
    assert (first.notification_action, second.notification_action) == ("created", "updated")
    assert first.notification_id == second.notification_id == notification["id"]
    assert _only(server.monitors)["notificationIDList"] == {notification["id"]: True}


def test_provision_kuma_blank_webhook_means_no_notification() -> None:
    server = FakeKumaServer()
    result = _provision(server, discord_webhook_url="  ")
    assert result.notification_id is None
    assert server.notifications == {}
    assert "get_notifications" not in server.method_names()


def test_provision_kuma_keeps_notifications_attached_by_hand() -> None:
    server = FakeKumaServer()
    _provision(server)
    # An operator attaches another notification in the UI, then the command runs again.
    client = server.connect(URL)
    client.login("admin", "s3cret-pass1")
    other = client.add_notification(
        name="on-call email", type=NotificationType.DISCORD, discordWebhookUrl=WEBHOOK + "x"
    )["id"]
    monitor_id = next(iter(server.monitors))
    client.edit_monitor(monitor_id, notificationIDList=[other])

    result = _provision(server, discord_webhook_url=WEBHOOK)
    assert set(server.monitors[monitor_id]["notificationIDList"]) == {
        other,
        result.notification_id,
    }


def test_provision_kuma_wrong_password_is_a_one_line_error() -> None:
    server = FakeKumaServer(admin=("admin", "the-real-pass1"))
    with pytest.raises(kuma.KumaError) as caught:
        _provision(server, password="wrong-pass1")

    message = str(caught.value)
    assert "\n" not in message
    assert "refused the login of user 'admin'" in message
    assert "Incorrect username or password." in message
    assert "wrong-pass1" not in message
    assert server.monitors == {}
    assert server.method_names()[-1] == "disconnect"


def test_provision_kuma_weak_password_on_a_new_instance_names_the_setup_step() -> None:
    server = FakeKumaServer()
    with pytest.raises(kuma.KumaError, match="during the first-time setup: Password is too weak"):
        _provision(server, password="short")
    assert server.admin is None


def test_provision_kuma_requires_credentials() -> None:
    server = FakeKumaServer()
    with pytest.raises(kuma.KumaError, match="username and password are required"):
        _provision(server, password="")
    assert server.connections == []


# --- unreachable Kuma, through the real client ------------------------------------------------


@pytest.mark.timeout(60)
def test_connect_kuma_refused_connection_fails_fast_with_the_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(kuma.KumaError) as caught:
        kuma.connect_kuma(url, timeout=5)
    assert str(caught.value) == (
        f"cannot reach Uptime Kuma at {url} (Connection refused); "
        "is it running, and is the URL right?"
    )


class _NotKuma(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_kuma_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _NotKuma)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(60)
def test_connect_kuma_http_server_that_is_not_kuma_is_unreachable(not_kuma_url: str) -> None:
    with pytest.raises(kuma.KumaError, match=r"cannot reach Uptime Kuma .*no Socket\.IO answer"):
        kuma.connect_kuma(not_kuma_url, timeout=5)


# --- the command --------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for key in ("IA_KUMA_USERNAME", "IA_KUMA_PASSWORD", "IA_DISCORD_WEBHOOK_URL", "IA_KUMA_URL"):
        monkeypatch.delenv(key, raising=False)
    return {"IA_KUMA_USERNAME": "admin", "IA_KUMA_PASSWORD": "s3cret-pass1"}


def _cli(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    from ia_continu.cli import app

    result = CliRunner().invoke(app, ["kuma", "setup", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.timeout(60)
def test_cli_kuma_setup_unreachable_exits_1_with_one_line(cli_env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = _cli(["--url", url, "--timeout", "5"], cli_env)
    assert code == 1
    assert out == ""
    assert err.strip().count("\n") == 0
    assert err.startswith(f"ia-continu kuma setup: cannot reach Uptime Kuma at {url}")


def test_cli_kuma_setup_without_password_exits_2(cli_env: dict[str, str]) -> None:
    code, _, err = _cli(["--url", URL], {**cli_env, "IA_KUMA_PASSWORD": ""})
    assert code == 2
    assert "missing --password / IA_KUMA_PASSWORD" in err


def test_cli_kuma_setup_reads_credentials_and_webhook_from_env(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeKumaServer()
    seen: dict[str, object] = {}

    def _connect(url: str, *, timeout: float) -> FakeKumaClient:
        seen.update(url=url, timeout=timeout)
        return server.connect(url)

    monkeypatch.setattr(kuma, "connect_kuma", _connect)
    env = {**cli_env, "IA_DISCORD_WEBHOOK_URL": WEBHOOK, "IA_KUMA_TIMEOUT": "7"}
    code, out, _ = _cli(["--url", URL, "--target", TARGET], env)
    assert code == 0, out
    assert seen == {"url": URL, "timeout": 7.0}
    assert server.admin == ("admin", "s3cret-pass1")
    assert "first-time setup done" in out
    assert "created and attached" in out
    assert "s3cret-pass1" not in out

    code, out, _ = _cli(["--url", URL, "--target", TARGET], env)
    assert code == 0
    assert "first-time setup" not in out
    assert f"{kuma.MONITOR_NAME!r} (id {next(iter(server.monitors))}) updated" in out
    assert len(server.monitors) == len(server.notifications) == 1


def test_cli_kuma_setup_wrong_credentials_exit_1(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = FakeKumaServer(admin=("admin", "another-pass1"))
    monkeypatch.setattr(kuma, "connect_kuma", lambda url, *, timeout: server.connect(url))
    code, out, err = _cli(["--url", URL], cli_env)
    assert code == 1
    assert out == ""
    assert err == (
        f"ia-continu kuma setup: Uptime Kuma at {URL} refused the login of user 'admin': "
        "Incorrect username or password.\n"
    )
