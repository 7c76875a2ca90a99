"""One monitoring run of the continuous-learning loop, step by step.

Each step is a plain blocking function with keyword-only arguments and small return
values, so that the Prefect flow can wrap each in a task and the API (which never
imports Prefect) can call them directly (services/monitoring_steps.py; their records in
services/monitoring_types.py). ``execute_run`` (here) is the one sequence of steps both
use; it receives a ``run_step`` that decides how a step is executed.

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
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from ia_continu.config import Settings
from ia_continu.db import models as db_models
from ia_continu.db import monitoring_runs as db_runs
from ia_continu.ml import checks
from ia_continu.services.monitoring_steps import (
    check_api_health,
    compute_drift,
    decide,
    evaluate_champion,
    find_fresh_batch,
    judge_shadow,
    log_run_metrics,
    notify_run,
    promote_challenger,
    reconcile_registry,
    record_run,
    train_challenger,
)
from ia_continu.services.monitoring_types import (
    BatchRef,
    ChallengerOutcome,
    ChampionCheck,
    DriftCheck,
    MlflowLink,
    NoFreshData,
    RunOutcome,
    RunRequest,
    ShadowVerdict,
)

log = logging.getLogger(__name__)


T = TypeVar("T")


# How a step is executed: ``await run_step(fn, **kwargs)`` returns ``fn(**kwargs)``.
StepRunner = Callable[..., Awaitable[Any]]


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
