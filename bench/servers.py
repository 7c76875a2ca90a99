"""Processes the benchmark starts, measures and always stops: the MLflow tracking server,
the API (`ia-continu serve`) and `mlflow models serve` on the same champion."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """Status of GET ``path`` on loopback, None when nothing answers yet."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its live descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        stats[int(entry)] = fields
        children.setdefault(int(fields[1]), []).append(int(entry))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            f = stats[current]
            total += (int(f[11]) + int(f[12])) / _TICKS  # utime, stime
        todo.extend(children.get(current, []))
    return total


def tree_rss_mb(pid: int) -> float:
    total, todo = 0, [pid]
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as fh:
                raw = fh.read()
                children.setdefault(int(raw[raw.rindex(")") + 2 :].split()[1]), []).append(
                    int(entry)
                )
    while todo:
        current = todo.pop()
        with contextlib.suppress(OSError), open(f"/proc/{current}/statm") as fh:
            total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        todo.extend(children.get(current, []))
    return total / 2**20


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    started_at: float
    ready_after: float | None = None  # seconds from spawn to the first 200
    cpu_at_ready: float | None = None  # CPU seconds the process tree had used by then
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def rss_mb(self) -> float:
        return tree_rss_mb(self.process.pid)

    def wait_ready(self, path: str, timeout: float, poll: float = 0.002) -> float:
        """Poll ``path`` until it answers 200; returns seconds since spawn."""
        deadline = self.started_at + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}; "
                    f"the end of {self.log_path}:\n{self.log_tail()}"
                )
            if http_status(self.port, path, timeout=1.0) == 200:
                self.ready_after = time.perf_counter() - self.started_at
                self.cpu_at_ready = self.cpu_seconds()
                return self.ready_after
            time.sleep(poll)
        raise TimeoutError(f"{self.name} not ready on {path} within {timeout} s")

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> None:
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _spawn(name: str, argv: list[str], env: dict[str, str], log_path: Path, port: int) -> Server:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        # Own process group: stop() reaches the children too (uvicorn workers).
        process = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(name=name, port=port, process=process, log_path=log_path, started_at=started)


# Settings of the calling process (a test run, a shell) that must not leak into servers.
_NOT_INHERITED = ("IA_", "PROMETHEUS_MULTIPROC_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
    # `mlflow models serve` runs `uvicorn` from PATH: the project's venv first.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


def start_mlflow(*, directory: Path, port: int | None = None) -> Server:
    from ia_continu.stack import mlflow_service

    port = port or free_port()
    service = mlflow_service(port=port, directory=directory)
    env = {**_base_env(), **service.env}
    return _spawn("mlflow server", service.argv, env, directory / "server.log", port)


def start_api(
    *,
    data_dir: Path,
    tracking_uri: str,
    workers: int = 1,
    port: int | None = None,
    log_dir: Path,
    log_level: str = "warning",
) -> Server:
    port = port or free_port()
    env = {
        **_base_env(),
        "IA_PORT": str(port),
        "IA_DATA_DIR": str(data_dir),
        "IA_MLFLOW_TRACKING_URI": tracking_uri,
        "IA_LOG_LEVEL": log_level,
        "IA_WORKERS": str(workers),
        # Follow the champion quickly; the API's own default is 0.5 s.
        "IA_MODEL_REFRESH_INTERVAL": "0.5",
    }
    argv = [str(VENV_BIN / "ia-continu"), "serve"]
    name = f"api ({workers} worker{'s' if workers > 1 else ''})"
    return _spawn(name, argv, env, log_dir / f"api-{port}.log", port)


def start_models_serve(
    *, model_uri: str, tracking_uri: str, log_dir: Path, port: int | None = None
) -> Server:
    port = port or free_port()
    env = {**_base_env(), "MLFLOW_TRACKING_URI": tracking_uri}
    argv = [
        str(VENV_BIN / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    return _spawn("mlflow models serve", argv, env, log_dir / f"models-serve-{port}.log", port)
