"""The Prefect 3 monitoring flow: each step of ``monitoring.service`` as a task.

The flow reaches the API over HTTP only for /health; data, models and MLflow go
through the project's own modules. Tasks return small dataclasses and persist no
results. A failed run is recorded and notified by the service, then this flow ends
in the Failed state so that Prefect shows it red.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sqlalchemy.engine import Engine

from ia_continu.config import Settings, get_settings
from ia_continu.db import monitoring_runs as db_runs
from ia_continu.services import monitoring as service
from ia_continu.services import monitoring_steps, monitoring_types

FLOW_NAME = "ia-continu-monitoring"
DEPLOYMENT_NAME = "ia-continu-monitoring"
NETWORK_RETRIES = 2
RETRY_DELAY_SECONDS = 1

# Embedding callers (tests, the CLI) hand their settings to the flow here instead of a
# flow parameter: parameters are stored by the Prefect server, and a database URL may
# hold a password. Unset, the flow reads the environment like any entry point.
_settings_override: ContextVar[Settings | None] = ContextVar("ia_settings", default=None)


class MonitoringRunFailedError(RuntimeError):
    """The run was recorded as failed (see its ``error``)."""


@contextlib.contextmanager
def flow_settings(settings: Settings) -> Iterator[None]:
    token = _settings_override.set(settings)
    try:
        yield
    finally:
        _settings_override.reset(token)


def current_settings() -> Settings:
    """The embedding caller's settings, else the environment's. (A module-level
    function: the served flow is pickled by value and a ContextVar cannot be.)"""
    return _settings_override.get() or get_settings()


_local = {"persist_result": False, "cache_policy": NO_CACHE}
_network = {**_local, "retries": NETWORK_RETRIES, "retry_delay_seconds": RETRY_DELAY_SECONDS}


@task(name="check-api-health", **_network)  # type: ignore[call-overload]
async def check_api_health_task(*, api_url: str) -> None:
    await asyncio.to_thread(monitoring_steps.check_api_health, api_url=api_url)


@task(name="find-fresh-batch", **_local)  # type: ignore[call-overload]
async def find_fresh_batch_task(
    *, settings: Settings, engine: Engine, request: monitoring_types.RunRequest, now: datetime
) -> monitoring_types.BatchRef | monitoring_types.NoFreshData:
    batch = await asyncio.to_thread(
        monitoring_steps.find_fresh_batch,
        settings=settings,
        engine=engine,
        request=request,
        now=now,
    )
    if isinstance(batch, monitoring_types.NoFreshData):
        get_run_logger().info("%s", batch.reason)
        return batch
    get_run_logger().info(
        "batch: generation %s, hour %s, %s rows (%s)",
        batch.generation_id,
        batch.hour,
        batch.samples,
        "generated now" if batch.generated else f"{batch.data_source}: {batch.source}",
    )
    return batch


@task(name="evaluate-champion", **_local)  # type: ignore[call-overload]
async def evaluate_champion_task(
    *, engine: Engine, batch: monitoring_types.BatchRef
) -> monitoring_types.ChampionCheck | None:
    champion = await asyncio.to_thread(
        monitoring_steps.evaluate_champion, engine=engine, batch=batch
    )
    if champion is None:
        get_run_logger().info("no champion yet: this batch trains the first model")
    else:
        get_run_logger().info(
            "champion %s: accuracy %.4f on the batch (held-out %.4f)",
            champion.version,
            champion.metrics.accuracy,
            champion.reference_accuracy,
        )
    return champion


@task(name="compute-drift", **_local)  # type: ignore[call-overload]
async def compute_drift_task(
    *,
    settings: Settings,
    engine: Engine,
    champion: monitoring_types.ChampionCheck,
    batch: monitoring_types.BatchRef,
    live_since: datetime | None,
) -> monitoring_types.DriftCheck:
    drift = await asyncio.to_thread(
        monitoring_steps.compute_drift,
        settings=settings,
        engine=engine,
        champion=champion,
        batch=batch,
        live_since=live_since,
    )
    for name, d in (drift.drift or {}).items():
        get_run_logger().info(
            "%s: KS %.3f (p=%.2e), PSI %.3f", name, d.ks_statistic, d.ks_p_value, d.psi
        )
    return drift


@task(name="train-challenger", **_network)  # type: ignore[call-overload]
async def train_challenger_task(
    *,
    settings: Settings,
    engine: Engine,
    batch: monitoring_types.BatchRef,
    champion_version: str | None,
    now: datetime,
) -> monitoring_types.ChallengerOutcome:
    challenger = await asyncio.to_thread(
        monitoring_steps.train_challenger,
        settings=settings,
        engine=engine,
        batch=batch,
        champion_version=champion_version,
        now=now,
    )
    get_run_logger().info(
        "challenger %s: held-out accuracy %.4f vs champion %s on the same rows -> %s",
        challenger.version,
        challenger.accuracy,
        "n/a"
        if challenger.champion_accuracy_on_holdout is None
        else f"{challenger.champion_accuracy_on_holdout:.4f}",
        "promote" if challenger.promote else "keep the champion",
    )
    return challenger


@task(name="judge-shadow", **_local)  # type: ignore[call-overload]
async def judge_shadow_task(
    *, settings: Settings, engine: Engine
) -> monitoring_types.ShadowVerdict | None:
    verdict = await asyncio.to_thread(
        monitoring_steps.judge_shadow, settings=settings, engine=engine
    )
    if verdict is not None:
        get_run_logger().info("%s", verdict.reason)
    return verdict


@task(name="promote-challenger", **_network)  # type: ignore[call-overload]
async def promote_challenger_task(*, settings: Settings, engine: Engine, version: str) -> None:
    await asyncio.to_thread(
        monitoring_steps.promote_challenger, settings=settings, engine=engine, version=version
    )


@task(name="log-to-mlflow", **_network)  # type: ignore[call-overload]
async def log_run_metrics_task(
    *, settings: Settings, run: db_runs.MonitoringRunRecord, now: datetime
) -> monitoring_types.MlflowLink:
    return await asyncio.to_thread(
        monitoring_steps.log_run_metrics, settings=settings, run=run, now=now
    )


@task(name="reconcile-registry", **_local)  # type: ignore[call-overload]
async def reconcile_registry_task(*, settings: Settings, engine: Engine) -> int:
    changed = await asyncio.to_thread(
        monitoring_steps.reconcile_registry, settings=settings, engine=engine
    )
    if changed:
        get_run_logger().info("registry reconcile: %d change(s)", changed)
    return changed


@task(name="record-run", **_local)  # type: ignore[call-overload]
async def record_run_task(
    *, engine: Engine, run: db_runs.MonitoringRunRecord
) -> db_runs.MonitoringRunRecord:
    return await asyncio.to_thread(monitoring_steps.record_run, engine=engine, run=run)


# Sending retries inside the notifier (429 retry_after, 5xx, timeouts) and never raises.
@task(name="notify-discord", **_network)  # type: ignore[call-overload]
async def notify_run_task(
    *, settings: Settings, run: db_runs.MonitoringRunRecord, mlflow_url: str | None
) -> bool:
    return await asyncio.to_thread(
        monitoring_steps.notify_run, settings=settings, run=run, mlflow_url=mlflow_url
    )


@task(name="prune-data", **_local)  # type: ignore[call-overload]
async def prune_data_task(*, settings: Settings, engine: Engine) -> str:
    summary = await asyncio.to_thread(monitoring_steps.prune_data, settings=settings, engine=engine)
    get_run_logger().info("retention: %s", summary)
    return summary


async def _prune_after_run(*, settings: Settings, engine: Engine) -> None:
    # Once per flow run, after the run is recorded and notified: a prune never changes
    # or delays the run (POST /monitoring/run does not prune: the API prunes by itself).
    try:
        await prune_data_task(settings=settings, engine=engine)
    except Exception as exc:
        get_run_logger().warning("retention prune skipped: %s: %s", type(exc).__name__, exc)


_TASKS: dict[Callable[..., Any], Any] = {
    monitoring_steps.check_api_health: check_api_health_task,
    monitoring_steps.find_fresh_batch: find_fresh_batch_task,
    monitoring_steps.evaluate_champion: evaluate_champion_task,
    monitoring_steps.compute_drift: compute_drift_task,
    monitoring_steps.train_challenger: train_challenger_task,
    monitoring_steps.judge_shadow: judge_shadow_task,
    monitoring_steps.promote_challenger: promote_challenger_task,
    monitoring_steps.log_run_metrics: log_run_metrics_task,
    monitoring_steps.record_run: record_run_task,
    monitoring_steps.reconcile_registry: reconcile_registry_task,
    monitoring_steps.notify_run: notify_run_task,
}


async def run_as_task(fn: Callable[..., Any], /, **kwargs: Any) -> Any:
    """The service's step runner inside the flow: each step is its Prefect task."""
    return await _TASKS[fn](**kwargs)


