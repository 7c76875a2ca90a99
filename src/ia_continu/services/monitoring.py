"""One monitoring run of the continuous-learning loop, step by step.

Each step is a plain blocking function with keyword-only arguments and small return
values, so that the Prefect flow can wrap each in a task and the API (which never
imports Prefect) can call them directly. ``execute_run`` is the one sequence of steps
both use; it receives a ``run_step`` that decides how a step is executed.

A run: health of the API -> fresh labelled batch -> the champion's metrics on it ->
drift against the champion's training data (and live traffic) -> decision -> maybe a
challenger, promoted only if it beats the champion on its own held-out rows -> MLflow
-> the monitoring_runs row -> Discord.

Fresh labelled data, in this order (docs/loop.md): predictions with feedback that arrived
since the last run (at least IA_MIN_FEEDBACK, stored as a ``feedback`` dataset, plus any
datasets uploaded meanwhile); else the newest dataset uploaded or generated since the last
run; else a generated batch when IA_MONITOR_GENERATE, else nothing ("no fresh data").
With IA_PROMOTE_ON=shadow a challenger is served in shadow and promoted only once it
beats the champion on the same labelled live rows.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy.engine import Engine

from ia_continu.config import Settings
from ia_continu.db import datasets as db_datasets
from ia_continu.db import models as db_models
from ia_continu.db import monitoring_runs as db_runs
from ia_continu.db import predictions as db_predictions
from ia_continu.ml import checks
from ia_continu.ml.evaluate import Metrics, compute_metrics

log = logging.getLogger(__name__)

T = TypeVar("T")
# How a step is executed: ``await run_step(fn, **kwargs)`` returns ``fn(**kwargs)``.
StepRunner = Callable[..., Awaitable[Any]]
LIVE_WINDOW = 10_000  # newest logged predictions compared with the reference at most
FEEDBACK_WINDOW = 100_000  # newest labelled predictions one run learns from at most
HEALTH_TIMEOUT = 5.0


class ApiUnavailableError(RuntimeError):
    """The API's /health did not answer 200."""


class NoChampionDataError(LookupError):
    """The champion cannot be evaluated (no stored parameters)."""


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Optional overrides: a fresh batch of ``hour`` (and/or ``samples`` rows) is
    generated instead of looking for data that arrived since the last run."""

    hour: int | None = None
    samples: int | None = None
    seed: int | None = None  # reproducible forced batch

    @property
    def forces_batch(self) -> bool:
        return self.hour is not None or self.samples is not None


@dataclass(frozen=True, slots=True)
class BatchRef:
    generation_id: int
    hour: int
    samples: int
    source: str
    generated: bool  # True when this run generated it (no fresh data had arrived)
    data_source: str = "generated"  # generated | feedback | upload (monitoring_runs)
    # Set when the batch holds labelled traffic: stored with the run, so it is not reused.
    watermark: db_predictions.FeedbackWatermark | None = None
    note: str | None = None  # why this data (e.g. feedback still below IA_MIN_FEEDBACK)


@dataclass(frozen=True, slots=True)
class NoFreshData:
    """Nothing labelled arrived and IA_MONITOR_GENERATE is off: the run does nothing."""

    reason: str


@dataclass(frozen=True, slots=True)
class ShadowVerdict:
    """The shadow challenger against the champion on the same labelled live rows."""

    challenger_version: str
    rows: int
    champion_accuracy: float | None
    challenger_accuracy: float | None
    promote: bool
    missing: int  # labelled rows still needed before a verdict (0 once enough)
    reason: str


@dataclass(frozen=True, slots=True)
class ChampionCheck:
    version: str
    reference_accuracy: float  # its own held-out accuracy, measured at training
    metrics: Metrics  # on the fresh batch
    generation_id: int | None  # the data it was trained on


@dataclass(frozen=True, slots=True)
class DriftCheck:
    drift: checks.DriftReport | None
    live_drift: checks.DriftReport | None
    live_samples: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ChallengerOutcome:
    version: str
    accuracy: float  # on its own held-out rows
    champion_accuracy_on_holdout: float | None  # the champion on those same rows
    promote: bool
    run_id: str
    experiment_id: str


@dataclass(frozen=True, slots=True)
class MlflowLink:
    run_id: str
    url: str


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run: db_runs.MonitoringRunRecord  # as stored
    mlflow_url: str | None  # link to the run's MLflow run, for the notification
    notified: bool | None  # None when the caller sends the notification itself


# --- steps ------------------------------------------------------------------------------------


def check_api_health(*, api_url: str, timeout: float = HEALTH_TIMEOUT) -> None:
    """GET {api_url}/health; raises ApiUnavailableError unless it answers 200."""
    url = f"{api_url.rstrip('/')}/health"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ApiUnavailableError(f"API unreachable at {url}: {type(exc).__name__}") from exc
    if response.status_code != 200:
        raise ApiUnavailableError(f"API health {url} answered {response.status_code}")


def local_hour(now: datetime, timezone: str) -> int:
    """The hour the seed's drift rule uses (same as /generate)."""
    local = now.astimezone(ZoneInfo(timezone)) if timezone else now.astimezone()
    return local.hour


