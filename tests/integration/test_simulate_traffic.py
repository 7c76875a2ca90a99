"""`simulate --source traffic`: the real app answers, labels come back late and partly
through the real /feedback, the real monitoring run learns from them; the report is
checked against the database it wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from ia_continu.cli.simulate_traffic import run_traffic_simulation
from ia_continu.config import Settings
from ia_continu.db import predictions as db_predictions
from ia_continu.db.tables import feedback, monitoring_runs, predictions

pytestmark = pytest.mark.slow


def test_traffic_simulation_promotes_after_drift_and_matches_the_database(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    db = tmp_path / "sim.db"
    settings = make_settings(
        database_url=f"sqlite:///{db}",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        monitor_generate=False,
        min_feedback=100,
    )
    result = run_traffic_simulation(
        settings=settings,
        hours=6,
        rate=1000,
        label_rate=0.3,
        label_delay_minutes=10,
        monitor_every_minutes=60,
        drift_at=2,
        seed=5,
        artifact_location=str(tmp_path / "artifacts"),
    )
    s, slices = result.summary, result.slices
    assert [x.regime for x in slices] == [0, 0, 1, 1, 1, 1]
    assert s.failed_runs == 0
    # Before the drift the initial champion is right: nothing to change.
    assert all(x.decision == "none" for x in slices[:2])
    assert all(set(x.served_versions) == {s.initial_version} for x in slices[:3])
    # The loop promoted a new champion from the drifted traffic's labels, and served it.
    assert s.post_drift_champion is not None and s.post_drift_champion != s.initial_version
    assert s.drift_to_champion_minutes is not None and s.drift_to_champion_minutes >= 60
    promoting = [x for x in slices if x.decision == "promoted"]
    assert promoting and all(x.data_source == "feedback" for x in promoting)
    assert s.post_drift_champion in slices[-1].served_versions or any(
        x.new_version == slices[-1].champion_after for x in promoting
    )
    # Served realized accuracy after the promotion beats the never-retrained model there.
    assert s.after_champion_served_accuracy is not None
    assert s.after_champion_never_retrained_accuracy is not None
    assert s.after_champion_served_accuracy > s.after_champion_never_retrained_accuracy + 0.05
    assert s.served_accuracy > s.never_retrained_accuracy
    assert s.served_to_oracle > 0.9

    # The report against the database.
    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            n_pred = conn.execute(sa.select(sa.func.count()).select_from(predictions)).scalar()
            by_version: dict[str, int] = dict(
                conn.execute(
                    sa.select(predictions.c.model_version, sa.func.count()).group_by(
                        predictions.c.model_version
                    )
                ).all()
            )
            n_feedback = conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar()
            joined = conn.execute(
                sa.select(predictions.c.prediction, feedback.c.label).select_from(
                    predictions.join(
                        feedback, predictions.c.prediction_id == feedback.c.prediction_id
                    )
                )
            ).all()
            runs = conn.execute(sa.select(monitoring_runs).order_by(monitoring_runs.c.id)).all()
        watermark = db_predictions.get_feedback_watermark(engine)
        left = db_predictions.collect_labelled_feedback(
            engine, after=watermark, min_rows=10**9, limit=1
        )
    finally:
        engine.dispose()
    assert n_pred == s.requests == sum(x.requests for x in slices)
    served_counts: Counter[str] = Counter()
    for x in slices:
        served_counts.update(x.served_versions)
    assert by_version == dict(served_counts)
    assert n_feedback == s.labels_posted == len(joined)  # every label matched its prediction
    assert s.labelled_served_accuracy == pytest.approx(
        sum(p == lbl for p, lbl in joined) / len(joined)
    )
    assert len(runs) == s.runs == len(slices)
    assert [r.id for r in runs] == [x.run_id for x in slices]
    assert [r.decision for r in runs] == [x.decision for x in slices]
    assert sum(r.decision == "promoted" for r in runs) == s.promotions
    # The watermark: every posted pair consumed exactly once or still waiting, none lost.
    consumed = sum(r.labelled_samples or 0 for r in runs if r.data_source == "feedback")
    assert consumed + left.available == s.labels_posted


def test_cli_traffic_json(tmp_path: Path) -> None:
    """The command a user runs, reduced: one JSON object on stdout, nothing left behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IA_")}
    env["IA_MIN_FEEDBACK"] = "50"
    proc = subprocess.run(
        [sys.executable, "-m", "ia_continu", "simulate", "--source", "traffic", "--hours", "2",
         "--drift-at", "1", "--rate", "600", "--monitor-every", "60", "--label-delay", "5m",
         "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    summary = result["summary"]
    assert summary["requests"] == 1200 and summary["runs"] == 2
    assert summary["label_delay_minutes"] == 5 and summary["drift_at_hour"] == 1
    assert [s["regime"] for s in result["slices"]] == [0, 1]
    assert list(tmp_path.iterdir()) == []
