"""`ia-continu simulate --json` in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_simulate_json_served_model_beats_never_retrained(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IA_")}
    proc = subprocess.run(
        [sys.executable, "-m", "ia_continu", "simulate", "--hours", "6", "--batch", "500",
         "--seed", "3", "--json"],
        cwd=tmp_path,  # a temporary local MLflow store must not write ./mlruns here
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout is exactly one JSON object
    hours, summary = result["hours"], result["summary"]
    assert [h["hour"] for h in hours] == [0, 1, 2, 3, 4, 5]
    # The initial champion saw hour 0: the same parity passes, the next hour drifts.
    assert hours[0]["decision"] == "none" and not hours[0]["drift_detected"]
    assert hours[1]["drift_detected"] and hours[1]["decision"] == "promoted"
    assert all(h["status"] != "failed" for h in hours)
    for h in hours:
        if h["decision"] == "promoted":
            assert h["served_version"] == h["new_version"]
    assert summary["promotions"] >= 3
    assert summary["mean_served_accuracy"] > summary["mean_never_retrained_accuracy"] + 0.02
    assert summary["mean_served_accuracy"] > 0.85
    assert summary["mean_oracle_accuracy"] == pytest.approx(
        summary["mean_served_accuracy"], abs=0.02
    )
    assert list(tmp_path.iterdir()) == []
