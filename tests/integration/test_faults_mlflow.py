"""MLflow server killed at each step of a retrain: 503, the active model unchanged, the
champion alias never on a version that is not served, /predict unaffected throughout,
an API restarted meanwhile still serving, and /retrain working again once MLflow is back
(same port, same store) with nothing restarted."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from mlflow import MlflowClient

from ia_continu.config import Settings
from tests.conftest import FIXED_NOW, LiveServer
from tests.integration.processes import MlflowProcess

pytestmark = pytest.mark.slow

# REST calls of a retrain, in order: the server dies just before the first call whose URL
# contains the marker. (Every MLflow client call goes through requests.Session.request.)
KILL_POINTS = [
    "/runs/create",
    "/runs/log-batch",
    "/mlflow-artifacts/artifacts/",
    "/model-versions/create",
    "/registered-models/alias",
]


@contextlib.contextmanager
def on_mlflow_call(
    marker: str, action: Callable[[], None], *, after: bool = False
) -> Iterator[list[str]]:
    """Run ``action`` once, just before (or just after) the first MLflow call to ``marker``."""
    original = requests.Session.request
    fired: list[str] = []
    lock = threading.Lock()

    def request(self: requests.Session, method: str, url: str, *args: Any, **kw: Any) -> Any:
        with lock:
            due = marker in url and not fired
            if due:
                fired.append(url)
        if due and not after:
            action()
        response = original(self, method, url, *args, **kw)
        if due and after:
            action()
        return response

    requests.Session.request = request  # type: ignore[method-assign]
    try:
        yield fired
    finally:
        requests.Session.request = original  # type: ignore[method-assign]


class PredictWatcher:
    """/predict in a loop for the whole test: every answer is recorded."""

    def __init__(self) -> None:
        self.url = ""
        self.results: Counter[tuple[int, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                try:
                    r = http.post(f"{self.url}/predict", json={"features": [0.3, -0.2]})
                    version = r.json().get("model_version", "") if r.status_code == 200 else ""
                    self.results[(r.status_code, version)] += 1
                except httpx.HTTPError as exc:
                    self.results[(0, type(exc).__name__)] += 1
                time.sleep(0.01)

    def start(self, url: str) -> None:
        self.url = url
        self._thread.start()

    def stop(self) -> Counter[tuple[int, str]]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.results


def _app(settings: Settings) -> Any:
    from ia_continu.api.app import create_app

    return create_app(settings, clock=lambda: FIXED_NOW)


def _active(url: str) -> str | None:
    return httpx.get(f"{url}/models", timeout=30).json()["active_version"]


def _champion(mlflow_url: str, model_name: str) -> int:
    return int(
        MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        .get_model_version_by_alias(model_name, "champion")
        .version
    )


def _registry_version(url: str, version: str) -> int:
    models = httpx.get(f"{url}/models", timeout=30).json()["models"]
    return next(m["registry_version"] for m in models if m["version"] == version)


@pytest.fixture
def database_url(tmp_path: Path) -> str:  # the MLflow side does not depend on the database
    return f"sqlite:///{tmp_path / 'ia.db'}"


def test_mlflow_killed_at_each_retrain_step_then_back(
    make_settings: Callable[..., Settings], database_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "mlflow"
    store.mkdir()
    mlflow = MlflowProcess(store).start()
    settings = make_settings(
        database_url=database_url, mlflow_tracking_uri=mlflow.url, mlflow_timeout=5
    )
    watcher = PredictWatcher()
    figures = []
    try:
        with LiveServer(_app(settings)) as server:
            url = server.url
            assert (
                httpx.post(f"{url}/generate", json={"samples": 500, "seed": 1}).status_code == 200
            )
            assert httpx.post(f"{url}/retrain", timeout=300).status_code == 200
            watcher.start(url)
            for i, marker in enumerate(KILL_POINTS):
                before = _active(url)
                assert before is not None
                with on_mlflow_call(marker, mlflow.kill) as fired:
                    t0 = time.monotonic()
                    r = httpx.post(f"{url}/retrain", timeout=300)
                    failed_in = time.monotonic() - t0
                assert fired, f"no MLflow call to {marker}"
                assert r.status_code == 503, (marker, r.text)
                assert "MLflow" in r.json()["detail"] and "unchanged" in r.json()["detail"]
                assert _active(url) == before
                assert (
                    httpx.post(f"{url}/predict", json={"features": [1, 1]}).json()["model_version"]
                    == before
                )
                # Still down: another attempt is a prompt 503, not a hang.
                assert httpx.post(f"{url}/retrain", timeout=300).status_code == 503
                if i == 0:
                    # A restart while MLflow is down serves the local champion.
                    with LiveServer(_app(settings)) as restarted:
                        r2 = httpx.post(f"{restarted.url}/predict", json={"features": [1, 1]})
                        assert r2.status_code == 200 and r2.json()["model_version"] == before
                # MLflow back on the same port and store; nothing else restarted.
                t1 = time.monotonic()
                mlflow.start()
                t2 = time.monotonic()
                # The alias never moved to the version left half-registered.
                assert _champion(mlflow.url, settings.model_name) == _registry_version(url, before)
                r = httpx.post(f"{url}/retrain", timeout=300)
                assert r.status_code == 200, (marker, r.text)
                new = r.json()["model_version"]
                assert new != before and _active(url) == new
                assert _champion(mlflow.url, settings.model_name) == _registry_version(url, new)
                figures.append(
                    f"{marker}: 503 after {failed_in:.1f} s; MLflow up in {t2 - t1:.1f} s; "
                    f"retrain ok {time.monotonic() - t2:.1f} s later ({before} -> {new})"
                )
            results = watcher.stop()
    finally:
        watcher.stop()
        mlflow.stop()
    print("\n" + "\n".join(figures) + f"\n/predict during the test: {dict(results)}")
    # /predict never failed, and only ever served versions that were active.
    assert {status for status, _ in results} == {200}, results
    assert sum(results.values()) > 100


def test_failure_after_alias_leaves_champion_on_served_model(
    make_settings: Callable[..., Settings], database_url: str, tmp_path: Path
) -> None:
    """The database refuses the activation after MLflow registered the version: 503, and
    MLflow's champion alias stays on the model every process actually serves."""
    import sqlite3

    store = tmp_path / "mlflow"
    store.mkdir()
    mlflow = MlflowProcess(store).start()
    settings = make_settings(
        database_url=database_url, mlflow_tracking_uri=mlflow.url, db_busy_timeout_ms=500
    )
    db_file = database_url.removeprefix("sqlite:///")
    blocker: list[sqlite3.Connection] = []

    def lock_database() -> None:  # another process would do the same: hold the write lock
        conn = sqlite3.connect(db_file, timeout=5, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")
        blocker.append(conn)

    try:
        with LiveServer(_app(settings)) as server:
            url = server.url
            httpx.post(f"{url}/generate", json={"samples": 500, "seed": 1})
            assert httpx.post(f"{url}/retrain", timeout=300).status_code == 200
            before = _active(url)
            assert before is not None
            with on_mlflow_call("/model-versions/create", lock_database, after=True):
                r = httpx.post(f"{url}/retrain", timeout=300)
            assert blocker, "the database was never locked"
            assert r.status_code == 503, r.text
            blocker.pop().execute("ROLLBACK")
            assert _active(url) == before
            assert _champion(mlflow.url, settings.model_name) == _registry_version(url, before)
            r = httpx.post(f"{url}/retrain", timeout=300)
            assert r.status_code == 200, r.text
            assert _champion(mlflow.url, settings.model_name) == _registry_version(
                url, r.json()["model_version"]
            )
    finally:
        for conn in blocker:
            conn.close()
        mlflow.stop()
