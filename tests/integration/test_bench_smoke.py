"""`make bench-smoke` keeps working: every benchmark section runs with tiny sizes.
Not a timed test: it checks that the suite completes and reports each figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bench_smoke_runs_every_section(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    [report] = tmp_path.glob("bench-*-smoke.json")
    results = json.loads(report.read_text())
    for section in (
        "machine",
        "startup",
        "first_retrain_after_start",
        "retrain",
        "predict_batch",
        "generate",
        "predict",
        "workers2",
        "cli_generate",
        "growth",
        "feedback",
    ):
        assert section in results, section
    assert results["startup"]["heavy_modules_at_startup"] == []
    assert results["cli_generate"]["peak_rss_mb"] > 0
    assert [line["rows"] for line in results["growth"]] == [1_000, 10_000]
    retrain = results["retrain"]["1000"]["breakdown_ms"]
    assert {"load_data", "fit", "mlflow_model_log", "mlflow_registration"} <= set(retrain)
    if results["wrk"]:  # wrk could be installed: throughput and ratios were measured
        c8 = results["predict"]["c8"]
        assert c8["predict"]["errors"] == 0 and c8["health"]["errors"] == 0
        assert c8["predict_over_health"] > 0 and c8["ours_over_mlflow"] > 0
    assert "predict/batch" in out.stdout and "section" in out.stdout  # the table printed
