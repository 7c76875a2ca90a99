"""Prometheus metrics: per-process counters, the database's view at scrape time, and the
multi-worker plumbing.

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
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from ia_continu.api.guard import CLIENT_GONE, CLIENT_GONE_STATUS
from ia_continu.api.security import ASGIApp, Message, Receive, Scope, Send
from ia_continu.config import (
    PROMETHEUS_MULTIPROC_ENV,
    Settings,
    get_prometheus_multiproc_dir,
    get_runtime_tmpfs_dirs,
)

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
FEATURES = ("feature1", "feature2")
# How often each worker copies its prediction logger's counters into the metrics: off the
# /predict path, and well under Prometheus's scrape interval.
PREDICTION_LOG_REPORT_SECONDS = 5.0


# --- multi-worker directory ---------------------------------------------------------------------

# A tmpfs with less free space than this is passed over (each worker's files take ~64 KiB
# each and grow by doubling; a write into a memory-mapped page the file system cannot
# back is a SIGBUS that kills the worker, not an error).
MIN_METRICS_DIR_FREE_BYTES = 16 * 1024 * 1024
_SERVED_PREFIX = "served_"  # served_<pid>.txt: the version that worker serves


def _instance_name(settings: Settings) -> str:
    # One directory per host and port: replicas sharing a volume (compose --scale api=3)
    # or two servers on one machine never mix or wipe each other's files.
    return f"{socket.gethostname()}-{settings.port}"


def _has_room(directory: Path) -> bool:
    try:
        if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
            return False
        stat = os.statvfs(directory)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize >= MIN_METRICS_DIR_FREE_BYTES


def multiprocess_dir_for(settings: Settings) -> Path:
    """Where `ia-continu serve` keeps the Prometheus multiprocess files: IA_METRICS_DIR,
    else a memory-backed directory ($XDG_RUNTIME_DIR, /dev/shm) so that a full or
    read-only data disk cannot reach the memory-mapped files, else the data directory."""
    if settings.metrics_dir is not None:
        return settings.metrics_dir / _instance_name(settings)
    for base in get_runtime_tmpfs_dirs():
        if _has_room(base):
            return base / "ia-continu-metrics" / _instance_name(settings)
    return settings.data_dir / "prometheus" / _instance_name(settings)


def prepare_multiprocess_dir(settings: Settings) -> Path:
    """Create and empty the shared metrics directory, and export it to the workers.

    Call before uvicorn starts (and before anything imports prometheus_client).
    Raises OSError when the directory cannot be created or written."""
    path = multiprocess_dir_for(settings).resolve()
    path.mkdir(parents=True, exist_ok=True)
    # Files of a previous run would be summed in as if its processes were still alive.
    for stale in [*path.glob("*.db"), *path.glob(f"{_SERVED_PREFIX}*")]:
        stale.unlink(missing_ok=True)
    probe = path / ".write-probe"
    probe.write_bytes(b"\0" * 4096)  # ENOSPC / EROFS here, not a SIGBUS in a worker later
    probe.unlink()
    os.environ[PROMETHEUS_MULTIPROC_ENV] = str(path)
    return path


def remove_multiprocess_dir(path: Path) -> None:
    """Delete the directory when the server stops (tmpfs is memory)."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):  # the shared parent, when now empty
        path.parent.rmdir()


def is_multiprocess_mode() -> bool:
    """Whether prometheus_client (chosen at its import) writes values to shared files."""
    from prometheus_client import values

    return values.ValueClass is not values.MutexValue


def mark_dead_workers(path: Path) -> list[int]:
    """Drop the live-gauge files of processes that no longer exist (a killed worker that
    uvicorn replaced); counters and histograms of dead workers are kept, as they must."""
    from prometheus_client import multiprocess

    dead: set[int] = set()
    for file in path.glob("gauge_live*_*.db"):
        try:
            pid = int(file.stem.rsplit("_", 1)[1])
        except ValueError:
            continue
        if pid not in dead and not _pid_alive(pid):
            dead.add(pid)
    for file in path.glob(f"{_SERVED_PREFIX}*.txt"):
        try:
            pid = int(file.stem.removeprefix(_SERVED_PREFIX))
        except ValueError:
            continue
        if pid in dead or not _pid_alive(pid):
            dead.add(pid)
            file.unlink(missing_ok=True)
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(path))
    return sorted(dead)


def read_served_versions(path: Path) -> dict[int, str]:
    """pid -> the version each live worker serves (one small file per worker)."""
    served: dict[int, str] = {}
    for file in path.glob(f"{_SERVED_PREFIX}*.txt"):
        try:
            pid = int(file.stem.removeprefix(_SERVED_PREFIX))
            version = file.read_text().strip()
        except (ValueError, OSError):
            continue
        if version and _pid_alive(pid):
            served[pid] = version
    return served


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


