"""Model administration: roll back (or forward) to any stored version."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from fastapi import APIRouter, Depends, HTTPException

from ia_continu.api.deps import get_state
from ia_continu.api.schemas import ActivateResponse, ErrorResponse
from ia_continu.api.state import AppState

log = logging.getLogger(__name__)
router = APIRouter()

_E = {"model": ErrorResponse}


@router.post(
    "/models/{version}/activate",
    response_model=ActivateResponse,
    tags=["model"],
    responses={404: _E, 409: _E, 503: _E},
)
def activate_model(version: str, state: AppState = Depends(get_state)) -> ActivateResponse:
    """Make a stored version the champion again: MLflow alias ``champion``, the active
    row, and every API process within ``IA_MODEL_REFRESH_INTERVAL`` seconds. When MLflow
    cannot be reached nothing changes (503)."""
    from ia_continu.db import model_files
    from ia_continu.db import models as db_models
    from ia_continu.registry.core import RegistryUnavailableError
    from ia_continu.services import lifecycle

    metrics = state.metrics
    # No retrain lock here: a rollback must not wait for a retrain stuck on MLflow (up
    # to IA_MLFLOW_DEADLINE). Both only hold the database's write lock for their short
    # transactions, and the champion alias follows the active row (docs/mlflow.md).
    try:
        previous = db_models.get_active_version(state.engine)
        record = lifecycle.activate_version(
            settings=state.settings, engine=state.engine, version=version
        )
    except model_files.UnknownModelError as exc:
        if metrics is not None:
            metrics.count_activation("unknown_version")
        raise HTTPException(404, f"{exc}; GET /models lists the versions") from exc
    except RegistryUnavailableError as exc:
        if metrics is not None:
            metrics.count_activation("registry_unavailable")
        log.warning("activation of %s aborted, champion unchanged: %s", version, exc)
        raise HTTPException(503, f"{exc}; the champion is unchanged") from exc
    model = model_files.model_from_record(record)
    state.serve(model)  # this process at once; the others through their watcher
    if metrics is not None:
        metrics.count_activation("success")
    log.info("champion is now %s (was %s)", record.version, previous)
    return ActivateResponse(
        model_version=record.version,
        previous_version=previous,
        registry_version=record.registry_version,
        accuracy=record.accuracy,
        timestamp=datetime.now(UTC),
    )