def find_fresh_batch(
    *, settings: Settings, engine: Engine, request: RunRequest, now: datetime
) -> BatchRef | NoFreshData:
    """The labelled data this run learns from (module docstring: feedback, then uploads
    or datasets generated since the last run, then a generated batch if allowed)."""
    if request.forces_batch:
        return generate_batch(
            engine=engine,
            hour=request.hour if request.hour is not None else local_hour(now, settings.timezone),
            samples=request.samples or settings.monitor_batch_size,
            now=now,
            seed=request.seed,
        )
    after = db_runs.get_last_monitored_generation_id(engine) or 0
    champion = db_models.get_active_model(engine)
    trained_on = champion.generation_id if champion else None
    fresh = [
        d
        for d in db_datasets.list_datasets_since(engine, after)
        if d.generation_id != trained_on and d.source != "feedback"
    ]
    labelled = db_predictions.collect_labelled_feedback(
        engine,
        after=db_predictions.get_feedback_watermark(engine),
        min_rows=settings.min_feedback,
        limit=FEEDBACK_WINDOW,
    )
    if labelled.available >= settings.min_feedback:
        return store_feedback_batch(
            engine=engine,
            labelled=labelled,
            uploads=[d for d in fresh if d.source == "upload"],
            hour=local_hour(now, settings.timezone),
            now=now,
        )
    note = None
    if labelled.available:
        note = (
            f"{labelled.available} labelled predictions since the last run, fewer than "
            f"IA_MIN_FEEDBACK={settings.min_feedback}: kept for a later run"
        )
    if fresh:
        newest = fresh[-1]
        return BatchRef(
            generation_id=newest.generation_id,
            hour=newest.hour_generated,
            samples=newest.samples_count,
            source=newest.source,
            generated=False,
            data_source="upload" if newest.source == "upload" else "generated",
            note=note,
        )
    if not settings.monitor_generate:
        return NoFreshData(
            reason="; ".join(
                [
                    "no fresh labelled data since the last run and IA_MONITOR_GENERATE=false: "
                    "nothing evaluated, nothing trained"
                ]
                + ([note] if note else [])
            )
        )
    batch = generate_batch(
        engine=engine,
        hour=local_hour(now, settings.timezone),
        samples=settings.monitor_batch_size,
        now=now,
        seed=request.seed,
    )
    return replace(batch, note=note)


def store_feedback_batch(
    *,
    engine: Engine,
    labelled: db_predictions.LabelledFeedback,
    uploads: list[db_datasets.DatasetRecord],
    hour: int,
    now: datetime,
) -> BatchRef:
    """Store the labelled traffic (features + feedback label as target), plus the rows
    of datasets uploaded since the last run, as one ``feedback`` dataset: the challenger
    trained on it can be retrained from the database alone."""
    import numpy as np

    from ia_continu.ml.data import Dataset

    features = [labelled.features]
    target = [labelled.target]
    for record in uploads:
        upload = _load(engine, record.generation_id)
        features.append(upload.features)
        target.append(upload.target)
    dataset = Dataset(
        features=np.ascontiguousarray(np.concatenate(features)),
        target=np.concatenate(target).astype(np.int64),
        hour=hour,
    )
    stored = db_datasets.insert_dataset(engine, dataset, created_at=now, source="feedback")
    note = f"{len(labelled.target)} labelled predictions (of {labelled.available} new)"
    if uploads:
        note += " + uploaded generations " + ", ".join(str(u.generation_id) for u in uploads)
    return BatchRef(
        generation_id=stored.generation_id,
        hour=hour,
        samples=stored.samples_count,
        source="feedback",
        generated=False,
        data_source="feedback",
        watermark=labelled.watermark,
        note=note,
    )


