"""The dashboard: one HTML page served by the API, its static files, and the JSON it needs
beyond the other routes (its settings, and the feature histograms)."""

from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from ia_continu.api.deps import get_state
from ia_continu.api.schemas import (
    DashboardConfig,
    DashboardEndpoints,
    DashboardLinks,
    DashboardThresholds,
    ErrorResponse,
    FeatureHistogramInfo,
    HistogramDataset,
    HistogramsResponse,
)
from ia_continu.api.state import AppState
from ia_continu.config import VERSION, Settings

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)
router = APIRouter(tags=["dashboard"])
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PREFIX = "/dashboard/static"
# Rows binned per dataset: the first rows of an i.i.d. dataset are a fair sample, and
# this keeps the page's refresh cheap on datasets of millions of rows.
HISTOGRAM_MAX_ROWS = 50_000
_E = {"model": ErrorResponse}

# Scripts, styles and data from this origin only: no inline script, no CDN.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

# Optional routes (added by other parts of the service): method, path.
_OPTIONAL_ROUTES = {
    "monitoring_history": ("GET", "/monitoring/history"),
    "monitoring_run": ("POST", "/monitoring/run"),
    "predictions_timeseries": ("GET", "/predictions/timeseries"),
    "rollback": ("POST", "/models/{version}/activate"),
}


def install_dashboard(app: FastAPI) -> None:
    """Add the page, its JSON routes and its static files to ``app``."""
    app.include_router(router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-static")


@lru_cache(maxsize=1)
def _read_page() -> str:
    # Asset URLs carry the version: a browser never mixes a new page with old scripts.
    page = (STATIC_DIR / "dashboard.html").read_text(encoding="utf-8")
    return page.replace("{{VERSION}}", VERSION)


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=True)
def dashboard_page() -> HTMLResponse:
    """The dashboard page (charts and actions, rendered in the browser from the JSON routes)."""
    return HTMLResponse(_read_page(), headers=_PAGE_HEADERS)


@router.get("/dashboard/config", response_model=DashboardConfig)
def dashboard_config(request: Request) -> DashboardConfig:
    """What the page needs to know: links, refresh period, thresholds, whether POST routes
    need an API key, and which optional routes this API serves."""
    settings: Settings = request.app.state.settings
    served = _served_routes(request.app)
    keys = _api_keys_configured(settings)
    return DashboardConfig(
        version=VERSION,
        refresh_seconds=settings.dashboard_refresh_seconds,
        links=DashboardLinks(
            mlflow=settings.mlflow_ui_url,
            prefect=settings.prefect_ui_url,
            uptime_kuma=settings.kuma_ui_url,
        ),
        thresholds=DashboardThresholds(
            min_accuracy=settings.min_accuracy,
            max_accuracy_drop=settings.max_accuracy_drop,
            drift_p_value=settings.drift_p_value,
            psi_threshold=settings.psi_threshold,
        ),
        api_key_required=keys,
        predict_requires_key=keys and settings.protect_predict,
        endpoints=DashboardEndpoints(
            **{name: route in served for name, route in _OPTIONAL_ROUTES.items()}
        ),
    )


def _served_routes(app: FastAPI) -> set[tuple[str, str]]:
    # The OpenAPI document (built once, then cached by FastAPI) is the public list of
    # routes: app.routes holds included routers as opaque wrappers in recent FastAPI.
    try:
        paths = app.openapi().get("paths", {})
    except Exception as exc:  # the page then tries every route and handles the 404s
        log.warning("cannot list the API's routes for the dashboard: %s", exc)
        return {(method, path) for method, path in _OPTIONAL_ROUTES.values()}
    return {(method.upper(), path) for path, ops in paths.items() for method in ops}


def _api_keys_configured(settings: Settings) -> bool:
    # An empty IA_API_KEYS means "unset" (compose passes empty variables).
    keys = settings.api_keys.get_secret_value().strip() if settings.api_keys else ""
    return bool(keys) or bool(settings.api_keys_file and str(settings.api_keys_file).strip())


@router.get("/dashboard/histograms", response_model=HistogramsResponse, responses={422: _E})
def dashboard_histograms(
    bins: int = Query(30, ge=2, le=200, description="bins per feature"),
    state: AppState = Depends(get_state),
) -> HistogramsResponse:
    """feature1 and feature2 histograms of the champion's training dataset and of the
    latest dataset, on common bin edges (counts; null when a side has no data)."""
    from ia_continu.db import datasets as db_datasets
    from ia_continu.db import models as db_models
    from ia_continu.ml.histograms import compute_feature_histograms

    engine = state.engine
    champion = db_models.get_active_model(engine)
    reference_id = champion.generation_id if champion is not None else None
    latest_id = db_datasets.get_latest_generation_id(engine)

    reference_info, reference = _load_side(
        engine, reference_id, model_version=champion.version if champion is not None else None
    )
    latest_info, latest = _load_side(engine, latest_id)
    histograms = compute_feature_histograms(reference, latest, bins=bins)
    return HistogramsResponse(
        bins=bins,
        reference=reference_info,
        latest=latest_info,
        features={
            name: FeatureHistogramInfo(
                edges=h.edges,
                reference=h.reference,
                latest=h.latest,
                reference_mean=h.reference_mean,
                latest_mean=h.latest_mean,
            )
            for name, h in histograms.items()
        },
    )


def _load_side(
    engine: Engine, generation_id: int | None, *, model_version: str | None = None
) -> tuple[HistogramDataset | None, NDArray[np.float64] | None]:

    from ia_continu.db import datasets as db_datasets

    if generation_id is None:
        return None, None
    record = db_datasets.get_dataset_record(engine, generation_id)
    sample = db_datasets.load_feature_sample(engine, generation_id, limit=HISTOGRAM_MAX_ROWS)
    if record is None or sample is None:  # the champion's dataset was deleted
        return None, None
    info = HistogramDataset(
        generation_id=generation_id,
        samples=record.samples_count,
        rows_used=len(sample),
        hour_generated=record.hour_generated,
        created_at=record.created_at,
        model_version=model_version,
    )
    return info, sample
