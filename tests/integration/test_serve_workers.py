"""A real `ia-continu serve --workers 2`: metrics summed over the workers, stale files
cleaned at start, dead workers marked, and a rollback followed by every worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from ia_continu.api.metrics_multiprocess import multiprocess_dir_for
from ia_continu.config import Settings
from tests.conftest import free_port, wait_http
from tests.integration.test_metrics import parse_metrics, sample_value

KEY = "workers-test-key-51c0e8a2b7"
AUTH = {"X-API-Key": KEY}
pytestmark = pytest.mark.slow


class Served:
    def __init__(self, url: str, proc: subprocess.Popen[bytes]) -> None:
        self.url, self.proc = url, proc

    def scrape(self) -> dict[str, list[Any]]:
        # httpx.get opens a new connection each time: any worker may answer.
        r = httpx.get(f"{self.url}/metrics", timeout=10)
        assert r.status_code == 200
        return parse_metrics(r.text)

    def served_by_pid(self) -> dict[str, str]:
        """pid -> the version that worker serves (from the liveall gauge)."""
        samples = self.scrape().get("ia_served_model", [])
        return {s.labels["pid"]: s.labels["version"] for s in samples if s.value == 1}

    def predict_versions(self, n: int) -> list[str]:
        def one(i: int) -> str:
            r = httpx.post(f"{self.url}/predict", json={"features": [i / n, -i / n]}, timeout=10)
            assert r.status_code == 200, r.text
            return str(r.json()["model_version"])

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(n)))


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def _write_stale_metrics(directory: Path) -> None:
    """What a previous run would have left: a counter file of a long-gone process."""
    directory.mkdir(parents=True, exist_ok=True)
    stale = MmapedDict(str(directory / "counter_999999.db"))
    key = mmap_key(
        "ia_http_requests",
        "ia_http_requests_total",
        ["method", "route", "status"],
        ["GET", "/stale", "200"],
        "stale",
    )
    stale.write_value(key, 42.0, 0.0)
    stale.close()


@pytest.fixture
def served(mlflow_server: str, tmp_path: Path) -> Iterator[Served]:
    port = free_port()
    data_dir = tmp_path / "data"
    settings = Settings(_env_file=None, data_dir=data_dir, port=port)  # type: ignore[call-arg]
    _write_stale_metrics(multiprocess_dir_for(settings))
    env = {k: v for k, v in os.environ.items() if not k.startswith("IA_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        IA_DATA_DIR=str(data_dir),
        IA_MLFLOW_TRACKING_URI=mlflow_server,
        IA_MODEL_NAME=f"test_model_{uuid.uuid4().hex[:8]}",
        IA_MLFLOW_EXPERIMENT="ia_continu_test",
        IA_API_KEYS=KEY,
        IA_MODEL_REFRESH_INTERVAL="0.2",
        IA_TIMEZONE="UTC",
        IA_LOG_LEVEL="warning",
    )
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [sys.executable, "-m", "ia_continu", "serve", "--workers", "2", "--port", str(port)],
        cwd=tmp_path,  # no .env
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=120, proc=proc)
        yield Served(url, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        print((tmp_path / "serve.log").read_text()[-3000:])


def test_serve_workers_sum_metrics_and_follow_rollback(served: Served) -> None:
    m = served.scrape()
    assert not any(s.labels.get("route") == "/stale" for s in m["ia_http_requests"])

    for hour, seed in ((2, 1), (3, 2)):
        r = httpx.post(
            f"{served.url}/generate",
            json={"samples": 1000, "hour": hour, "seed": seed},
            headers=AUTH,
            timeout=30,
        )
        assert r.status_code == 200, r.text
        r = httpx.post(f"{served.url}/retrain", headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text

    # Both workers load v2 (one served the retrain, the other follows the database).
    _wait_for(lambda: list(served.served_by_pid().values()) == ["v2", "v2"])
    pids = set(served.served_by_pid())

    assert set(served.predict_versions(120)) == {"v2"}
    for _ in range(6):  # whichever worker answers, it reports the sum of both
        m = served.scrape()
        assert sample_value(m, "ia_http_requests_total", route="/predict", status="200") == 120
        assert sample_value(m, "ia_predictions_total", model_version="v2") == 120
        assert sample_value(m, "ia_retrains_total", outcome="success") == 2
        assert sample_value(m, "ia_champion_info", version="v2") == 1

    # Rollback through one worker; the other follows within its refresh interval.
    started = time.monotonic()
    r = httpx.post(f"{served.url}/models/v1/activate", headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    _wait_for(lambda: served.served_by_pid() == dict.fromkeys(pids, "v1"))
    print(f"every worker served v1 {time.monotonic() - started:.2f} s after the call")
    assert set(served.predict_versions(40)) == {"v1"}
    assert sample_value(served.scrape(), "ia_champion_info", version="v1") == 1

    # A killed worker: uvicorn starts another; its live gauge goes, its counts stay.
    victim = int(sorted(pids)[0])
    assert _parent_pid(victim) == served.proc.pid  # one of our own workers
    os.kill(victim, signal.SIGKILL)
    _wait_for(
        lambda: (
            len(by_pid := served.served_by_pid()) == 2
            and str(victim) not in by_pid
            and set(by_pid.values()) == {"v1"}
        )
    )
    m = served.scrape()
    assert sample_value(m, "ia_http_requests_total", route="/predict", status="200") == 160
    assert sample_value(m, "ia_predictions_total", model_version="v1") == 40


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])