def generate_batch(
    *,
    engine: Engine,
    hour: int,
    samples: int,
    now: datetime,
    seed: int | None = None,
    source: str = "monitor",
) -> BatchRef:
    """Generate and store a labelled batch (same generator and tables as /generate)."""
    from ia_continu.ml.data import generate_dataset

    seed = secrets.randbits(63) if seed is None else seed  # stored: the batch can be redrawn
    dataset = generate_dataset(samples, hour=hour, seed=seed)
    record = db_datasets.insert_dataset(engine, dataset, created_at=now, seed=seed, source=source)
    return BatchRef(
        generation_id=record.generation_id,
        hour=hour,
        samples=record.samples_count,
        source=source,
        generated=True,
    )


def evaluate_champion(*, engine: Engine, batch: BatchRef) -> ChampionCheck | None:
    """The active model's accuracy, precision, recall and F1 on the batch (None when
    no model is active yet)."""
    from ia_continu.db.model_files import model_from_record

    record = db_models.get_active_model(engine)
    if record is None:
        return None
    model = model_from_record(record)
    dataset = _load(engine, batch.generation_id)
    predicted, _ = model.predict_batch(dataset.features)
    return ChampionCheck(
        version=record.version,
        reference_accuracy=record.accuracy,
        metrics=compute_metrics(dataset.target, predicted),
        generation_id=record.generation_id,
    )


def compute_drift(
    *,
    settings: Settings,
    engine: Engine,
    champion: ChampionCheck,
    batch: BatchRef,
    live_since: datetime | None = None,
) -> DriftCheck:
    """KS and PSI per feature: the champion's training data against the batch, and
    against the live inputs logged by /predict when at least min_live_predictions exist."""
    reference = (
        db_datasets.load_dataset(engine, champion.generation_id)
        if champion.generation_id is not None
        else None
    )
    if reference is None or len(reference) == 0:
        return DriftCheck(
            drift=None,
            live_drift=None,
            live_samples=0,
            note=f"no training data stored for {champion.version}: drift not measured",
        )
    current = _load(engine, batch.generation_id)
    drift = checks.compute_drift_report(reference.features, current.features)
    live = db_predictions.load_live_features(engine, since=live_since, limit=LIVE_WINDOW)
    live_drift = None
    # Labelled traffic: the batch's own inputs are live inputs, whatever their number.
    if len(live) >= settings.min_live_predictions or (
        batch.data_source == "feedback" and len(live) > 0
    ):
        live_drift = checks.compute_drift_report(reference.features, live)
    return DriftCheck(drift=drift, live_drift=live_drift, live_samples=len(live))


def decide(
    *, settings: Settings, champion: ChampionCheck, drift: DriftCheck, data_source: str = ""
) -> checks.RetrainDecision:
    """The retrain rule on the labelled batch. Drift on the live inputs is decisive only
    when the batch is labelled traffic (a challenger can then learn what drifted);
    otherwise it is reported."""
    decision = checks.decide_retrain(
        accuracy=champion.metrics.accuracy,
        reference_accuracy=champion.reference_accuracy,
        drift=drift.drift,
        max_accuracy_drop=settings.max_accuracy_drop,
        min_accuracy=settings.min_accuracy,
        drift_p_value=settings.drift_p_value,
        psi_threshold=settings.psi_threshold,
    )
    if data_source != "feedback" or drift.live_drift is None:
        return decision
    drifted = checks.drifted_features(drift.live_drift, p_value=settings.drift_p_value)
    if not drifted:
        return decision
    live_reasons = tuple(
        f"live {name} KS p-value {drift.live_drift[name].ks_p_value:.2e} "
        f"< {settings.drift_p_value:g}"
        for name in drifted
    )
    return checks.RetrainDecision(
        retrain=True, drift_detected=True, reasons=decision.reasons + live_reasons
    )


