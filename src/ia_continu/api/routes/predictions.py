"""The prediction log: recent traffic summarised (/predictions/stats) and over time
(/predictions/timeseries)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError

from ia_continu.api.deps import get_state
from ia_continu.api.schemas import (
    ErrorResponse,
    FeatureMeans,
    ModelVersionTraffic,
    PredictionStatsResponse,
    PredictionTimeseriesPoint,
    PredictionTimeseriesResponse,
)
from ia_continu.api.state import AppState
from ia_continu.db import rollup

router = APIRouter(prefix="/predictions", tags=["monitoring"])

_E = {"model": ErrorResponse}
MAX_WINDOW_MINUTES = 7 * 24 * 60
MAX_BUCKETS = 10_080  # a week at one-minute resolution

Minutes = Annotated[
    int, Query(ge=1, le=MAX_WINDOW_MINUTES, description="window: the last N minutes")
]


async def _write_queued(state: AppState) -> None:
    # Read-your-writes within this process: what it answered is counted. Shielded so that
    # a client hanging up cannot interrupt a write halfway through its bookkeeping.
    if state.predlog is not None:
        await asyncio.shield(state.predlog.flush())


def _since(minutes: int) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


@router.get("/stats", response_model=PredictionStatsResponse, responses={422: _E, 503: _E})
async def prediction_stats(
    minutes: Minutes = 60, state: AppState = Depends(get_state)
) -> PredictionStatsResponse:
    """Recent traffic: count, class balance, feature means, per model version; plus this
    process's logging counters."""
    await _write_queued(state)
    summary = await asyncio.to_thread(
        rollup.summarize_predictions, state.engine, since=_since(minutes)
    )
    counters = state.predlog.counters() if state.predlog is not None else None
    return PredictionStatsResponse(
        window_minutes=minutes,
        count=summary.count,
        class_counts={"0": summary.class_0, "1": summary.class_1},
        class_balance=summary.class_1 / summary.count if summary.count else None,
        feature_means=FeatureMeans(feature1=summary.feature1_mean, feature2=summary.feature2_mean),
        by_model_version={
            version: ModelVersionTraffic(
                count=t.count,
                class_counts={"0": t.class_0, "1": t.class_1},
                mean_confidence=t.mean_confidence,
            )
            for version, t in summary.by_model_version.items()
        },
        logging_enabled=counters is not None,
        logged=counters.logged if counters else 0,
        dropped=counters.dropped if counters else 0,
        queued=counters.queued if counters else 0,
        flushed=counters.flushed if counters else 0,
        flush_errors=counters.flush_errors if counters else 0,
        abandoned=counters.abandoned if counters else 0,
    )


@router.get(
    "/timeseries", response_model=PredictionTimeseriesResponse, responses={422: _E, 503: _E}
)
async def prediction_timeseries(
    minutes: Minutes = 60,
    bucket_seconds: Annotated[
        int, Query(ge=1, le=86_400, description="bucket width in seconds")
    ] = 60,
    state: AppState = Depends(get_state),
) -> PredictionTimeseriesResponse:
    """Predictions per class and model version in fixed buckets (aligned on multiples of
    ``bucket_seconds`` since the epoch, so the first may start before the window).

    At most 10,080 buckets: ``minutes * 60 / bucket_seconds <= 10080``, else 422."""
    if minutes * 60 / bucket_seconds > MAX_BUCKETS:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "bucket_seconds"),
                    "msg": f"too many buckets: minutes * 60 / bucket_seconds must be "
                    f"<= {MAX_BUCKETS}",
                    "input": bucket_seconds,
                }
            ]
        )
    await _write_queued(state)
    buckets = await asyncio.to_thread(
        rollup.count_predictions_by_bucket,
        state.engine,
        since=_since(minutes),
        bucket_seconds=bucket_seconds,
    )
    return PredictionTimeseriesResponse(
        window_minutes=minutes,
        bucket_seconds=bucket_seconds,
        points=[
            PredictionTimeseriesPoint(
                t=b.start, model_version=b.model_version, class_0=b.class_0, class_1=b.class_1
            )
            for b in buckets
        ],
    )
