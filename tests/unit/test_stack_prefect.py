from __future__ import annotations

import sys
from collections.abc import Callable

from ia_continu.config import Settings
from ia_continu.stack import extra_services


def test_extra_services_start_prefect_server_and_served_flow(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(port=9101, monitor_interval=600)
    server, monitor = extra_services(settings)
    assert server.name == "prefect"
    assert server.argv[1:] == ["server", "start", "--host", "127.0.0.1", "--port", "4200"]
    assert server.health_url == "http://127.0.0.1:4200/api/health"
    assert server.ui_url == "http://localhost:4200"
    for service in (server, monitor):
        assert service.env["PREFECT_HOME"] == str((settings.data_dir / "prefect").resolve())
        assert service.env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
        assert service.env["PREFECT_API_URL"] == "http://127.0.0.1:4200/api"
    assert monitor.argv == [
        sys.executable, "-m", "ia_continu", "monitor", "serve", "--interval", "600",
    ]  # fmt: skip
    # The flow checks the API on the port it was started on.
    assert monitor.env["IA_API_URL"] == "http://127.0.0.1:9101"


def test_extra_services_follow_configured_prefect_and_api_urls(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        prefect_api_url="http://127.0.0.1:4301/api", api_url="http://api.internal:9000"
    )
    server, monitor = extra_services(settings)
    assert server.argv[-1] == "4301"
    assert monitor.env["PREFECT_API_URL"] == "http://127.0.0.1:4301/api"
    assert "IA_API_URL" not in monitor.env  # the explicit IA_API_URL is inherited as is