@flow(name=FLOW_NAME, persist_result=False, log_prints=False)
async def monitoring_flow(hour: int | None = None, samples: int | None = None) -> dict[str, Any]:
    """One monitoring run: health, fresh data, performance, drift, decision,
    challenger and promotion, record, MLflow, Discord.

    ``hour`` / ``samples`` force a freshly generated batch (e.g. of the other parity).
    """
    from prefect.runtime import flow_run

    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database

    if hour is not None and not 0 <= hour <= 23:
        raise ValueError("hour must be in 0..23")
    settings = current_settings()
    engine = create_db_engine(
        settings.resolved_database_url, busy_timeout_ms=settings.db_busy_timeout_ms
    )
    try:
        await asyncio.to_thread(upgrade_database, engine)
        outcome = await service.execute_run(
            settings=settings,
            engine=engine,
            request=monitoring_types.RunRequest(hour=hour, samples=samples),
            run_step=run_as_task,
            flow_run_id=str(flow_run.id) if flow_run.id else None,
        )
        await _prune_after_run(settings=settings, engine=engine)
    finally:
        engine.dispose()
    run = outcome.run
    logger = get_run_logger()
    logger.info(
        "run %s: status=%s drift=%s decision=%s champion=%s new=%s (%.2f s)%s",
        run.id,
        run.status,
        run.drift_detected,
        run.decision,
        run.champion_version,
        run.new_version,
        run.duration_seconds or 0.0,
        f" MLflow: {outcome.mlflow_url}" if outcome.mlflow_url else "",
    )
    if run.status == "failed":
        raise MonitoringRunFailedError(f"monitoring run {run.id} failed: {run.error}")
    return asdict(run)


def serve_monitoring(*, interval: float, name: str = DEPLOYMENT_NAME, run_now: bool = True) -> None:
    """Serve the flow as deployment ``name`` every ``interval`` seconds (blocks). With
    ``run_now`` a first run is queued at once instead of one interval later."""
    from datetime import timedelta

    from prefect import serve
    from prefect.deployments import run_deployment
    from prefect.deployments.runner import EntrypointType

    # Prefect's sync/async dual signatures confuse type checkers: plain Any here.
    deployment: Any = monitoring_flow.to_deployment(
        name=name,
        interval=timedelta(seconds=interval),
        description="Continuous-learning loop: drift detection, retraining, promotion.",
        tags=["ia-continu", "monitoring"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    if run_now:
        deployment_id: Any = deployment.apply()
        run_deployment(deployment_id, timeout=0)  # queued; the runner below executes it
    serve(deployment, limit=1, pause_on_shutdown=False)  # one run at a time