def judge_shadow(*, settings: Settings, engine: Engine) -> ShadowVerdict | None:
    """IA_PROMOTE_ON=shadow: the challenger served in shadow (the agreed rule in
    db/models.py: get_shadow_model) against the champion on the labelled live rows both
    scored. None when there is no champion or no shadow challenger."""
    champion = db_models.get_active_model(engine)
    shadow = db_models.get_shadow_model(engine)
    if champion is None or shadow is None:
        return None
    cmp = db_predictions.compare_on_shadow_rows(
        engine, champion_version=champion.version, challenger_version=shadow.version
    )
    needed = settings.min_feedback
    if cmp.rows < needed:
        return ShadowVerdict(
            challenger_version=shadow.version,
            rows=cmp.rows,
            champion_accuracy=cmp.champion_accuracy,
            challenger_accuracy=cmp.challenger_accuracy,
            promote=False,
            missing=needed - cmp.rows,
            reason=(
                f"shadow challenger {shadow.version}: {cmp.rows} labelled live rows, "
                f"{needed - cmp.rows} more needed (IA_MIN_FEEDBACK={needed})"
            ),
        )
    assert cmp.champion_accuracy is not None and cmp.challenger_accuracy is not None
    promote = checks.should_promote(
        challenger_accuracy=cmp.challenger_accuracy,
        champion_accuracy=cmp.champion_accuracy,
        margin=settings.promotion_margin,
    )
    return ShadowVerdict(
        challenger_version=shadow.version,
        rows=cmp.rows,
        champion_accuracy=cmp.champion_accuracy,
        challenger_accuracy=cmp.challenger_accuracy,
        promote=promote,
        missing=0,
        reason=(
            f"shadow challenger {shadow.version} {cmp.challenger_accuracy:.4f} vs champion "
            f"{champion.version} {cmp.champion_accuracy:.4f} on {cmp.rows} labelled live rows"
            f" (margin {settings.promotion_margin:g}): "
            + ("promoted" if promote else "not promoted")
        ),
    )


def train_challenger(
    *,
    settings: Settings,
    engine: Engine,
    batch: BatchRef,
    champion_version: str | None,
    now: datetime,
) -> ChallengerOutcome:
    """Train on the batch exactly as /retrain does (MLflow run, registered version) with
    the alias ``challenger``, then score the champion on the challenger's held-out rows."""
    from ia_continu.db import model_files
    from ia_continu.services import lifecycle

    outcome = lifecycle.retrain(
        settings=settings,
        engine=engine,
        generation_id=batch.generation_id,
        activate=False,
        now=now,
        run_prefix="retrain",
    )
    accuracy = outcome.result.metrics.accuracy
    champion_accuracy: float | None = None
    promote = True  # no champion: the first model is served
    if champion_version is not None:
        record = db_models.get_model(engine, champion_version)
        if record is None:
            raise model_files.UnknownModelError(f"champion {champion_version} disappeared")
        champion_model = model_files.model_from_record(record)
        predicted, _ = champion_model.predict_batch(outcome.result.x_test)
        champion_accuracy = compute_metrics(outcome.result.y_test, predicted).accuracy
        promote = checks.should_promote(
            challenger_accuracy=accuracy,
            champion_accuracy=champion_accuracy,
            margin=settings.promotion_margin,
        )
    return ChallengerOutcome(
        version=outcome.record.version,
        accuracy=accuracy,
        champion_accuracy_on_holdout=champion_accuracy,
        promote=promote,
        run_id=outcome.run_id,
        experiment_id=outcome.experiment_id,
    )


def promote_challenger(*, settings: Settings, engine: Engine, version: str) -> None:
    """Make the challenger the champion: MLflow alias, active row (every API process
    serves it within its refresh interval), and drop its ``challenger`` alias."""
    from ia_continu.registry import core as registry
    from ia_continu.services import lifecycle

    lifecycle.activate_version(settings=settings, engine=engine, version=version)
    try:
        registry.delete_model_alias(settings=settings, alias=registry.CHALLENGER)
    except registry.RegistryUnavailableError as exc:  # cosmetic: the promotion is done
        log.warning("could not remove the challenger alias: %s", exc)


