"""A full or read-only data disk (issue 11, part 3), against a real
`ia-continu serve --workers 2` whose IA_DATA_DIR is a small tmpfs.

Before: once the disk was full, plain GETs killed the workers with SIGBUS (the Prometheus
multiprocess files were memory-mapped in the data directory) and uvicorn restarted them
in a loop. Now: no worker dies, /health answers 200, writes answer 503, /metrics answers.
Mounting needs root (as in CI here); elsewhere these tests are skipped, saying why."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, wait_http

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def _tmpfs(path: Path, *, size: str, read_only: bool = False) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the file system refuses even one more byte."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 12, 1):
            block = b"\xff" * chunk
            while True:
                try:
                    fh.write(block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    stat = os.statvfs(directory)
    assert stat.f_bavail == 0
    return filler


def _children(pid: int) -> set[int]:
    """uvicorn's worker processes (not multiprocessing's resource tracker)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    workers = set()
    for child in map(int, text.split()):
        with contextlib.suppress(OSError):
            if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.add(child)
    return workers


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IA_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        IA_DATA_DIR=str(data_dir),
        IA_MLFLOW_TRACKING_URI="http://127.0.0.1:9",  # not needed: the model is seeded
        IA_MODEL_NAME=f"test_model_{uuid.uuid4().hex[:8]}",
        IA_TIMEZONE="UTC",
        IA_LOG_LEVEL="warning",
        IA_WARM_UP_ML="false",
        IA_PREDICTION_LOG_FLUSH_INTERVAL="0.2",
    )
    return env


def _seed_model(data_dir: Path) -> None:
    from ia_continu.config import Settings
    from ia_continu.db import models as db_models
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.ml.predictor import LinearModel

    settings = Settings(_env_file=None, data_dir=data_dir)  # type: ignore[call-arg]
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    model = LinearModel(version="v1", coef=(1.7, -0.9), intercept=0.2)
    db_models.insert_model(
        engine,
        db_models.ModelRecord(
            version="v1",
            accuracy=0.9,
            training_samples=800,
            created_at=datetime.now(UTC),
            is_active=True,
            parameters=model.to_json(),
        ),
        activate=True,
    )
    engine.dispose()


def test_full_data_disk_never_kills_a_worker(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "disk", size="8m") as disk:
        data_dir = disk / "data"
        _seed_model(data_dir)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = tmp_path / "serve.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
        proc = subprocess.Popen(
            [sys.executable, "-m", "ia_continu", "serve", "--workers", "2", "--port", str(port)],
            cwd=tmp_path,
            env=_env(data_dir),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_http(f"{url}/health", timeout=120, proc=proc)
            with httpx.Client(base_url=url, timeout=30) as c:
                assert c.post("/predict", json={"features": [0.1, 0.2]}).status_code == 200
                workers = _children(proc.pid)
                assert len(workers) == 2
                filler = _fill(disk)

                for i in range(40):
                    # A new connection each time: either worker may answer.
                    with httpx.Client(base_url=url, timeout=30) as one:
                        assert one.get("/health").status_code == 200
                        assert one.get("/docs").status_code == 200
                        assert one.get("/monitoring/latest").status_code in (404, 503)
                        assert one.get("/models").status_code == 200
                        metrics = one.get("/metrics")
                        assert metrics.status_code == 200
                        assert "ia_http_requests_total" in metrics.text
                        r = one.post("/predict", json={"features": [i / 10, -i / 10]})
                        assert r.status_code == 200, r.text  # served from memory
                        assert one.get("/predictions/stats").status_code in (200, 503)
                        generated = one.post("/generate", json={"samples": 10_000})
                        assert generated.status_code == 503, generated.text
                        assert "Retry-After" in generated.headers
                assert _children(proc.pid) == workers, "a worker died and was replaced"
                assert proc.poll() is None

                # Space again: writes work again without a restart.
                filler.unlink()
                assert c.post("/generate", json={"samples": 100}).status_code == 200
                assert _children(proc.pid) == workers
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        text = log_path.read_text(errors="replace")
        print(text[-3000:])
        assert "SIGBUS" not in text and "Child process" not in text  # uvicorn's restarts
        assert "disk cannot take a write" in text  # the log line says what is full


@pytest.mark.parametrize("command", [["serve", "--workers", "2"], ["up", "--no-with-prefect"]])
def test_read_only_data_dir_start_up_is_one_line(tmp_path: Path, command: list[str]) -> None:
    with _tmpfs(tmp_path / "ro", size="1m", read_only=True) as disk:
        data_dir = disk / "data"
        done = subprocess.run(
            [sys.executable, "-m", "ia_continu", *command, "--port", str(free_port())]
            if command[0] == "serve"
            else [sys.executable, "-m", "ia_continu", *command],
            cwd=tmp_path,
            env=_env(data_dir),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert str(data_dir) in lines[0] and "EROFS" in lines[0] and "errno 30" in lines[0]


def test_full_data_dir_start_up_is_one_line(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "full", size="1m") as disk:
        (disk / "data").mkdir()
        _fill(disk)
        done = subprocess.run(
            [sys.executable, "-m", "ia_continu", "serve", "--port", str(free_port())],
            cwd=tmp_path,
            env=_env(disk / "data"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "ENOSPC" in lines[0] and str(disk / "data") in lines[0]
