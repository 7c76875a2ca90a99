"""Real server processes for the load and fault tests: `ia-continu serve` and `mlflow server`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.conftest import free_port, wait_http

BIN = Path(sys.executable).parent


class ApiProcess:
    """`ia-continu serve --workers N` on a free port, in its own process group."""

    def __init__(
        self,
        *,
        root: Path,
        database_url: str,
        mlflow_url: str,
        workers: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.model_name = f"load_{uuid.uuid4().hex[:8]}"
        self.env = {
            **os.environ,
            "IA_DATA_DIR": str(root / "data"),
            "IA_DATABASE_URL": database_url,
            "IA_MLFLOW_TRACKING_URI": mlflow_url,
            "IA_MODEL_NAME": self.model_name,
            "IA_MLFLOW_EXPERIMENT": f"exp_{uuid.uuid4().hex[:8]}",
            "IA_TIMEZONE": "UTC",
            "IA_LOG_LEVEL": "warning",
            "IA_MODEL_REFRESH_INTERVAL": "0.2",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"api-{self.port}.log"
        self.starts = 0
        self.extra_args = ["--workers", str(workers)]

    def start(self, timeout: float = 120) -> ApiProcess:
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - inherited by the child, closed below
        try:
            self.proc = subprocess.Popen(
                [str(BIN / "ia-continu"), "serve", "--port", str(self.port), *self.extra_args],
                env=self.env,
                cwd=self.root,  # no stray .env file is read
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        wait_http(f"{self.url}/health", timeout=timeout, proc=self.proc)
        return self

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM to the server (uvicorn's supervisor); its exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL to every process of the server at once, as a crash or OOM would."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.proc is not None:
            # Workers of a killed supervisor must not outlive the test.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ApiProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class MlflowProcess:
    """A `mlflow server` that a test may kill and start again on the same port and store."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 180) -> MlflowProcess:
        log = open(self.root / "mlflow.log", "ab")  # noqa: SIM115 - closed below
        try:
            self.proc = subprocess.Popen(
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--backend-store-uri",
                    f"sqlite:///{self.root / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(self.root / "artifacts"),
                    "--workers",
                    "1",
                ],
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        wait_http(f"{self.url}/health", timeout=timeout, proc=self.proc)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def dataset_integrity(database_url: str) -> tuple[list[tuple[int, int, int]], int]:
    """(generation_id, samples_count, stored rows) for every dataset, and the number of
    sample rows that belong to no dataset."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT d.generation_id, d.samples_count, COUNT(s.id) FROM datasets d "
                    "LEFT JOIN dataset_samples s ON s.generation_id = d.generation_id "
                    "GROUP BY d.id, d.generation_id, d.samples_count ORDER BY d.id"
                )
            ).all()
            orphans = conn.execute(
                sa.text(
                    "SELECT COUNT(*) FROM dataset_samples s WHERE NOT EXISTS "
                    "(SELECT 1 FROM datasets d WHERE d.generation_id = s.generation_id)"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return [(r[0], r[1], r[2]) for r in rows], int(orphans)


def server_connections(port: int) -> tuple[int, int]:
    """(accepted, waiting in the listen backlog) established connections to ``port``.

    A connection still in the backlog has no socket inode yet: no worker has accepted
    it, so no worker has started on its request."""
    accepted = waiting = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            next(fh)
            for line in fh:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "01" and int(local.rsplit(":", 1)[1], 16) == port:
                    if inode == "0":
                        waiting += 1
                    else:
                        accepted += 1
    return accepted, waiting


def count_predictions(database_url: str) -> int:
    """Rows in the prediction log."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM predictions")).scalar_one())
    finally:
        engine.dispose()


def logged_versions(database_url: str) -> set[str]:
    """The model versions named in the prediction log."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT DISTINCT model_version FROM predictions"))
            return {r[0] for r in rows}
    finally:
        engine.dispose()


def post(
    url: str,
    path: str,
    body: object = None,
    timeout: float = 120,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=timeout, headers=headers)