def log_run_metrics(
    *, settings: Settings, run: db_runs.MonitoringRunRecord, now: datetime
) -> MlflowLink:
    """The run's figures as an MLflow run in the project's experiment."""
    from ia_continu.registry import core as registry

    metrics: dict[str, float] = {
        "drift_detected": float(run.drift_detected),
        "retrained": float(run.new_version is not None),
        "promoted": float(run.decision == "promoted"),
        "failed": float(run.status == "failed"),
    }
    for name in (
        "accuracy",
        "precision",
        "recall",
        "f1_score",
        "reference_accuracy",
        "new_accuracy",
        "champion_accuracy_on_holdout",
        "duration_seconds",
        "batch_samples",
    ):
        value = getattr(run, name)
        if value is not None:
            metrics[name] = float(value)
    for prefix, report in (("", run.drift), ("live_", run.live_drift)):
        for feature, stats in (report or {}).items():
            for stat, value in stats.items():
                metrics[f"{prefix}{stat}_{feature}"] = float(value)
    params = {
        "status": run.status,
        "decision": run.decision,
        "champion_version": run.champion_version,
        "new_version": run.new_version,
        "generation_id": run.generation_id,
        "hour_generated": run.hour_generated,
        "flow_run_id": run.flow_run_id,
        "reason": (run.reason or "")[:500],
    }
    run_id = registry.log_monitoring_metrics(
        settings=settings,
        run_name=f"monitoring_{now:%Y%m%d_%H%M%S}",
        metrics=metrics,
        params={k: v for k, v in params.items() if v not in (None, "")},
        now=now,
    )
    experiment_id = registry.get_experiment_id(settings)
    return MlflowLink(
        run_id=run_id, url=registry.run_url(settings, experiment_id=experiment_id, run_id=run_id)
    )


def reconcile_registry(*, settings: Settings, engine: Engine) -> int:
    """Repair registry debris of failed retrains (docs/mlflow.md); the number of
    changes. A separate step: its failure never changes the run."""
    from ia_continu.services.reconcile import reconcile_registry as reconcile

    report = reconcile(settings=settings, engine=engine)
    for change in report.changes:
        log.info("registry reconcile: %s", change)
    return len(report.changes)


def record_run(*, engine: Engine, run: db_runs.MonitoringRunRecord) -> db_runs.MonitoringRunRecord:
    return db_runs.insert_monitoring_run(engine, run)


def notify_run(
    *, settings: Settings, run: db_runs.MonitoringRunRecord, mlflow_url: str | None
) -> bool:
    """Send the run's Discord embed; True when delivered. Never raises."""
    from ia_continu.notify import discord

    try:
        embed = discord.build_run_embed(run_to_dict(run), mlflow_url=mlflow_url)
        return discord.send_embed(settings=settings, embed=embed).sent
    except Exception as exc:  # a notification never changes the run
        log.warning("notification skipped: %s: %s", type(exc).__name__, exc)
        return False


def prune_data(*, settings: Settings, engine: Engine) -> str:
    """Apply the retention limits once (db/retention.py); what was removed, in words."""
    from ia_continu.db.retention import RetentionPolicy, prune

    report = prune(
        engine,
        RetentionPolicy.from_settings(settings),
        now=datetime.now(UTC),  # rows are logged in real time
        batch_size=settings.prune_batch_size,
    )
    return report.describe()


def run_to_dict(run: db_runs.MonitoringRunRecord) -> dict[str, Any]:
    return asdict(run)


def _load(engine: Engine, generation_id: int) -> Any:
    dataset = db_datasets.load_dataset(engine, generation_id)
    if dataset is None:
        raise LookupError(f"generation_id {generation_id} does not exist")
    return dataset


# --- one run ------------------------------------------------------------------------------------


