"""The continuous-learning loop on simulated *traffic*: the real API answers, labels come
back late and partly, and the real monitoring run learns from them.

Simulated time is cut into slices of ``monitor_every`` minutes. For each slice:

1. ``rate * monitor_every / 60`` inputs of the current regime (hour parity 0 before
   ``drift_at``, parity 1 from ``drift_at`` on: the seed's drift rule, feature1 - 0.5,
   as a regime change) go through the real ``POST /predict/batch`` of the app built by
   ``create_app`` (its lifespan, prediction log and routes), in calls of
   ``CALL_ROWS`` rows; the answers are kept with the truth;
2. at the end of the slice, the truth of every selected prediction (a fraction
   ``label_rate`` of them, drawn once) whose simulated time + ``label_delay`` has passed
   is posted to the real ``POST /feedback``;
3. the real monitoring run (``service.execute_run``) runs, learning from the feedback,
   and the app is told to serve whatever is now active before the next slice.

Clocks: the API stamps predictions (``created_at``) and feedback (``received_at``) with
the real clock, and the monitoring run uses the real clock too. Everything happens in
order in one process (predict, then feedback, then the prediction log is flushed, then
the run), so the real-clock order is the simulated order: the watermark of each run
(highest ``predictions.id``, latest ``feedback.received_at``) bounds exactly the pairs
posted before it, and the live-drift window (predictions since the previous run's real
``started_at``) is the slice just served. Simulated time exists only here, for the label
delay and the report.

Served accuracy is measured on what the app answered (the ``/predict/batch`` responses
against the truth); the never-retrained model is the initial champion; the oracle is a
model trained on a fresh labelled batch of the current regime. Both are scored on the
same inputs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ia_continu.config import Settings
from ia_continu.ml.data import generate_dataset
from ia_continu.ml.predictor import LinearModel
from ia_continu.services import monitoring as service
from ia_continu.services import monitoring_steps
from ia_continu.services.simulate import SIM_START, _silenced

CALL_ROWS = 100  # rows per /predict/batch call: many small clients rather than one
ORACLE_ROWS = 5_000  # labelled rows the oracle of each regime is trained on


@dataclass(frozen=True, slots=True)
class SliceRow:
    step: int
    minute: int  # simulated minutes since the start, at the start of the slice
    regime: int  # 0 before the drift, 1 from the drift on (hour parity of the inputs)
    requests: int
    served_versions: dict[str, int]  # model version -> requests it answered
    served_accuracy: float
    never_retrained_accuracy: float
    oracle_accuracy: float
    labels_posted: int  # at the end of the slice (due by then)
    run_id: int | None
    run_status: str
    decision: str
    data_source: str | None
    labelled_samples: int | None
    drift_detected: bool
    new_version: str | None
    champion_after: str | None  # active after the run (served from the next slice)
    run_seconds: float
    error: str | None


@dataclass(frozen=True, slots=True)
class TrafficSummary:
    hours: int
    rate: int
    label_rate: float
    label_delay_minutes: float
    monitor_every_minutes: int
    drift_at_hour: int
    requests: int
    labels_posted: int
    labels_pending: int  # selected but not yet due when the simulation ended
    initial_version: str
    final_version: str | None
    served_accuracy: float  # over all traffic, on what the app answered
    never_retrained_accuracy: float
    oracle_accuracy: float
    served_to_oracle: float
    after_drift_served_accuracy: float | None
    after_drift_never_retrained_accuracy: float | None
    after_drift_oracle_accuracy: float | None
    # From the first request served by a champion promoted after the drift, to the end.
    after_champion_served_accuracy: float | None
    after_champion_never_retrained_accuracy: float | None
    drift_to_champion_minutes: float | None  # simulated time
    post_drift_champion: str | None
    labelled_served_accuracy: float | None  # served class vs posted label (as the DB says)
    runs: int
    promotions: int
    failed_runs: int
    total_seconds: float  # wall clock
    mlflow_tracking_uri: str


@dataclass(frozen=True, slots=True)
class TrafficSimulation:
    slices: list[SliceRow]
    summary: TrafficSummary

    def as_dict(self) -> dict[str, Any]:
        return {"slices": [asdict(s) for s in self.slices], "summary": asdict(self.summary)}


@dataclass
class _Served:
    """Every answered request, in order (simulated minute, truth, answers)."""

    minute: list[NDArray[np.float64]] = field(default_factory=list)
    truth: list[NDArray[np.int64]] = field(default_factory=list)
    served: list[NDArray[np.int64]] = field(default_factory=list)
    never: list[NDArray[np.int64]] = field(default_factory=list)
    oracle: list[NDArray[np.int64]] = field(default_factory=list)
    version: list[str] = field(default_factory=list)


def run_traffic_simulation(
    *,
    settings: Settings,
    hours: int,
    rate: int,
    label_rate: float,
    label_delay_minutes: float,
    monitor_every_minutes: int,
    drift_at: int,
    seed: int = 0,
    artifact_location: str | None = None,
    on_slice: Callable[[SliceRow], None] | None = None,
    quiet: bool = True,
) -> TrafficSimulation:
    """Simulate ``hours`` hours of traffic on the database and MLflow store in
    ``settings`` (use throw-away ones: it creates models and moves the champion)."""
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.ml.train import train_model
    from ia_continu.registry import core as registry
    from ia_continu.services import lifecycle

    if hours < 1:
        raise ValueError("hours must be at least 1")
    if not 0 <= drift_at <= hours:
        raise ValueError("drift_at must be in 0..hours")
    if not 0.0 < label_rate <= 1.0:
        raise ValueError("label_rate must be in (0, 1]")
    if monitor_every_minutes < 1 or rate < 1 or label_delay_minutes < 0:
        raise ValueError("monitor_every, rate must be positive and label_delay >= 0")
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    seeds = np.random.SeedSequence(seed).generate_state(4, dtype=np.uint64)
    hyper = lifecycle.hyperparameters_from(settings)
    engine = create_db_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine)
        with _silenced(quiet):
            registry.ensure_experiment(settings, artifact_location=artifact_location)
            # The champion deployed when the traffic starts (and never retrained below).
            first = monitoring_steps.generate_batch(
                engine=engine,
                hour=0,
                samples=settings.monitor_batch_size,
                now=SIM_START,
                seed=int(seeds[0]) >> 1,
                source="simulate",
            )
            initial = lifecycle.retrain(
                settings=settings,
                engine=engine,
                generation_id=first.generation_id,
                now=SIM_START,
            )
        never = initial.model
        oracles = [
            LinearModel.from_estimator(
                train_model(
                    generate_dataset(ORACLE_ROWS, hour=parity, seed=int(seeds[1 + parity]) >> 1),
                    hyperparameters=hyper,
                    test_size=settings.test_size,
                    random_state=settings.random_state,
                ).estimator,
                version=f"oracle{parity}",
            )
            for parity in (0, 1)
        ]
        app = create_app(settings)
        served = _Served()
        # Labels selected but not yet posted, in order:
        # (due minute, prediction id, label, class the app answered).
        pending: list[tuple[float, str, int, int]] = []
        slices: list[SliceRow] = []
        runs: list[tuple[int, Any]] = []  # (end minute, run)
        labelled_hits = labelled_total = 0
        steps = -(-hours * 60 // monitor_every_minutes)
        # A loopback Host: keyless mode refuses others (DNS-rebinding defence, api/guard.py).
        with TestClient(app, base_url="http://127.0.0.1") as client:
            state = app.state.ia
            for step in range(steps):
                start = step * monitor_every_minutes
                end = min(start + monitor_every_minutes, hours * 60)
                regime = 0 if start < drift_at * 60 else 1
                n = round(end * rate / 60) - round(start * rate / 60)
                minutes = np.sort(rng.uniform(start, end, n))
                data = generate_dataset(max(n, 1), hour=regime, seed=int(rng.integers(2**62)))
                x, y = data.features[:n], data.target[:n]
                predicted, versions, ids = _predict(client, x)
                never_pred, _ = never.predict_batch(x)
                oracle_pred, _ = oracles[regime].predict_batch(x)
                served.minute.append(minutes)
                served.truth.append(y)
                served.served.append(predicted)
                served.never.append(never_pred.astype(np.int64))
                served.oracle.append(oracle_pred.astype(np.int64))
                served.version.extend(versions)
                chosen = rng.random(n) < label_rate
                pending.extend(
                    (float(m) + label_delay_minutes, pid, int(lbl), int(ans))
                    for m, pid, lbl, ans, c in zip(minutes, ids, y, predicted, chosen, strict=True)
                    if c
                )
                due = [p for p in pending if p[0] <= end]
                pending = [p for p in pending if p[0] > end]
                _post_feedback(client, [(pid, lbl) for _, pid, lbl, _ in due])
                labelled_hits += sum(lbl == ans for _, _, lbl, ans in due)
                labelled_total += len(due)
                # The log is flushed every IA_PREDICTION_LOG_FLUSH_INTERVAL anyway; flushing
                # here makes the run see this slice whatever the machine's speed.
                if state.predlog is not None and client.portal is not None:
                    client.portal.call(state.predlog.flush)
                t0 = time.perf_counter()
                with _silenced(quiet):
                    outcome = asyncio.run(
                        service.execute_run(
                            settings=settings, engine=engine, check_health=False, notify=False
                        )
                    )
                run_seconds = time.perf_counter() - t0
                run = outcome.run
                runs.append((end, run))
                state.refresh_model()  # every worker would within IA_MODEL_REFRESH_INTERVAL
                counts: dict[str, int] = {}
                for v in versions:
                    counts[v] = counts.get(v, 0) + 1
                row = SliceRow(
                    step=step,
                    minute=start,
                    regime=regime,
                    requests=n,
                    served_versions=counts,
                    served_accuracy=_accuracy(predicted, y),
                    never_retrained_accuracy=_accuracy(never_pred, y),
                    oracle_accuracy=_accuracy(oracle_pred, y),
                    labels_posted=len(due),
                    run_id=run.id,
                    run_status=run.status,
                    decision=run.decision,
                    data_source=run.data_source,
                    labelled_samples=run.labelled_samples,
                    drift_detected=run.drift_detected,
                    new_version=run.new_version,
                    champion_after=state.model.version if state.model else None,
                    run_seconds=run_seconds,
                    error=run.error,
                )
                slices.append(row)
                if on_slice is not None:
                    on_slice(row)
    finally:
        engine.dispose()
    summary = _summarize(
        served=served,
        slices=slices,
        runs=runs,
        initial_version=initial.record.version,
        drift_minute=drift_at * 60,
        labelled=(labelled_hits, labelled_total),
        pending=len(pending),
        settings=settings,
        params={
            "hours": hours,
            "rate": rate,
            "label_rate": label_rate,
            "label_delay_minutes": label_delay_minutes,
            "monitor_every_minutes": monitor_every_minutes,
            "drift_at_hour": drift_at,
        },
        t_start=t_start,
    )
    return TrafficSimulation(slices=slices, summary=summary)


def _predict(client: Any, x: NDArray[np.float64]) -> tuple[NDArray[np.int64], list[str], list[str]]:
    """The app's answers to ``x`` through POST /predict/batch, CALL_ROWS rows a call."""
    predicted: list[int] = []
    versions: list[str] = []
    ids: list[str] = []
    for lo in range(0, len(x), CALL_ROWS):
        chunk = x[lo : lo + CALL_ROWS]
        response = client.post("/predict/batch", json={"instances": chunk.tolist()})
        if response.status_code != 200:
            raise RuntimeError(f"/predict/batch answered {response.status_code}: {response.text}")
        body = response.json()
        predicted.extend(body["predictions"])
        versions.extend([body["model_version"]] * len(chunk))
        ids.extend(body["prediction_ids"])
    return np.asarray(predicted, dtype=np.int64), versions, ids


