"""Prometheus metrics: per-process counters, the database's view at scrape time
(collectors in metrics_collectors.py), and the multi-worker plumbing (directory and
dead workers in metrics_multiprocess.py).

With several uvicorn workers every process writes its counters to memory-mapped files in
PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode) and any worker answering
/metrics sums them all. `ia-continu serve` creates and empties that directory before the
workers start; prometheus_client picks the mode when it is first imported, so nothing
here imports it at module level.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from ia_continu.api.guard import CLIENT_GONE, CLIENT_GONE_STATUS
from ia_continu.api.metrics_collectors import (
    _DatabaseCollector,
    _FamiliesCollector,
    _SettingsCollector,
)
from ia_continu.api.metrics_multiprocess import (
    _SERVED_PREFIX,
    is_multiprocess_mode,
    mark_dead_workers,
    read_served_versions,
)
from ia_continu.api.security import ASGIApp, Message, Receive, Scope, Send
from ia_continu.config import Settings, get_prometheus_multiproc_dir

if TYPE_CHECKING:
    from ia_continu.services.predlog import PredictionLogCounters, PredictionLogger

log = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"  # route label of requests no route matches (bounded cardinality)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# /predict answers in well under a millisecond; retrain/generate take seconds.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
RETRAIN_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# How often each worker copies its prediction logger's counters into the metrics: off the
# /predict path, and well under Prometheus's scrape interval.
PREDICTION_LOG_REPORT_SECONDS = 5.0


# --- the per-process metrics ---------------------------------------------------------------------


class AppMetrics:
    """The metrics one API process records. In single-process mode they live in their own
    registry (two apps in one test process do not share counts)."""

    def __init__(self, *, settings: Settings | None = None) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        # The *_created series double the output and nothing here reads them.
        disable_created_metrics()
        self.multiprocess = is_multiprocess_mode()
        self.multiprocess_dir = get_prometheus_multiproc_dir() if self.multiprocess else None
        if self.multiprocess and self.multiprocess_dir is None:  # set then unset: be safe
            self.multiprocess = False
        registry = None if self.multiprocess else CollectorRegistry(auto_describe=True)
        self.registry = registry
        labels = ("method", "route", "status")
        self.http_requests = Counter(
            "ia_http_requests",
            "HTTP requests by method, route template and status code",
            labels,
            registry=registry,
        )
        self.http_duration = Histogram(
            "ia_http_request_duration_seconds",
            "HTTP request latency by method, route template and status code",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "ia_predictions",
            "Predictions served, by predicted class and model version",
            ("model_version", "prediction"),
            registry=registry,
        )
        self.retrains = Counter(
            "ia_retrains",
            "Retrains run through this API (POST /retrain), by outcome",
            ("outcome",),
            registry=registry,
        )
        self.retrain_duration = Histogram(
            "ia_retrain_duration_seconds",
            "Duration of retrains run through this API, by outcome",
            ("outcome",),
            buckets=RETRAIN_BUCKETS,
            registry=registry,
        )
        self.activations = Counter(
            "ia_model_activations",
            "Model activations through POST /models/{version}/activate, by outcome",
            ("outcome",),
            registry=registry,
        )
        # ia_served_model: one series per worker process (label pid in multiprocess mode),
        # for the version it serves now. Not a prometheus_client Gauge: a multiprocess
        # file cannot forget a series, and after 1,755 versions /metrics carried 2,816
        # zeros. Each worker writes its version to served_<pid>.txt; render() reads them.
        self._served_version: str | None = None
        # One series per live worker process: "workers up" on the dashboards.
        self.worker_up = Gauge(
            "ia_worker_up",
            "1 for each live API worker process",
            multiprocess_mode="liveall",
            registry=registry,
        )
        self.worker_up.set(1)
        # The prediction logger's own counters, copied every few seconds (never on the
        # /predict path): rows lost because the queue was full or the database refused
        # them for the whole retry window.
        self.prediction_log_dropped = Counter(
            "ia_prediction_log_dropped",
            "Predictions not logged because the in-memory log queue was full",
            registry=registry,
        )
        self.prediction_log_abandoned = Counter(
            "ia_prediction_log_abandoned",
            "Logged predictions given up after the database refused them for the retry window",
            registry=registry,
        )
        self.prediction_log_flush_errors = Counter(
            "ia_prediction_log_flush_errors",
            "Failed attempts to write logged predictions to the database (retried)",
            registry=registry,
        )
        self.prediction_log_queued = Gauge(
            "ia_prediction_log_queued",
            "Predictions accepted into the log queue and not yet written",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self._reported_log = (0, 0, 0)
        # Settings the alert rules compare against (IA_MIN_ACCURACY, IA_MONITOR_INTERVAL):
        # exported so that Prometheus follows .env instead of a copy of it in the rules.
        self.settings = settings
        if registry is not None:
            registry.register(_ServedModelCollector(self))
        # labels() takes a lock and builds a key: cache the children (hot path).
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._prediction_children: dict[tuple[str, int], Any] = {}

    # -- recording -------------------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.http_requests.labels(method, route, str(status)),
                self.http_duration.labels(method, route, str(status)),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def count_prediction(self, model_version: str, prediction: int, n: int = 1) -> None:
        key = (model_version, prediction)
        child = self._prediction_children.get(key)
        if child is None:
            child = self.predictions.labels(model_version, str(prediction))
            self._prediction_children[key] = child
        child.inc(n)

    def count_predictions(self, model_version: str, predicted: Any) -> None:
        """Count a batch (any sequence or array of 0/1)."""
        ones = int(predicted.sum()) if hasattr(predicted, "sum") else sum(map(int, predicted))
        total = len(predicted)
        if ones:
            self.count_prediction(model_version, 1, ones)
        if total - ones:
            self.count_prediction(model_version, 0, total - ones)

    @contextlib.contextmanager
    def track_retrain(self) -> Iterator[None]:
        started = time.perf_counter()
        outcome = "failed"
        try:
            yield
            outcome = "success"
        finally:
            self.retrains.labels(outcome).inc()
            self.retrain_duration.labels(outcome).observe(time.perf_counter() - started)

    def count_activation(self, outcome: str) -> None:
        self.activations.labels(outcome).inc()

    def set_served_version(self, version: str) -> None:
        previous, self._served_version = self._served_version, version
        if previous == version or not self.multiprocess or self.multiprocess_dir is None:
            return
        path = self.multiprocess_dir / f"{_SERVED_PREFIX}{os.getpid()}.txt"
        temporary = path.with_suffix(".tmp")
        try:  # whole or not at all: a scrape never reads half a version
            temporary.write_text(version)
            os.replace(temporary, path)
        except OSError as exc:  # full tmpfs: /metrics loses this series, serving goes on
            log.warning("metrics: cannot record the served version in %s: %s", path, exc)

    def report_prediction_log(self, counters: PredictionLogCounters) -> None:
        """Bring the prediction-log metrics up to the logger's counters (adds the deltas
        since the previous call)."""
        dropped, abandoned, errors = self._reported_log
        if counters.dropped > dropped:
            self.prediction_log_dropped.inc(counters.dropped - dropped)
        if counters.abandoned > abandoned:
            self.prediction_log_abandoned.inc(counters.abandoned - abandoned)
        if counters.flush_errors > errors:
            self.prediction_log_flush_errors.inc(counters.flush_errors - errors)
        self._reported_log = (
            max(dropped, counters.dropped),
            max(abandoned, counters.abandoned),
            max(errors, counters.flush_errors),
        )
        self.prediction_log_queued.set(counters.queued)

    def mark_this_process_dead(self) -> None:
        if self.multiprocess and self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            served = self.multiprocess_dir / f"{_SERVED_PREFIX}{os.getpid()}.txt"
            served.unlink(missing_ok=True)
            multiprocess.mark_process_dead(os.getpid(), str(self.multiprocess_dir))

    # -- exposition ------------------------------------------------------------------------------

    def render(self, engine: Engine | None) -> bytes:
        """The text exposition: every process's counters plus the database's view."""
        from prometheus_client import generate_latest

        if self.multiprocess and self.multiprocess_dir is not None:
            try:
                process_part = self._render_multiprocess(self.multiprocess_dir)
            except Exception as exc:  # degrade: the database's view still answers
                log.warning("metrics: cannot read %s: %s", self.multiprocess_dir, exc)
                process_part = b""
        else:
            assert self.registry is not None
            process_part = generate_latest(self.registry)
        database_part = generate_latest(_DatabaseCollector(engine))
        if self.settings is None:
            return process_part + database_part
        return process_part + database_part + generate_latest(_SettingsCollector(self.settings))

    def _render_multiprocess(self, path: Path) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.multiprocess import MultiProcessCollector

        mark_dead_workers(path)
        process_registry = CollectorRegistry()
        MultiProcessCollector(process_registry, path=str(path))
        served = GaugeMetricFamily(
            "ia_served_model",
            "1 for the model version this API process serves",
            labels=["pid", "version"],
        )
        for pid, version in sorted(read_served_versions(path).items()):
            served.add_metric([str(pid), version], 1)
        return generate_latest(process_registry) + generate_latest(_FamiliesCollector([served]))


async def report_prediction_log_periodically(
    metrics: AppMetrics, predlog: PredictionLogger, interval: float = PREDICTION_LOG_REPORT_SECONDS
) -> None:
    """Copy the logger's counters into the metrics every ``interval`` seconds (a task of
    the API's lifespan; cancelled at shutdown, after which the caller reports once more)."""
    import asyncio

    while True:
        await asyncio.sleep(interval)
        metrics.report_prediction_log(predlog.counters())