async def run_in_thread(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """The step runner without an orchestrator: each blocking step in a worker thread."""
    return await asyncio.to_thread(fn, **kwargs)


def _utcnow() -> datetime:
    return datetime.now(UTC)


async def execute_run(
    *,
    settings: Settings,
    engine: Engine,
    request: RunRequest | None = None,
    run_step: StepRunner = run_in_thread,
    check_health: bool = True,
    notify: bool = True,
    flow_run_id: str | None = None,
    clock: Callable[[], datetime] = _utcnow,
) -> RunOutcome:
    """Run every step once and return the stored run. A failing step (after the
    runner's retries) ends the run as ``failed``, recorded and notified, not raised;
    only a failure to record the run itself propagates. With ``notify=False`` the
    caller sends the notification (e.g. after answering an HTTP request)."""
    request = request or RunRequest()
    t0 = time.perf_counter()
    draft = _Draft(
        db_runs.MonitoringRunRecord(
            started_at=clock(), status="failed", decision="failed", flow_run_id=flow_run_id
        )
    )
    try:
        # Known even if the run fails at its first step: the embed says what is served.
        draft.update(champion_version=db_models.get_active_version(engine))
        if check_health:
            await run_step(check_api_health, api_url=settings.api_url)
        previous = db_runs.get_latest_monitoring_run(engine)
        found: BatchRef | NoFreshData = await run_step(
            find_fresh_batch, settings=settings, engine=engine, request=request, now=clock()
        )
        if isinstance(found, NoFreshData):
            draft.update(status="ok", decision="none", reason=found.reason, labelled_samples=0)
            if settings.promote_on == "shadow":
                await _judge_shadow_only(draft, run_step, settings=settings, engine=engine)
        else:
            await _evaluate_batch(
                draft,
                run_step,
                settings=settings,
                engine=engine,
                batch=found,
                live_since=previous.started_at if previous else None,
                clock=clock,
            )
    except Exception as exc:  # keeps what was measured before the failure
        log.warning("monitoring run failed: %s: %s", type(exc).__name__, exc)
        draft.update(status="failed", decision="failed", error=_describe(exc))
    run = draft.run
    try:  # once per run, whatever the run did: MLflow debris of failed retrains
        await run_step(reconcile_registry, settings=settings, engine=engine)
    except Exception as exc:
        log.warning("registry reconcile skipped: %s", _describe(exc))

    run = replace(run, duration_seconds=time.perf_counter() - t0)
    link: MlflowLink | None = None
    try:
        link = await run_step(log_run_metrics, settings=settings, run=run, now=clock())
        run = replace(run, mlflow_run_id=link.run_id)
    except Exception as exc:  # the decision stands; the run says what was not logged
        log.warning("monitoring metrics not logged to MLflow: %s", exc)
        note = f"MLflow logging failed: {_describe(exc)}"
        run = replace(run, error=f"{run.error}; {note}" if run.error else note)
    run = replace(run, finished_at=clock(), duration_seconds=time.perf_counter() - t0)
    mlflow_url = link.url if link else None
    try:
        run = await run_step(record_run, engine=engine, run=run)
    except Exception as exc:  # say so on Discord before giving up
        note = f"run not recorded: {_describe(exc)}"
        unrecorded = replace(
            run, status="failed", error=f"{run.error}; {note}" if run.error else note
        )
        if notify:
            await run_step(notify_run, settings=settings, run=unrecorded, mlflow_url=mlflow_url)
        raise
    notified: bool | None = None
    if notify:
        notified = await run_step(notify_run, settings=settings, run=run, mlflow_url=mlflow_url)
    log.info(
        "monitoring run %s: status=%s decision=%s champion=%s new=%s in %.2f s",
        run.id,
        run.status,
        run.decision,
        run.champion_version,
        run.new_version,
        run.duration_seconds or 0.0,
    )
    return RunOutcome(run=run, mlflow_url=mlflow_url, notified=notified)


async def _evaluate_batch(
    draft: _Draft,
    run_step: StepRunner,
    *,
    settings: Settings,
    engine: Engine,
    batch: BatchRef,
    live_since: datetime | None,
    clock: Callable[[], datetime],
) -> None:
    draft.update(
        generation_id=batch.generation_id,
        batch_samples=batch.samples,
        hour_generated=batch.hour,
        data_source=batch.data_source,
        labelled_samples=batch.samples,
    )
    if batch.watermark is not None:  # recorded with the run: these pairs are consumed
        draft.update(
            feedback_watermark_id=batch.watermark.prediction_row_id,
            feedback_watermark_at=batch.watermark.received_at,
        )
    champion: ChampionCheck | None = await run_step(evaluate_champion, engine=engine, batch=batch)
    if champion is None:
        await _bootstrap(
            draft, run_step, settings=settings, engine=engine, batch=batch, clock=clock
        )
        return
    await _monitor(
        draft,
        run_step,
        settings=settings,
        engine=engine,
        batch=batch,
        champion=champion,
        live_since=live_since,
        clock=clock,
    )


class _Draft:
    """The run being built. Steps update it in place, so that a run failing halfway
    still records what it measured (drift, accuracy, a challenger trained but not
    promoted)."""

    def __init__(self, run: db_runs.MonitoringRunRecord) -> None:
        self.run = run

    def update(self, **changes: Any) -> None:
        self.run = replace(self.run, **changes)


async def _bootstrap(
    draft: _Draft,
    run_step: StepRunner,
    *,
    settings: Settings,
    engine: Engine,
    batch: BatchRef,
    clock: Callable[[], datetime],
) -> None:
    """No model is served yet: the batch trains the first champion."""
    draft.update(reason="no champion yet: the first model is trained on this batch")
    challenger: ChallengerOutcome = await run_step(
        train_challenger,
        settings=settings,
        engine=engine,
        batch=batch,
        champion_version=None,
        now=clock(),
    )
    draft.update(new_version=challenger.version, new_accuracy=challenger.accuracy)
    await run_step(promote_challenger, settings=settings, engine=engine, version=challenger.version)
    draft.update(status="ok", decision="promoted")


async def _monitor(
    draft: _Draft,
    run_step: StepRunner,
    *,
    settings: Settings,
    engine: Engine,
    batch: BatchRef,
    champion: ChampionCheck,
    live_since: datetime | None,
    clock: Callable[[], datetime],
) -> None:
    m = champion.metrics
    draft.update(
        champion_version=champion.version,
        reference_accuracy=champion.reference_accuracy,
        accuracy=m.accuracy,
        precision=m.precision,
        recall=m.recall,
        f1_score=m.f1_score,
    )
    drift: DriftCheck = await run_step(
        compute_drift,
        settings=settings,
        engine=engine,
        champion=champion,
        batch=batch,
        live_since=live_since,
    )
    decision = decide(
        settings=settings, champion=champion, drift=drift, data_source=batch.data_source
    )
    reasons = [decision.reason] + [n for n in (drift.note, batch.note) if n]
    draft.update(
        drift=checks.report_to_dict(drift.drift),
        live_drift=checks.report_to_dict(drift.live_drift),
        drift_detected=decision.drift_detected,
        reason="; ".join(reasons),
    )
    shadow_mode = settings.promote_on == "shadow"
    if shadow_mode:
        verdict: ShadowVerdict | None = await run_step(
            judge_shadow, settings=settings, engine=engine
        )
        if verdict is not None:
            reasons.append(verdict.reason)
            draft.update(reason="; ".join(reasons))
            if verdict.promote:
                await _promote_shadow(draft, run_step, settings, engine, verdict)
                draft.update(status="drift" if decision.retrain else "ok")
                return
            if verdict.missing:  # still being measured: do not replace it
                draft.update(
                    status="drift" if decision.retrain else "ok",
                    decision="kept_champion" if decision.retrain else "none",
                )
                return
    if not decision.retrain:
        draft.update(status="ok", decision="none")
        return
    challenger: ChallengerOutcome = await run_step(
        train_challenger,
        settings=settings,
        engine=engine,
        batch=batch,
        champion_version=champion.version,
        now=clock(),
    )
    draft.update(
        new_version=challenger.version,
        new_accuracy=challenger.accuracy,
        champion_accuracy_on_holdout=challenger.champion_accuracy_on_holdout,
    )
    if shadow_mode:
        reasons.append(
            f"challenger {challenger.version} serves in shadow until it beats the champion "
            f"on {settings.min_feedback} labelled live rows (IA_PROMOTE_ON=shadow)"
        )
        draft.update(status="drift", decision="kept_champion", reason="; ".join(reasons))
        return
    if not challenger.promote:
        draft.update(status="drift", decision="kept_champion")
        return
    await run_step(promote_challenger, settings=settings, engine=engine, version=challenger.version)
    draft.update(status="drift", decision="promoted")


async def _judge_shadow_only(
    draft: _Draft, run_step: StepRunner, *, settings: Settings, engine: Engine
) -> None:
    """No fresh batch: the shadow challenger can still have earned its promotion."""
    verdict: ShadowVerdict | None = await run_step(judge_shadow, settings=settings, engine=engine)
    if verdict is None:
        return
    draft.update(reason=f"{draft.run.reason}; {verdict.reason}")
    if verdict.promote:
        await _promote_shadow(draft, run_step, settings, engine, verdict)


async def _promote_shadow(
    draft: _Draft,
    run_step: StepRunner,
    settings: Settings,
    engine: Engine,
    verdict: ShadowVerdict,
) -> None:
    await run_step(
        promote_challenger, settings=settings, engine=engine, version=verdict.challenger_version
    )
    draft.update(
        decision="promoted",
        new_version=verdict.challenger_version,
        new_accuracy=verdict.challenger_accuracy,
        # Not its held-out rows here: the same labelled live rows as the challenger.
        champion_accuracy_on_holdout=verdict.champion_accuracy,
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
