"""Monitoring runs of the continuous-learning loop: history, latest, run one now.

POST /monitoring/run executes the same steps as the Prefect flow, in-process: the API
never needs Prefect. Its Discord notification is sent after the response.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import TYPE_CHECKING

from fastapi import APIRouter, BackgroundTasks, Depends, HTTPException, Query

from ia_continu.api.deps import get_state
from ia_continu.api.schemas import (
    ErrorResponse,
    MonitoringHistory,
    MonitoringRun,
    MonitoringRunRequest,
)
from ia_continu.api.state import AppState

if TYPE_CHECKING:
    from ia_continu.db.monitoring_runs import MonitoringRunRecord

log = logging.getLogger(__name__)
router = APIRouter(prefix="/monitoring", tags=["monitoring"])
_E = {"model": ErrorResponse}


def _to_schema(record: MonitoringRunRecord) -> MonitoringRun:
    return MonitoringRun.model_validate(asdict(record))


@router.get("/history", response_model=MonitoringHistory, responses={422: _E, 503: _E})
def history(
    limit: int = Query(20, ge=1, le=500),
    # Bounded: past 2**63 SQLite's driver raised OverflowError (a 500), PostgreSQL a 503.
    offset: int = Query(0, ge=0, le=2**31 - 1),
    state: AppState = Depends(get_state),
) -> MonitoringHistory:
    """Monitoring runs, newest first."""
    from ia_continu.db import monitoring_runs as db_runs

    runs = db_runs.list_monitoring_runs(state.engine, limit=limit, offset=offset)
    return MonitoringHistory(
        items=[_to_schema(r) for r in runs],
        total=db_runs.count_monitoring_runs(state.engine),
        limit=limit,
        offset=offset,
    )


@router.get("/latest", response_model=MonitoringRun, responses={404: _E, 503: _E})
def latest(state: AppState = Depends(get_state)) -> MonitoringRun:
    """The most recent monitoring run."""

    from ia_continu.db import monitoring_runs as db_runs

    run = db_runs.get_latest_monitoring_run(state.engine)
    if run is None:
        raise HTTPException(404, "no monitoring run yet")
    return _to_schema(run)


@router.post("/run", response_model=MonitoringRun, responses={409: _E, 422: _E, 503: _E})
async def run_now(
    background: BackgroundTasks,
    body: MonitoringRunRequest | None = None,
    state: AppState = Depends(get_state),
) -> MonitoringRun:
    """Run one monitoring run now (fresh data, champion metrics, drift, decision, maybe a
    challenger and its promotion). ``hour``/``samples`` force a freshly generated batch.
    A run that fails is still returned, with ``status: failed`` and its ``error``."""
    import asyncio

    from ia_continu.services import monitoring as service
    from ia_continu.services import monitoring_steps, monitoring_types

    body = body or MonitoringRunRequest()
    # Shares /retrain's lock: one training at a time in this process.
    if not state.retrain_lock.acquire(blocking=False):
        raise HTTPException(409, "a retrain or monitoring run is already running; try again")
    try:
        outcome = await service.execute_run(
            settings=state.settings,
            engine=state.engine,
            request=monitoring_types.RunRequest(
                hour=body.hour, samples=body.samples, seed=body.seed
            ),
            check_health=False,  # this process is answering: it is up
            notify=False,
            clock=state.clock,
        )
    finally:
        state.retrain_lock.release()
    if outcome.run.decision == "promoted":
        await asyncio.to_thread(state.refresh_model)  # serve it now, not at the next poll
    background.add_task(
        monitoring_steps.notify_run,
        settings=state.settings,
        run=outcome.run,
        mlflow_url=outcome.mlflow_url,
    )
    return _to_schema(outcome.run)
