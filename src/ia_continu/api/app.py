"""The FastAPI application factory and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Route
from starlette.types import Scope

from ia_continu.api.state import (
    AppState,
    start_prediction_logging,
    stop_prediction_logging,
    watch_active_model,
)
from ia_continu.config import VERSION, Settings, get_settings

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    instrument: bool = True,
) -> FastAPI:
    """Build the API. Nothing is opened until the lifespan starts.

    ``instrument=False`` leaves out the Prometheus middleware and /metrics (benchmarks).
    Raises SecurityConfigError when bound to a non-loopback address without an API key.
    """
    settings = settings or get_settings()
    from ia_continu.api.security import check_startup_security

    api_keys = check_startup_security(settings)  # before anything else: refuse early

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from ia_continu.db.engine import create_db_engine
        from ia_continu.db.migrate import upgrade_database

        engine = create_db_engine(
            settings.resolved_database_url, busy_timeout_ms=settings.db_busy_timeout_ms
        )
        await asyncio.to_thread(upgrade_database, engine)
        state = AppState(settings=settings, engine=engine, clock=clock or _utcnow)
        state.metrics = getattr(app.state, "metrics", None)
        app.state.ia = state
        try:
            await asyncio.to_thread(state.refresh_model)
        except Exception as exc:  # serve /health and the rest; the watcher retries
            log.warning("no model loaded at start-up: %s", exc)
        watcher = asyncio.create_task(watch_active_model(state), name="watch-active-model")
        start_prediction_logging(state)
        log_reporter = _start_prediction_log_reporter(state)
        if settings.warm_up_ml:  # first /retrain without ~5 s of imports (registry/warmup.py)
            from ia_continu.registry.warmup import start_background_warm_up

            start_background_warm_up(settings.warm_up_delay)
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if log_reporter is not None:
                log_reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await log_reporter
            await stop_prediction_logging(state)  # needs the engine: before dispose
            if state.metrics is not None and state.predlog is not None:
                state.metrics.report_prediction_log(state.predlog.counters())  # final counts
            engine.dispose()

    app = FastAPI(
        title="ia-continu",
        version=VERSION,
        description=(
            "Continuous-learning ML service: generate labelled data, train and serve a "
            "logistic regression, detect drift, retrain and promote automatically."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    _install_error_handlers(app)
    _install_disk_error_handler(app)

    from ia_continu.api.routes import core

    app.include_router(core.router)

    from ia_continu.api.routes import batch

    app.include_router(batch.router)

    from ia_continu.api.routes import monitoring

    app.include_router(monitoring.router)

    from ia_continu.api.routes import predictions

    app.include_router(predictions.router)

    from ia_continu.api.routes import datasets, feedback

    app.include_router(feedback.router)
    app.include_router(datasets.router)
    _install_dashboard(app)
    # Before the operations: inside the key check and the metrics (413s are counted).
    _install_body_limit(
        app,
        max_bytes=settings.max_body_bytes,
        # 10,000 labelled rows, pretty-printed JSON, reach ~1 MiB (docs/loop.md).
        path_limits={"/datasets": settings.max_upload_bytes},
    )
    _install_operations(app, settings, api_keys=api_keys, instrument=instrument)
    _serve_first(
        app, [(core.router, "/predict"), (batch.router, "/predict/batch"), (core.router, "/health")]
    )
    return app


def _start_prediction_log_reporter(state: AppState) -> asyncio.Task[None] | None:
    """The task copying the prediction logger's counters into /metrics (alert rules on
    dropped predictions); none without metrics or without the logger."""
    if state.metrics is None or state.predlog is None:
        return None
    from ia_continu.api.metrics import report_prediction_log_periodically

    return asyncio.create_task(
        report_prediction_log_periodically(state.metrics, state.predlog),
        name="report-prediction-log",
    )


def _install_body_limit(
    app: FastAPI, *, max_bytes: int, path_limits: dict[str, int] | None = None
) -> None:
    """413 for bodies over IA_MAX_BODY_BYTES (or a path's own limit), before parsing;
    documented on every operation that takes a body."""
    from ia_continu.api.limits import BodySizeLimitMiddleware, document_body_limit

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=max_bytes, path_limits=path_limits)
    build_openapi = app.openapi

    def openapi_with_body_limit() -> dict[str, Any]:
        schema = build_openapi()
        document_body_limit(schema, max_bytes=max_bytes, path_limits=path_limits)  # idempotent
        return schema

    app.openapi = openapi_with_body_limit  # type: ignore[method-assign]


def _serve_first(app: FastAPI, routes: list[tuple[APIRouter, str]]) -> None:
    """Register these routes again at the head of the app's route list, hidden from the
    OpenAPI document (which keeps documenting the originals).

    Starlette tries routes in order, and FastAPI's own /docs routes come first, then each
    included router adds a matching layer: reaching /predict cost ~20 µs of its ~100 µs
    of CPU per request. The hot routes are tried first instead (same endpoints, same
    middlewares and error handlers). /predict itself is served by its plain ASGI endpoint
    (routes/core.py ``PredictEndpoint``)."""
    from ia_continu.api.routes.core import PredictEndpoint

    for router, path in reversed(routes):
        for route in router.routes:
            if not (isinstance(route, APIRoute) and route.path == path):
                continue
            methods = sorted(route.methods or ())
            if path == "/predict":
                app.router.routes.insert(0, _AsgiRoute(path, PredictEndpoint(), methods=methods))
                continue
            app.router.add_api_route(path, route.endpoint, methods=methods, include_in_schema=False)
            app.router.routes.insert(0, app.router.routes.pop())


class _AsgiRoute(Route):
    """A Starlette route to a plain ASGI application that, like FastAPI's routes, puts
    itself in the scope (the metrics label requests by ``scope["route"].path``)."""

    def __init__(self, path: str, endpoint: Any, *, methods: list[str]) -> None:
        super().__init__(path, endpoint, methods=methods, include_in_schema=False)

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match is not Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def _install_dashboard(app: FastAPI) -> None:
    from ia_continu.api.routes import dashboard

    dashboard.install_dashboard(app)


def _install_operations(
    app: FastAPI, settings: Settings, *, api_keys: tuple[str, ...], instrument: bool
) -> None:
    """API keys, Prometheus metrics and model rollback.

    The key check is a middleware keyed on method + path, so routes included after this
    call are covered too; the OpenAPI document applies the same rule when it is built.
    """
    from ia_continu.api.routes import admin

    app.include_router(admin.router)
    if api_keys:
        from ia_continu.api.security import ApiKeyMiddleware, ProtectionRule, document_api_key

        rule = ProtectionRule(
            protect_predict=settings.protect_predict, protect_reads=settings.protect_reads
        )
        app.add_middleware(ApiKeyMiddleware, keys=api_keys, rule=rule, router=app.router)
        build_openapi = app.openapi

        def openapi_with_api_key() -> dict[str, Any]:
            return document_api_key(build_openapi(), rule)

        app.openapi = openapi_with_api_key  # type: ignore[method-assign]
    # Host/Origin (keyless), 415, NUL, HEAD and client disconnects (api/guard.py): outside
    # the key check, inside the metrics.
    from ia_continu.api.guard import RequestRulesMiddleware, document_content_types

    app.add_middleware(
        RequestRulesMiddleware,
        keyless=not api_keys,
        bind_host=settings.host,
        allowed_hosts=settings.allowed_hosts,
        allowed_origins=settings.allowed_origins,
    )
    build_openapi_without_415 = app.openapi

    def openapi_with_content_types() -> dict[str, Any]:
        schema = build_openapi_without_415()
        document_content_types(schema)
        return schema

    app.openapi = openapi_with_content_types  # type: ignore[method-assign]
    if instrument:
        from ia_continu.api.metrics import AppMetrics, MetricsMiddleware
        from ia_continu.api.routes import metrics

        app.state.metrics = AppMetrics(settings=settings)
        app.include_router(metrics.router)
        # Added last = outermost: the 401s answered by the key check are counted too.
        app.add_middleware(MetricsMiddleware, metrics=app.state.metrics, routes_of=app)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default handler echoes the input back, and an input such as NaN
        # cannot be encoded as JSON: that turned a client mistake into a 500.
        return JSONResponse(status_code=422, content={"detail": _clean_errors(exc.errors())})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI answers 400 "error parsing the body" when json.loads fails with something
        # other than JSONDecodeError (bytes that are not UTF-8, nesting too deep): that is
        # malformed JSON too, a 422 like the rest.
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            return JSONResponse(
                status_code=422,
                content={
                    "detail": [
                        {
                            "type": "json_invalid",
                            "loc": ["body"],
                            "msg": f"JSON decode error: {type(exc.__cause__).__name__}",
                        }
                    ]
                },
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        from ia_continu.ops.disk import describe_disk_error, is_disk_full_error

        if is_disk_full_error(exc):  # say what is full, not only that the write failed
            settings: Settings = request.app.state.settings
            log.error("%s (data directory %s)", describe_disk_error(exc), settings.data_dir)
        else:
            log.warning("database error: %s", exc)
        return JSONResponse(
            status_code=503,
            content={"detail": "database unavailable, retry shortly"},
            headers={"Retry-After": "1"},
        )


def _install_disk_error_handler(app: FastAPI) -> None:
    """A full or read-only disk (model file, any run-time file) is a 503 on the write that
    needed it, with a log line naming the file; other OSErrors stay server errors."""

    @app.exception_handler(OSError)
    async def _disk_unavailable(_request: Request, exc: OSError) -> JSONResponse:
        from ia_continu.ops.disk import describe_disk_error, is_disk_full_error

        if not is_disk_full_error(exc):
            raise exc
        log.error("%s", describe_disk_error(exc))
        return JSONResponse(
            status_code=503,
            content={"detail": "the disk is full or read-only: this write cannot be stored"},
            headers={"Retry-After": "30"},
        )


def _clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    cleaned = []
    for error in errors:
        item: dict[str, Any] = {
            "type": error.get("type"),
            "loc": [p if isinstance(p, int | str) else str(p) for p in error.get("loc", ())],
            "msg": error.get("msg"),
        }
        value = error.get("input")
        if _is_plain_json(value):
            item["input"] = value
        cleaned.append(item)
    return cleaned


def _is_plain_json(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, bool | int | str):
        return not isinstance(value, str) or len(value) <= 200
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list | tuple) and depth < 2 and len(value) <= 20:
        return all(_is_plain_json(v, depth + 1) for v in value)
    if isinstance(value, dict) and depth < 2 and len(value) <= 20:
        return all(isinstance(k, str) and _is_plain_json(v, depth + 1) for k, v in value.items())
    return False
