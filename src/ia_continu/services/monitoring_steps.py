"""The steps of a monitoring run, each a plain blocking function (an orchestrator may
retry it): fresh data, champion check, drift, decision, challenger, promotion, MLflow,
recording, notification, pruning. services/monitoring.py chains them."""

from __future__ import annotations

import logging
import secrets
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from sqlalchemy.engine import Engine

from ia_continu.config import Settings
from ia_continu.db import datasets as db_datasets
from ia_continu.db import models as db_models
from ia_continu.db import monitoring_runs as db_runs
from ia_continu.db import predictions as db_predictions
from ia_continu.ml import checks
from ia_continu.ml.evaluate import compute_metrics
from ia_continu.services.monitoring_types import (
    FEEDBACK_WINDOW,
    HEALTH_TIMEOUT,
    LIVE_WINDOW,
    ApiUnavailableError,
    BatchRef,
    ChallengerOutcome,
    ChampionCheck,
    DriftCheck,
    MlflowLink,
    NoFreshData,
    RunRequest,
    ShadowVerdict,
)

log = logging.getLogger(__name__)


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
