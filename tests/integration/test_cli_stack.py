"""The commands a new user runs: `ia-continu db upgrade` and `ia-continu up` (make run)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from typer.testing import CliRunner

from tests.conftest import free_port, wait_http


def test_cli_db_upgrade_creates_seed_tables(tmp_path: Path, monkeypatch: object) -> None:
    from ia_continu.cli import app

    env = {"IA_DATA_DIR": str(tmp_path / "d"), "IA_DATABASE_URL": ""}
    result = CliRunner().invoke(app, ["db", "upgrade"], env=env)
    assert result.exit_code == 0, result.output
    assert "revision" in result.output
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'd' / 'ia_continu_solution.db'}")
    tables = set(sa.inspect(engine).get_table_names())
    assert {"datasets", "dataset_samples", "models"} <= tables


def test_cli_up_starts_mlflow_and_api_then_stops_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    api_port, mlflow_port = free_port(), free_port()
    env = {
        **os.environ,
        "IA_PORT": str(api_port),
        "IA_DATA_DIR": str(tmp_path / "data"),
        "IA_MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
    }
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ia-continu")),
            "up",
            "--no-with-prefect",
            "--mlflow-port",
            str(mlflow_port),
            "--mlflow-dir",
            str(tmp_path / "mlflow"),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(f"http://127.0.0.1:{api_port}/health", timeout=180, proc=proc)
        wait_http(f"http://127.0.0.1:{mlflow_port}/health", timeout=60, proc=proc)
        base = f"http://127.0.0.1:{api_port}"
        assert httpx.post(f"{base}/generate", json={"samples": 300}).status_code == 200
        r = httpx.post(f"{base}/retrain", timeout=120)
        assert r.status_code == 200, r.text
        assert httpx.post(f"{base}/predict", json={"features": [1, 2]}).status_code == 200
        assert (tmp_path / "mlflow" / "mlflow.db").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "is up" in text
    time.sleep(0.5)
    for port in (api_port, mlflow_port):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            raise AssertionError(f"port {port} still answers after Ctrl-C")
        except httpx.HTTPError:
            pass
