"""`make run`: start the local services, wait until each answers, stop them on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ia_continu.config import Settings


@dataclass
class Service:
    name: str
    argv: list[str]
    health_url: str | None
    ui_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 180.0
    process: subprocess.Popen[bytes] | None = None


def venv_executable(name: str) -> str:
    """An executable installed beside the running interpreter (the project's venv)."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def mlflow_service(*, port: int, directory: Path, host: str = "127.0.0.1") -> Service:
    directory = directory.resolve()
    return Service(
        name="mlflow",
        argv=[
            venv_executable("mlflow"),
            "server",
            "--host",
            host,
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{directory / 'mlflow.db'}",
            "--artifacts-destination",
            str(directory / "artifacts"),
            "--workers",
            "1",
        ],
        health_url=f"http://127.0.0.1:{port}/health",
        ui_url=f"http://localhost:{port}",
        # The job runner costs ~3 GB of memory and is not used here.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )


def api_service(settings: Settings) -> Service:
    return Service(
        name="api",
        argv=[sys.executable, "-m", "ia_continu", "serve"],
        health_url=f"http://127.0.0.1:{settings.port}/health",
        ui_url=f"http://localhost:{settings.port}/docs",
    )


def extra_services(settings: Settings) -> list[Service]:
    """Services added by later parts of the stack (Prefect, ...)."""
    return prefect_services(settings)


def prefect_services(settings: Settings) -> list[Service]:
    """The Prefect server (UI and API on the port of IA_PREFECT_API_URL, default 4200)
    and the monitoring flow served on it every IA_MONITOR_INTERVAL seconds."""
    from urllib.parse import urlsplit

    api_url = settings.prefect_api_url.rstrip("/")
    parts = urlsplit(api_url)
    port = parts.port or 4200
    host = parts.hostname or "127.0.0.1"
    env = {
        # Prefect's database, logs and settings stay under the project's data directory.
        "PREFECT_HOME": str((settings.data_dir / "prefect").resolve()),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": api_url,
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_LOGGING_EXTRA_LOGGERS": "ia_continu",
    }
    server = Service(
        name="prefect",
        argv=[venv_executable("prefect"), "server", "start", "--host", host, "--port", str(port)],
        health_url=f"{api_url}/health",
        ui_url=f"http://localhost:{port}",
        env=env,
    )
    monitor_env = dict(env)
    if "api_url" not in settings.model_fields_set:  # follow IA_PORT unless told otherwise
        monitor_env["IA_API_URL"] = f"http://127.0.0.1:{settings.port}"
    monitor = Service(
        name="monitoring-flow",
        argv=[
            sys.executable,
            "-m",
            "ia_continu",
            "monitor",
            "serve",
            "--interval",
            str(settings.monitor_interval),
        ],
        health_url=None,
        ui_url=f"http://localhost:{port}/deployments",
        env=monitor_env,
    )
    return [server, monitor]


def run_stack(
    settings: Settings, *, mlflow_port: int, mlflow_dir: Path, with_prefect: bool = True
) -> int:
    mlflow_dir.mkdir(parents=True, exist_ok=True)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    services = [mlflow_service(port=mlflow_port, directory=mlflow_dir), api_service(settings)]
    if with_prefect:
        services += extra_services(settings)
    stop = _install_stop_handler()
    try:
        for service in services:
            _start(service)
            if not _wait_ready(service, stop):
                return 1
        print("\nia-continu is up:", flush=True)
        for service in services:
            if service.ui_url:
                print(f"  {service.name:<16} {service.ui_url}", flush=True)
        print("Ctrl-C stops everything.\n", flush=True)
        while not stop:
            for service in services:
                assert service.process is not None
                code = service.process.poll()
                if code is not None:
                    print(f"{service.name} exited with code {code}; stopping", flush=True)
                    return 1
            time.sleep(0.5)
        return 0
    finally:
        _stop_all(services)


def _install_stop_handler() -> list[int]:
    stop: list[int] = []

    def _handler(signum: int, _frame: object) -> None:
        stop.append(signum)

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    return stop


def _start(service: Service) -> None:
    env = {**os.environ, **service.env}
    print(f"starting {service.name}: {' '.join(service.argv)}", flush=True)
    # Own process group: Ctrl-C in the terminal reaches us, and we stop children in order.
    service.process = subprocess.Popen(service.argv, env=env, start_new_session=True)


def _wait_ready(service: Service, stop: Sequence[int]) -> bool:
    if service.health_url is None:
        return True
    deadline = time.monotonic() + service.ready_timeout
    while time.monotonic() < deadline and not stop:
        assert service.process is not None
        if service.process.poll() is not None:
            print(f"{service.name} exited during start-up", flush=True)
            return False
        try:
            if httpx.get(service.health_url, timeout=1.0).status_code == 200:
                print(f"{service.name} ready", flush=True)
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    if not stop:
        print(f"{service.name} not ready after {service.ready_timeout:.0f} s", flush=True)
    return False


def _stop_all(services: list[Service], timeout: float = 20.0) -> None:
    for service in reversed(services):
        proc = service.process
        if proc is None or proc.poll() is not None:
            continue
        print(f"stopping {service.name}", flush=True)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
