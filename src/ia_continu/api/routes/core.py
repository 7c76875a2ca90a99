"""The seed's routes: /health, /generate, /predict, /retrain, plus /evaluate and /models."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from starlette.requests import ClientDisconnect

from ia_continu.api.body import body_openapi, parse_body
from ia_continu.api.deps import get_state
from ia_continu.api.ids import new_prediction_id
from ia_continu.api.schemas import (
    ErrorResponse,
    EvaluateRequest,
    EvaluateResponse,
    GenerateRequest,
    GenerateResponse,
    HealthResponse,
    ModelInfo,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    RetrainRequest,
    RetrainResponse,
)
from ia_continu.api.state import AppState
from ia_continu.config import VERSION

log = logging.getLogger(__name__)
router = APIRouter()

NO_MODEL = "no model is trained yet: POST /generate, then POST /retrain"
_E = {"model": ErrorResponse}
RETRAIN_WAIT_SECONDS = 120


def _now_iso() -> str:
    return datetime.now(UTC).isoformat()


# (second, its ISO 8601 text without offset): the date and time are formatted once per
# second; one tuple, replaced in one assignment (safe from threads).
_second_text: tuple[int, str] = (-1, "")


def format_timestamp_us(epoch_us: int) -> str:
    """``datetime.fromtimestamp(epoch_us / 1e6, UTC).isoformat()`` for integer
    microseconds since the epoch (no fraction when it is zero, like isoformat), at a
    third of its cost."""
    global _second_text
    second, micro = divmod(epoch_us, 1_000_000)
    cached = _second_text
    if cached[0] != second:
        text = datetime.fromtimestamp(second, UTC).replace(tzinfo=None).isoformat()
        cached = _second_text = (second, text)
    return f"{cached[1]}.{micro:06d}+00:00" if micro else f"{cached[1]}+00:00"


def _json(content: dict[str, Any]) -> Response:
    # Hot routes build their JSON directly: no response-model validation per request.
    return Response(orjson.dumps(content), media_type="application/json")


@router.get("/health", response_model=HealthResponse, tags=["service"])
async def health() -> Response:
    """Liveness: no database or MLflow call (uptime monitors hit it every 30 s)."""
    return _json({"status": "ok", "timestamp": _now_iso(), "version": VERSION})


@router.post(
    "/generate", response_model=GenerateResponse, tags=["data"], responses={422: _E, 503: _E}
)
def generate(
    body: GenerateRequest | None = None, state: AppState = Depends(get_state)
) -> GenerateResponse:
    """Generate a labelled dataset (odd hours shift feature1 by -0.5) and store it."""
    from ia_continu.db import datasets as db_datasets
    from ia_continu.ml.data import generate_dataset

    body = body or GenerateRequest()
    now = state.clock()
    hour = body.hour if body.hour is not None else _local_hour(now, state.settings.timezone)
    dataset = generate_dataset(body.samples, hour=hour, seed=body.seed)
    record = db_datasets.insert_dataset(state.engine, dataset, created_at=now, seed=body.seed)
    return GenerateResponse(
        generation_id=record.generation_id,
        samples_created=record.samples_count,
        timestamp=now,
        hour_generated=hour,
    )


def _local_hour(now: datetime, timezone: str) -> int:
    local = now.astimezone(ZoneInfo(timezone)) if timezone else now.astimezone()
    return local.hour


@router.post(
    "/predict",
    response_model=PredictResponse,
    tags=["model"],
    responses={422: _E, 503: _E},
    openapi_extra=body_openapi(PredictRequest),
)
async def predict(request: Request) -> Response:
    """Predict from the model held in memory (never loaded per request)."""
    # Served by ``PredictEndpoint`` (registered first by api/app.py); this route documents
    # /predict in the OpenAPI schema and answers the same way.
    content = await make_prediction(request.app.state.ia, await request.body())
    return Response(content, media_type="application/json")


async def make_prediction(state: AppState, raw_body: bytes) -> bytes:
    """The JSON answer of /predict for this body; 422 (RequestValidationError) for a
    client mistake, 503 (HTTPException) without a model."""
    # Body parsed by pydantic's JSON parser, no dependency injection (api/body.py).
    body = parse_body(PredictRequest, raw_body)
    model = state.model
    if model is None:
        model = await asyncio.to_thread(state.model_or_load)
        if model is None:
            raise HTTPException(503, NO_MODEL)
    x1, x2 = body.features
    prediction, confidence = model.predict_one(x1, x2)
    if state.metrics is not None:
        state.metrics.count_prediction(model.version, prediction)
    now_us = time.time_ns() // 1000
    prediction_id = new_prediction_id(now_us)  # in-process, no database round trip
    if state.predlog is not None:  # one deque append; written later by a background task
        # The shadow model is scored at flush time, off this path (services/predlog.py).
        state.predlog.log(
            model.version, x1, x2, prediction, confidence, now_us, prediction_id, state.shadow
        )
    return orjson.dumps(
        {
            "prediction": prediction,
            "model_version": model.version,
            "confidence": confidence,
            # Exact for integer microseconds: the logged time and this one are equal.
            "timestamp": format_timestamp_us(now_us),
            "prediction_id": prediction_id,
        }
    )


class PredictEndpoint:
    """POST /predict as a plain ASGI application: what the route above does, without
    FastAPI's per-request machinery (Request object, dependency solving, response
    wrapping: ~15 µs of the request's CPU). Errors are raised the same way and answered
    by the same exception handlers (the app's ExceptionMiddleware); the answer carries the
    same headers as ``Response(content, media_type="application/json")``."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        content = await make_prediction(scope["app"].state.ia, await read_body(receive))
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(content)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


async def read_body(receive: Any) -> bytes:
    """The whole request body, as ``Request.body()`` reads it (ClientDisconnect when the
    client leaves first, or when the body limit refused the rest: api/limits.py)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        elif message["type"] == "http.disconnect":
            raise ClientDisconnect()


@router.post(
    "/retrain",
    response_model=RetrainResponse,
    tags=["model"],
    responses={404: _E, 409: _E, 422: _E, 503: _E},
)
def retrain(
    response: Response,
    body: RetrainRequest | None = None,
    state: AppState = Depends(get_state),
) -> RetrainResponse:
    """Train on a stored dataset (default: the latest), track it in MLflow, register it
    with the alias ``champion`` and serve it in every API process."""
    from ia_continu.ml.train import TrainingDataError
    from ia_continu.registry.core import RegistryUnavailableError
    from ia_continu.services import lifecycle

    body = body or RetrainRequest()
    # One retrain at a time per process: a second caller waits for the first.
    if not state.retrain_lock.acquire(timeout=RETRAIN_WAIT_SECONDS):
        raise HTTPException(409, "another retrain is still running; try again later")
    tracked = state.metrics.track_retrain() if state.metrics else contextlib.nullcontext()
    try:
        with tracked:
            outcome = lifecycle.retrain(
                settings=state.settings,
                engine=state.engine,
                generation_id=body.generation_id,
                now=state.clock(),
            )
    except lifecycle.NoDatasetError as exc:
        raise HTTPException(404 if body.generation_id is not None else 409, str(exc)) from exc
    except TrainingDataError as exc:
        raise HTTPException(422, str(exc)) from exc
    except RegistryUnavailableError as exc:
        log.warning("retrain aborted, active model unchanged: %s", exc)
        raise HTTPException(503, f"{exc}; the active model is unchanged") from exc
    finally:
        state.retrain_lock.release()
    state.serve(outcome.model)
    metrics = outcome.result.metrics
    log.info(
        "retrained %s in %s",
        outcome.record.version,
        {k: round(v, 4) for k, v in outcome.timings.items()},
    )
    # Where the time went (load_data, fit, metrics, mlflow_*, activation), in the
    # standard header browsers' dev tools and the benchmark read.
    response.headers["Server-Timing"] = ", ".join(
        f"{name};dur={seconds * 1000:.1f}" for name, seconds in outcome.timings.items()
    )
    return RetrainResponse(
        model_version=outcome.record.version,
        training_samples=outcome.record.training_samples,
        accuracy=metrics.accuracy,
        timestamp=outcome.record.created_at,
        test_samples=outcome.result.test_samples,
        precision=metrics.precision,
        recall=metrics.recall,
        f1_score=metrics.f1_score,
        generation_id=outcome.generation_id,
        run_id=outcome.run_id,
        run_name=outcome.run_name,
    )


@router.post(
    "/evaluate",
    response_model=EvaluateResponse,
    tags=["model"],
    responses={404: _E, 409: _E, 422: _E, 503: _E},
)
def evaluate(
    body: EvaluateRequest | None = None, state: AppState = Depends(get_state)
) -> EvaluateResponse:
    """The active model's predictions over a whole stored dataset, summarised."""

    from ia_continu.db import datasets as db_datasets
    from ia_continu.ml.evaluate import compute_metrics

    body = body or EvaluateRequest()
    model = state.model_or_load()
    if model is None:
        raise HTTPException(503, NO_MODEL)
    generation_id = body.generation_id
    if generation_id is None:
        generation_id = db_datasets.get_latest_generation_id(state.engine)
        if generation_id is None:
            raise HTTPException(409, "no dataset yet: POST /generate first")
    dataset = db_datasets.load_dataset(state.engine, generation_id)
    if dataset is None:
        raise HTTPException(404, f"generation_id {generation_id} does not exist")
    predicted, _ = model.predict_batch(dataset.features)
    metrics = compute_metrics(dataset.target, predicted)
    return EvaluateResponse(
        generation_id=generation_id,
        samples=len(dataset),
        model_version=model.version,
        timestamp=datetime.now(UTC),
        **metrics.as_dict(),
    )


MODELS_PAGE_DEFAULT = 50
MODELS_PAGE_MAX = 500


@router.get("/models", response_model=ModelsResponse, tags=["model"], responses={422: _E, 503: _E})
def list_models(
    limit: Annotated[
        int, Query(ge=1, le=MODELS_PAGE_MAX, description="versions per page (newest first)")
    ] = MODELS_PAGE_DEFAULT,
    offset: Annotated[
        int, Query(ge=0, le=2**31 - 1, description="versions to skip, newest first")
    ] = 0,
    state: AppState = Depends(get_state),
) -> ModelsResponse:
    """Trained versions with their held-out metrics, newest first, one page at a time
    (``total`` counts them all); ``is_active`` marks the champion, and ``active_version``
    / ``active_model`` give it whatever page it is on."""
    from dataclasses import asdict

    from ia_continu.db import models as db_models

    records, total = db_models.list_models_page(state.engine, limit=limit, offset=offset)
    active = next((r for r in records if r.is_active), None) or db_models.get_active_model(
        state.engine
    )
    return ModelsResponse(
        models=[ModelInfo.model_validate(asdict(r)) for r in records],
        active_version=active.version if active else None,
        total=total,
        limit=limit,
        offset=offset,
        active_model=ModelInfo.model_validate(asdict(active)) if active else None,
    )
