"""The continuous-learning loop over simulated hours, without waiting for the clock.

Each simulated hour: a labelled batch of that hour arrives, the real monitoring run
(the same ``service.execute_run`` as the flow and the API, with MLflow logging and
promotion) decides, then the model now served is scored on fresh traffic of that
hour, next to a model never retrained and an oracle trained on that hour's batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from ia_continu.config import Settings
from ia_continu.db import datasets as db_datasets
from ia_continu.ml.data import Dataset, generate_dataset
from ia_continu.ml.evaluate import compute_metrics
from ia_continu.ml.predictor import LinearModel
from ia_continu.services import monitoring as service
from ia_continu.services import monitoring_steps

SIM_START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class HourRow:
    step: int
    hour: int
    champion_version: str | None  # served before this hour's run
    champion_batch_accuracy: float | None  # the champion on this hour's labelled batch
    ks_statistic_feature1: float | None
    ks_p_value_feature1: float | None
    psi_feature1: float | None
    drift_detected: bool
    status: str
    decision: str
    new_version: str | None
    served_version: str  # served after the run
    served_accuracy: float  # on fresh traffic of this hour
    never_retrained_accuracy: float
    oracle_accuracy: float
    run_seconds: float
    error: str | None


@dataclass(frozen=True, slots=True)
class Summary:
    hours: int
    batch: int
    initial_version: str
    final_version: str
    mean_served_accuracy: float
    mean_never_retrained_accuracy: float
    mean_oracle_accuracy: float
    retrains: int
    promotions: int
    failed_runs: int
    mean_run_seconds: float
    total_seconds: float
    mlflow_tracking_uri: str


@dataclass(frozen=True, slots=True)
class Simulation:
    rows: list[HourRow]
    summary: Summary

    def as_dict(self) -> dict[str, Any]:
        return {"hours": [asdict(r) for r in self.rows], "summary": asdict(self.summary)}


def run_simulation(
    *,
    settings: Settings,
    hours: int,
    batch: int,
    start_hour: int = 0,
    seed: int = 0,
    artifact_location: str | None = None,
    on_hour: Callable[[HourRow], None] | None = None,
    quiet: bool = True,
) -> Simulation:
    """Simulate ``hours`` hours from ``start_hour`` on the database and MLflow store in
    ``settings`` (use throw-away ones: it creates models and moves the champion)."""
    return asyncio.run(
        _simulate(
            settings=settings,
            hours=hours,
            batch=batch,
            start_hour=start_hour,
            seed=seed,
            artifact_location=artifact_location,
            on_hour=on_hour,
            quiet=quiet,
        )
    )


async def _simulate(
    *,
    settings: Settings,
    hours: int,
    batch: int,
    start_hour: int,
    seed: int,
    artifact_location: str | None,
    on_hour: Callable[[HourRow], None] | None,
    quiet: bool,
) -> Simulation:
    from ia_continu.db import model_files
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.ml.train import train_model
    from ia_continu.registry import core as registry
    from ia_continu.services import lifecycle

    if hours < 1:
        raise ValueError("hours must be at least 1")
    if not 0 <= start_hour <= 23:
        raise ValueError("start_hour must be in 0..23")
    t_start = time.perf_counter()
    # 63-bit seeds: stored in a signed 64-bit column.
    seeds = iter(
        int(s) >> 1
        for s in np.random.SeedSequence(seed).generate_state(2 * hours + 1, dtype=np.uint64)
    )
    engine = create_db_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine)
        with _silenced(quiet):
            await asyncio.to_thread(
                registry.ensure_experiment, settings, artifact_location=artifact_location
            )
            # The model deployed when the simulation starts (and never retrained below).
            first = await asyncio.to_thread(
                monitoring_steps.generate_batch,
                engine=engine,
                hour=start_hour,
                samples=batch,
                now=SIM_START + timedelta(hours=start_hour - 1),
                seed=next(seeds),
                source="simulate",
            )
            initial = await asyncio.to_thread(
                lifecycle.retrain,
                settings=settings,
                engine=engine,
                generation_id=first.generation_id,
                now=SIM_START + timedelta(hours=start_hour - 1),
            )
        never_retrained = initial.model
        rows: list[HourRow] = []
        for step in range(hours):
            hour = (start_hour + step) % 24
            now = SIM_START + timedelta(hours=start_hour + step)
            batch_seed, traffic_seed = next(seeds), next(seeds)
            t0 = time.perf_counter()
            with _silenced(quiet):
                await asyncio.to_thread(
                    monitoring_steps.generate_batch,
                    engine=engine,
                    hour=hour,
                    samples=batch,
                    now=now,
                    seed=batch_seed,
                    source="simulate",
                )
                outcome = await service.execute_run(
                    settings=settings,
                    engine=engine,
                    check_health=False,
                    notify=False,
                    clock=_ticking(now),
                )
            run_seconds = time.perf_counter() - t0
            run = outcome.run
            served = model_files.load_served_model(engine=engine, models_dir=settings.models_dir)
            assert served is not None
            labelled = _load(engine, run.generation_id)
            oracle = train_model(
                labelled,
                hyperparameters=lifecycle.hyperparameters_from(settings),
                test_size=settings.test_size,
                random_state=settings.random_state,
            ).estimator
            traffic = generate_dataset(batch, hour=hour, seed=traffic_seed)
            oracle_model = LinearModel.from_estimator(oracle, version="oracle")
            f1 = (run.drift or {}).get("feature1", {})
            row = HourRow(
                step=step,
                hour=hour,
                champion_version=run.champion_version,
                champion_batch_accuracy=run.accuracy,
                ks_statistic_feature1=f1.get("ks_statistic"),
                ks_p_value_feature1=f1.get("ks_p_value"),
                psi_feature1=f1.get("psi"),
                drift_detected=run.drift_detected,
                status=run.status,
                decision=run.decision,
                new_version=run.new_version,
                served_version=served.version,
                served_accuracy=_accuracy(served, traffic),
                never_retrained_accuracy=_accuracy(never_retrained, traffic),
                oracle_accuracy=_accuracy(oracle_model, traffic),
                run_seconds=run_seconds,
                error=run.error,
            )
            rows.append(row)
            if on_hour is not None:
                on_hour(row)
    finally:
        engine.dispose()
    summary = Summary(
        hours=hours,
        batch=batch,
        initial_version=initial.record.version,
        final_version=rows[-1].served_version,
        mean_served_accuracy=_mean(r.served_accuracy for r in rows),
        mean_never_retrained_accuracy=_mean(r.never_retrained_accuracy for r in rows),
        mean_oracle_accuracy=_mean(r.oracle_accuracy for r in rows),
        retrains=sum(r.new_version is not None for r in rows),
        promotions=sum(r.decision == "promoted" for r in rows),
        failed_runs=sum(r.status == "failed" for r in rows),
        mean_run_seconds=_mean(r.run_seconds for r in rows),
        total_seconds=time.perf_counter() - t_start,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
    )
    return Simulation(rows=rows, summary=summary)


def _ticking(start: datetime) -> Callable[[], datetime]:
    """A simulated clock inside one hour: advances a millisecond per call so that the
    run's timestamps stay ordered."""
    calls = [0]

    def now() -> datetime:
        calls[0] += 1
        return start + timedelta(milliseconds=calls[0])

    return now


def _load(engine: Any, generation_id: int | None) -> Dataset:
    dataset = db_datasets.load_dataset(engine, generation_id) if generation_id is not None else None
    if dataset is None:
        raise LookupError(f"generation {generation_id} not found")
    return dataset


def _accuracy(model: LinearModel, data: Dataset) -> float:
    predicted, _ = model.predict_batch(data.features)
    return compute_metrics(data.target, predicted).accuracy


def _mean(values: Any) -> float:
    items = list(values)
    return float(sum(items) / len(items)) if items else float("nan")


@contextlib.contextmanager
def _silenced(quiet: bool) -> Iterator[None]:
    """MLflow prints run links and registration notes on stdout/stderr; they would
    break --json output and bury the table."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
