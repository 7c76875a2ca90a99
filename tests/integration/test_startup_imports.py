"""The API starts and serves predictions without importing the heavy libraries
(mlflow ~2 s, scikit-learn, scipy, prefect): they load lazily, off these paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ["mlflow", "sklearn", "scipy", "prefect", "skops", "pandas"]

SCRIPT = """
import json, sys
from fastapi.testclient import TestClient
from ia_continu.api.app import create_app
from ia_continu.config import Settings
from ia_continu.ml.predictor import LinearModel

settings = Settings(_env_file=None, data_dir=sys.argv[1], warm_up_ml=False,
                    mlflow_tracking_uri="http://127.0.0.1:9",
                    allowed_hosts="testserver")  # TestClient's Host (keyless Host check)
with TestClient(create_app(settings)) as client:
    assert client.get("/health").status_code == 200
    assert client.post("/predict", json={"features": [1, 2]}).status_code == 503
    client.app.state.ia.serve(LinearModel(version="v1", coef=(1.0, 0.5), intercept=0.1))
    assert client.post("/predict", json={"features": [1, 2]}).status_code == 200
    r = client.post("/predict/batch", json={"instances": [[1, 2], [3, 4]]})
    assert r.status_code == 200, r.text
    assert client.post("/generate", json={"samples": 200}).status_code == 200
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_api_start_and_predict_do_not_import_heavy_libraries(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = set(json.loads(out.stdout.strip().splitlines()[-1]))
    assert "ia_continu" in loaded and "fastapi" in loaded  # the probe did run the app
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