class _SettingsCollector:
    """The thresholds the alert rules need, as this process's settings say."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "ia_config_min_accuracy",
            "IA_MIN_ACCURACY: the accuracy below which the champion is considered failing",
            value=self._settings.min_accuracy,
        )
        yield GaugeMetricFamily(
            "ia_config_monitor_interval_seconds",
            "IA_MONITOR_INTERVAL: seconds between scheduled monitoring runs",
            value=self._settings.monitor_interval,
        )


class _FamiliesCollector:
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        yield from self._families


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


class _DatabaseCollector:
    """Read at scrape time, so every process (and the Prefect worker's writes) agree."""

    def __init__(self, engine: Engine | None) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from ia_continu.db import snapshot as db_snapshot

        up = GaugeMetricFamily("ia_database_up", "1 when /metrics could read the database")
        if self._engine is None:
            up.add_metric([], 0)
            yield up
            return
        try:
            snap = db_snapshot.read_metrics_snapshot(self._engine)
        except Exception as exc:  # report the outage instead of failing the scrape
            log.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _champion_families(snap)
        yield from _monitoring_families(snap)


def _champion_families(snap: Any) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    info = GaugeMetricFamily(
        "ia_champion_info",
        "1 for the champion (active) model version",
        labels=["version", "registry_version"],
    )
    accuracy = GaugeMetricFamily(
        "ia_champion_accuracy", "Held-out accuracy of the champion model", labels=["version"]
    )
    if snap.champion_version is not None:
        registry_version = snap.champion_registry_version
        info.add_metric(
            [snap.champion_version, "" if registry_version is None else str(registry_version)], 1
        )
        accuracy.add_metric([snap.champion_version], snap.champion_accuracy)
    yield info
    yield accuracy
    yield GaugeMetricFamily(
        "ia_model_versions",
        "Model versions stored (every retrain, from the API or the monitoring flow, adds one)",
        value=snap.model_count,
    )


def _monitoring_families(snap: Any) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    yield GaugeMetricFamily(
        "ia_monitoring_runs", "Monitoring runs recorded", value=snap.monitoring_run_count
    )
    run = snap.last_monitoring_run
    info = GaugeMetricFamily(
        "ia_monitoring_last_run_info",
        "1 with the latest monitoring run's status and decision",
        labels=["status", "decision"],
    )
    when = GaugeMetricFamily(
        "ia_monitoring_last_run_timestamp_seconds",
        "When the latest monitoring run finished (started, while it runs), Unix time",
    )
    duration = GaugeMetricFamily(
        "ia_monitoring_last_run_duration_seconds", "Duration of the latest monitoring run"
    )
    drift = GaugeMetricFamily(
        "ia_monitoring_last_drift_detected", "1 when the latest monitoring run detected drift"
    )
    accuracy = GaugeMetricFamily(
        "ia_monitoring_last_accuracy",
        "Champion accuracy on the latest monitoring batch",
    )
    reference = GaugeMetricFamily(
        "ia_monitoring_last_reference_accuracy",
        "Champion held-out accuracy the latest monitoring run compared against",
    )
    ks = GaugeMetricFamily(
        "ia_monitoring_last_ks_statistic",
        "Kolmogorov-Smirnov statistic per feature, latest monitoring run",
        labels=["feature"],
    )
    ks_p = GaugeMetricFamily(
        "ia_monitoring_last_ks_p_value",
        "Kolmogorov-Smirnov p-value per feature, latest monitoring run",
        labels=["feature"],
    )
    psi = GaugeMetricFamily(
        "ia_monitoring_last_psi",
        "Population stability index per feature, latest monitoring run",
        labels=["feature"],
    )
    if run is not None:
        info.add_metric([str(run.get("status") or ""), str(run.get("decision") or "")], 1)
        moment = run.get("finished_at") or run.get("started_at")
        if moment is not None:
            when.add_metric([], moment.timestamp())
        _add_if_number(duration, [], run.get("duration_seconds"))
        drift.add_metric([], 1 if run.get("drift_detected") else 0)
        _add_if_number(accuracy, [], run.get("accuracy"))
        _add_if_number(reference, [], run.get("reference_accuracy"))
        for feature in FEATURES:
            _add_if_number(ks, [feature], run.get(f"ks_statistic_{feature}"))
            _add_if_number(ks_p, [feature], run.get(f"ks_p_value_{feature}"))
            _add_if_number(psi, [feature], run.get(f"psi_{feature}"))
    yield from (info, when, duration, drift, accuracy, reference, ks, ks_p, psi)


def _add_if_number(family: Any, labels: list[str], value: object) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        family.add_metric(labels, float(value))


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