class _ServedModelCollector:
    """Single-process mode: the one version this process serves."""

    def __init__(self, metrics: AppMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(
            "ia_served_model", "1 for the model version this API process serves", labels=["version"]
        )
        if self._metrics._served_version is not None:
            family.add_metric([self._metrics._served_version], 1)
        yield family


# --- the middleware ------------------------------------------------------------------------------


class MetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): counts and times every HTTP request by its route
    template, including the 401s the API-key check answers before routing."""

    def __init__(self, app: ASGIApp, *, metrics: AppMetrics, routes_of: Any) -> None:
        self.app = app
        self.metrics = metrics
        self._routes_of = routes_of  # the FastAPI app: routes added later are seen too
        self._template_cache: tuple[int, list[tuple[Any, str]]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before any response is a server error

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if scope.get(CLIENT_GONE):  # left mid-body: not a server error (api/guard.py)
                status = CLIENT_GONE_STATUS
            method = scope["method"]
            self.metrics.observe_request(
                method if method in _METHODS else "other",
                self._route_template(scope),
                status,
                time.perf_counter() - started,
            )

    def _route_template(self, scope: Scope) -> str:
        route = scope.get("route")
        path = getattr(route, "path", None)
        if path is not None:
            return str(path)
        # Answered before routing (401) or by no route (404): match the templates here,
        # off the hot path, so a protected route's 401s are still labelled by it.
        request_path = scope["path"]
        for pattern, template in self._templates():
            if pattern.match(request_path):
                return template
        return UNMATCHED

    def _templates(self) -> list[tuple[Any, str]]:
        routes = self._routes_of.router.routes
        if self._template_cache is None or self._template_cache[0] != len(routes):
            from starlette.routing import compile_path

            # The OpenAPI paths list every included route, whatever router holds it.
            templates = list(self._routes_of.openapi().get("paths", {}))
            templates += [r.path for r in routes if isinstance(getattr(r, "path", None), str)]
            compiled = [(compile_path(t)[0], t) for t in dict.fromkeys(templates)]
            self._template_cache = (len(routes), compiled)
        return self._template_cache[1]

    def _lifespan_send(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                # This worker's live gauges must not outlive it.
                self.metrics.mark_this_process_dead()
            await send(message)

        return wrapped
