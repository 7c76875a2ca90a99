"""The README's quick-start curl tour, run as written against a live server.

`make run` starts MLflow, Prefect and `ia-continu serve` on the default ports; here the closest
equivalent the suite can start on free ports: a real `mlflow server` and a real
`ia-continu serve` (one worker, a fresh SQLite database, its own registered model name so
that the first version is v1). The tour needs no Prefect server (`POST /monitoring/run` runs
in-process). Only `localhost:9000` is replaced, by the server's address; the commands run in
one `bash` with `set -euo pipefail` and real curl (`curl -fsS`: any HTTP error fails).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.processes import ApiProcess
from tests.readme_tour import (
    TourError,
    build_script,
    check_output,
    read_tour,
    split_outputs,
)

README = Path(__file__).resolve().parents[2] / "README.md"

pytestmark = pytest.mark.slow


@pytest.fixture
def api(tmp_path: Path, mlflow_server: str) -> Iterator[ApiProcess]:
    if shutil.which("curl") is None:
        pytest.fail("the README's tour needs curl (apt-get install curl)")
    database_url = f"sqlite:///{tmp_path / 'tour.db'}"
    with ApiProcess(
        root=tmp_path, database_url=database_url, mlflow_url=mlflow_server, workers=1
    ) as server:
        yield server


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_readme_tour_runs_against_a_live_server(api: ApiProcess, tmp_path: Path) -> None:
    steps = read_tour(README)
    result = _run(build_script(steps, api.url), tmp_path)
    outputs = split_outputs(result.stdout)
    assert result.returncode == 0, (
        f"the README's tour failed at step {max(outputs, default=0)} "
        f"(exit {result.returncode}):\n{result.stderr}\n--- stdout\n{result.stdout}\n"
        f"--- server log\n{api.log()[-4000:]}"
    )
    assert sorted(outputs) == [step.number for step in steps]  # every step ran
    answers = {step.number: check_output(step, outputs[step.number]) for step in steps}

    # What the tour says it shows, beyond field names.
    by_route = {
        route: answers[step.number]
        for step in steps
        for route in ("/health", "/retrain", "/predict ", "/feedback", "/models/v1/activate")
        if route in step.script + " "
    }
    assert by_route["/health"]["status"] == "ok"
    assert by_route["/retrain"]["model_version"] == "v1"
    assert by_route["/feedback"]["stored"] == 1  # the prediction_id of /predict was found
    assert by_route["/models/v1/activate"]["model_version"] == "v1"


def test_a_broken_readme_step_fails_the_tour(api: ApiProcess, tmp_path: Path) -> None:
    # The same machinery on a copy of the README whose first route was renamed: the tour
    # stops at that step with curl's error, and nothing after it runs.
    text = README.read_text(encoding="utf-8")
    broken = tmp_path / "README.md"
    broken.write_text(text.replace("localhost:9000/health", "localhost:9000/healthz", 1))
    steps = read_tour(broken)
    result = _run(build_script(steps, api.url), tmp_path)
    assert result.returncode != 0
    assert "404" in result.stderr
    outputs = split_outputs(result.stdout)
    assert sorted(outputs) == [1]
    with pytest.raises(TourError):
        check_output(steps[0], outputs[1])