def _post_feedback(client: Any, items: list[tuple[str, int]]) -> None:
    for lo in range(0, len(items), 10_000):  # the route's limit per request
        chunk = items[lo : lo + 10_000]
        response = client.post(
            "/feedback",
            json={"items": [{"prediction_id": pid, "label": lbl} for pid, lbl in chunk]},
        )
        if response.status_code != 200 or response.json()["received"] != len(chunk):
            raise RuntimeError(f"/feedback answered {response.status_code}: {response.text}")


def _accuracy(predicted: NDArray[Any], truth: NDArray[Any]) -> float:
    return float(np.mean(predicted == truth)) if len(truth) else float("nan")


def _summarize(
    *,
    served: _Served,
    slices: list[SliceRow],
    runs: list[tuple[int, Any]],
    initial_version: str,
    drift_minute: int,
    labelled: tuple[int, int],
    pending: int,
    settings: Settings,
    params: dict[str, Any],
    t_start: float,
) -> TrafficSummary:
    minute = np.concatenate(served.minute)
    truth = np.concatenate(served.truth)
    answers = np.concatenate(served.served)
    never = np.concatenate(served.never)
    oracle = np.concatenate(served.oracle)
    versions = np.asarray(served.version)
    after = minute >= drift_minute
    # The first champion promoted by a run at or after the drift (its end minute).
    champion, champion_minute = None, None
    for end, run in runs:
        if end >= drift_minute and run.decision == "promoted" and run.new_version:
            champion, champion_minute = run.new_version, end
            break
    first_served = None
    if champion is not None:
        served_by = np.flatnonzero(versions == champion)
        if len(served_by):
            first_served = float(minute[served_by[0]])
    since_champion = minute >= first_served if first_served is not None else None

    def acc(pred: NDArray[Any], mask: NDArray[np.bool_] | None) -> float | None:
        if mask is None or not mask.any():
            return None
        return _accuracy(pred[mask], truth[mask])

    served_acc = _accuracy(answers, truth)
    oracle_acc = _accuracy(oracle, truth)
    hits, total = labelled
    return TrafficSummary(
        **params,
        requests=len(truth),
        labels_posted=sum(s.labels_posted for s in slices),
        labels_pending=pending,
        initial_version=initial_version,
        final_version=slices[-1].champion_after if slices else None,
        served_accuracy=served_acc,
        never_retrained_accuracy=_accuracy(never, truth),
        oracle_accuracy=oracle_acc,
        served_to_oracle=served_acc / oracle_acc if oracle_acc else float("nan"),
        after_drift_served_accuracy=acc(answers, after),
        after_drift_never_retrained_accuracy=acc(never, after),
        after_drift_oracle_accuracy=acc(oracle, after),
        after_champion_served_accuracy=acc(answers, since_champion),
        after_champion_never_retrained_accuracy=acc(never, since_champion),
        # Served from the end of the run that promoted it (the app refreshes right after).
        drift_to_champion_minutes=(
            float(champion_minute - drift_minute)
            if first_served is not None and champion_minute is not None
            else None
        ),
        post_drift_champion=champion,
        labelled_served_accuracy=hits / total if total else None,
        runs=len(runs),
        promotions=sum(run.decision == "promoted" for _, run in runs),
        failed_runs=sum(run.status == "failed" for _, run in runs),
        total_seconds=time.perf_counter() - t_start,
        mlflow_tracking_uri=settings.mlflow_tracking_uri,
    )
