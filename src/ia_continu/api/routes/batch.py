"""POST /predict/batch: many rows in one request, computed with numpy."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import orjson
from fastapi import APIRouter, HTTPException, Request, Response

from ia_continu.api.body import body_openapi, parse_body
from ia_continu.api.ids import new_prediction_ids
from ia_continu.api.routes.core import NO_MODEL
from ia_continu.api.schemas import BatchPredictRequest, BatchPredictResponse, ErrorResponse
from ia_continu.api.state import AppState

router = APIRouter()
_E = {"model": ErrorResponse}


@router.post(
    "/predict/batch",
    response_model=BatchPredictResponse,
    tags=["model"],
    responses={422: _E, 503: _E},
    openapi_extra=body_openapi(BatchPredictRequest),
)
async def predict_batch(request: Request) -> Response:
    """Predict up to 10,000 rows at once: the same model and validation as /predict,
    answers as parallel arrays (``predictions[i]``, ``confidences[i]`` for row i)."""
    import numpy as np

    body = parse_body(BatchPredictRequest, await request.body())
    state: AppState = request.app.state.ia
    model = state.model
    if model is None:  # the first model may have been trained by another worker just now
        model = await asyncio.to_thread(state.model_or_load)
        if model is None:
            raise HTTPException(503, NO_MODEL)
    features = np.array(body.instances, dtype=np.float64)
    classes, confidences = model.predict_batch(features)
    if state.metrics is not None:
        state.metrics.count_predictions(model.version, classes)
    now_us = time.time_ns() // 1000
    prediction_ids = new_prediction_ids(len(classes), now_us)  # row i <-> id i
    if state.predlog is not None:  # queued; written later by a background task
        state.predlog.log_many(
            model.version, features, classes, confidences, now_us, prediction_ids, state.shadow
        )
    content = {
        "predictions": classes,
        "confidences": confidences,
        "model_version": model.version,
        # Exact for integer microseconds: the logged time and this one are equal.
        "timestamp": datetime.fromtimestamp(now_us / 1_000_000, UTC).isoformat(),
        "prediction_ids": prediction_ids,
    }
    # orjson writes numpy arrays directly (no per-element Python objects).
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )
