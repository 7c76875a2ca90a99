"""Time to answer with a frozen MLflow (SIGSTOP mid-retrain), default settings.

One `mlflow server` subprocess, the API in-process (uvicorn thread), one model trained;
then a /retrain during which MLflow is stopped just before the version is registered,
and an activation sent as soon as it is stopped. Prints both times. Runs against any
version of the code on sys.path (PYTHONPATH=<other checkout>/src to compare), so that
the figures before/after a change come from the same script on the same machine:

    .venv/bin/python -m bench.mlflow_frozen
    PYTHONPATH=/tmp/main/src .venv/bin/python -m bench.mlflow_frozen
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx


def main() -> None:
    from tests.conftest import LiveServer
    from tests.integration.processes import MlflowProcess
    from tests.integration.test_faults_mlflow import on_mlflow_call

    import ia_continu
    from ia_continu.api.app import create_app
    from ia_continu.config import Settings

    print(f"code: {Path(ia_continu.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="bench-frozen-") as tmp:
        root = Path(tmp)
        (root / "mlflow").mkdir()
        mlflow = MlflowProcess(root / "mlflow").start()
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            data_dir=root / "data",
            database_url=f"sqlite:///{root / 'ia.db'}",
            mlflow_tracking_uri=mlflow.url,
            model_refresh_interval=0.2,
            timezone="UTC",
        )
        print(
            f"IA_MLFLOW_TIMEOUT={settings.mlflow_timeout:g} "
            f"IA_MLFLOW_MAX_RETRIES={settings.mlflow_max_retries} "
            f"IA_MLFLOW_DEADLINE={getattr(settings, 'mlflow_deadline', '(none)')}"
        )
        frozen = threading.Event()

        def freeze() -> None:
            assert mlflow.proc is not None
            os.killpg(mlflow.proc.pid, signal.SIGSTOP)
            frozen.set()

        try:
            with LiveServer(create_app(settings)) as server:
                url = server.url
                httpx.post(f"{url}/generate", json={"samples": 500, "seed": 1}, timeout=300)
                r = httpx.post(f"{url}/retrain", timeout=600)
                assert r.status_code == 200, r.text
                version = r.json()["model_version"]
                answers: dict[str, Any] = {}

                def retrain() -> None:
                    t0 = time.monotonic()
                    r = httpx.post(f"{url}/retrain", timeout=600)
                    answers["retrain"] = (r.status_code, time.monotonic() - t0)

                with on_mlflow_call("/model-versions/create", freeze):
                    worker = threading.Thread(target=retrain)
                    worker.start()
                    assert frozen.wait(timeout=300)
                    t_frozen = time.monotonic()
                    r = httpx.post(f"{url}/models/{version}/activate", timeout=600)
                    activation = (r.status_code, time.monotonic() - t_frozen)
                    worker.join()
                status, seconds = answers["retrain"]
                print(
                    f"/retrain (MLflow frozen before registration): {status} after {seconds:.2f} s"
                )
                print(
                    f"POST /models/{version}/activate sent once frozen: {activation[0]} "
                    f"after {activation[1]:.2f} s"
                )
        finally:
            if mlflow.proc is not None and mlflow.proc.poll() is None:
                os.killpg(mlflow.proc.pid, signal.SIGCONT)
            mlflow.stop()


if __name__ == "__main__":
    main()
