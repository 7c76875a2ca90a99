"""MLflow tracking and model registry: the only module that imports mlflow.

``import mlflow`` costs ~2 s, so it happens inside the functions, never at import
time or on the API's start-up path.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import httpx

from ia_continu.config import Settings
from ia_continu.ml.warm_gate import wait_until_warm

CHAMPION = "champion"


CHALLENGER = "challenger"


# Tag of a registered version that never reached the models table (a retrain failed or
# gave up after registering it): never served, never given an alias. See docs/mlflow.md.
ORPHAN_TAG = "ia_continu.orphan"


T = TypeVar("T")


class RegistryUnavailableError(RuntimeError):
    """The MLflow tracking server cannot be reached or failed."""


class Deadline:
    """The time left for one MLflow operation (several calls share one deadline).

    MLflow's client bounds each HTTP call (IA_MLFLOW_TIMEOUT, IA_MLFLOW_MAX_RETRIES), but
    a retrain makes ~16 calls: against a frozen server (SIGSTOP, a full disk, a stuck
    database) each would wait its own timeout, and /retrain answered after 30-60 s."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._expires = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(0.0, self._expires - time.monotonic())


class _Abandoned(Exception):
    """The caller stopped waiting (deadline passed): do nothing more."""


_experiment_ids: dict[tuple[str, str], str] = {}


_ops: Any = None


_ops_lock = threading.Lock()


def _op_executor() -> Any:
    # Separate from the mlflow-io pool that one operation's parallel calls use: an
    # operation waiting for its calls must not wait behind them for a thread.
    global _ops
    if _ops is None:
        with _ops_lock:
            if _ops is None:
                from concurrent.futures import ThreadPoolExecutor

                _ops = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mlflow-op")
    return _ops


def run_with_deadline(
    deadline: Deadline,
    what: str,
    operation: Callable[[threading.Event], T],
    *,
    on_late: Callable[[T], None] | None = None,
) -> T:
    """Run ``operation`` in a worker thread and wait for it at most until ``deadline``.

    Past the deadline the caller gets RegistryUnavailableError at once; the operation,
    still blocked in an HTTP call, is abandoned: ``operation`` receives an Event set at
    that moment (it stops at its next step), an operation not started yet never starts,
    and a result that arrives later is handed to ``on_late`` (to undo it) instead of
    being lost. Exceptions become RegistryUnavailableError."""
    from concurrent.futures import TimeoutError as FutureTimeout

    abandoned = threading.Event()
    lock = threading.Lock()
    delivered = [False]

    def guarded() -> T:
        with lock:
            if abandoned.is_set():
                raise _Abandoned
        result = operation(abandoned)
        with lock:
            if not abandoned.is_set():
                delivered[0] = True
                return result
        if on_late is not None:
            try:
                on_late(result)
            except Exception as exc:  # reconcile will finish the job
                _log().warning("cleaning up late MLflow result of %s failed: %s", what, exc)
        raise _Abandoned

    future = _op_executor().submit(guarded)
    try:
        return future.result(timeout=deadline.remaining())
    except FutureTimeout:
        with lock:
            late = delivered[0]
            if not late:
                abandoned.set()
        if late:  # finished in the very moment the deadline passed: keep it
            return future.result()
        raise RegistryUnavailableError(
            f"MLflow did not answer within {deadline.seconds:g} s ({what}; IA_MLFLOW_DEADLINE)"
        ) from None
    except RegistryUnavailableError:
        raise
    except Exception as exc:
        raise RegistryUnavailableError(f"MLflow failed: {type(exc).__name__}: {exc}") from exc


def _log() -> Any:
    import logging

    return logging.getLogger(__name__)


def _stop_if(abandoned: threading.Event) -> None:
    if abandoned.is_set():
        raise _Abandoned


def _begin(settings: Settings, deadline: Deadline | None = None) -> tuple[Any, Deadline]:
    """The deadline starts; a /health probe within it (a dead server fails fast, and
    before mlflow's global tracking URI is pointed at it); then the client."""
    deadline = deadline or Deadline(settings.mlflow_deadline)
    check_tracking_server(settings, deadline=deadline)
    return prepare(settings), deadline


def prepare(settings: Settings) -> Any:
    """Imports and the client: nothing here touches the network (after the API's
    warm-up, see registry/warmup.py, it costs nothing)."""
    client = _client(settings)
    _pip_requirements()  # imports mlflow.sklearn and skops
    return client


def _client(settings: Settings) -> Any:
    wait_until_warm()
    import mlflow
    from mlflow import MlflowClient

    # MLflow's defaults retry a dead server for minutes; a user waiting on /retrain needs
    # a prompt 503 instead. These are read by MLflow at request time. (One call never
    # outlives the whole operation's deadline either.)
    per_call = min(settings.mlflow_timeout, settings.mlflow_deadline)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, per_call)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def check_tracking_server(
    settings: Settings, *, timeout: float = 2.0, deadline: Deadline | None = None
) -> None:
    """Fail fast (RegistryUnavailableError) when an HTTP tracking server does not answer.

    Every MLflow entry point calls this first, so it also waits for a running warm-up
    (concurrent imports of mlflow are unsafe, see registry/warmup.py)."""
    wait_until_warm()
    uri = settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    if deadline is not None:
        timeout = min(timeout, deadline.remaining())
        if timeout <= 0:
            raise RegistryUnavailableError(
                f"MLflow did not answer within {deadline.seconds:g} s (IA_MLFLOW_DEADLINE)"
            )
    try:
        response = _health_client().get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise RegistryUnavailableError(f"MLflow tracking server {uri} unreachable: {exc}") from exc
    if response.status_code != 200:
        raise RegistryUnavailableError(
            f"MLflow tracking server {uri} answered {response.status_code} on /health"
        )


_http: httpx.Client | None = None


_http_lock = threading.Lock()


def _health_client() -> httpx.Client:
    # One client per process: building one loads the CA bundle (~0.1-0.2 s) every time.
    global _http
    if _http is None:
        with _http_lock:
            if _http is None:
                _http = httpx.Client()
    return _http


def _experiment_id(client: Any, name: str, uri: str) -> str:
    key = (uri, name)
    cached = _experiment_ids.get(key)
    if cached is not None:
        return cached
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            experiment_id = client.create_experiment(name)
        except Exception:  # another process created it meanwhile
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    else:
        experiment_id = experiment.experiment_id
    _experiment_ids[key] = experiment_id
    return str(experiment_id)


_requirements: list[str] | None = None


def _pip_requirements() -> list[str]:
    global _requirements
    if _requirements is None:
        import mlflow.sklearn

        _requirements = list(mlflow.sklearn.get_default_pip_requirements(include_skops=True))
    return _requirements


def set_model_alias(
    *,
    settings: Settings,
    alias: str,
    registry_version: int,
    deadline: Deadline | None = None,
    on_late: Callable[[], None] | None = None,
) -> None:
    """``on_late`` runs if the alias moved after the caller got its 503 (a frozen server
    that resumed): the caller's database did not follow, the alias must go back."""
    client, deadline = _begin(settings, deadline)

    def operation(abandoned: threading.Event) -> None:
        client.set_registered_model_alias(settings.model_name, alias, str(registry_version))

    late = None if on_late is None else (lambda _: on_late())
    run_with_deadline(deadline, f"moving the {alias} alias", operation, on_late=late)


def get_alias_version(
    *, settings: Settings, alias: str, deadline: Deadline | None = None
) -> int | None:
    """The registry version behind ``alias``, or None when the alias is not set."""
    client = prepare(settings)
    deadline = deadline or Deadline(settings.mlflow_deadline)

    def operation(abandoned: threading.Event) -> int | None:
        try:
            mv = client.get_model_version_by_alias(settings.model_name, alias)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        return int(mv.version)

    return run_with_deadline(deadline, f"reading the {alias} alias", operation)


def _is_missing(exc: Exception) -> bool:
    return "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower()


def log_monitoring_metrics(
    *,
    settings: Settings,
    run_name: str,
    metrics: dict[str, float],
    params: dict[str, Any],
    now: datetime,
) -> str:
    """Log one monitoring run's figures as an MLflow run; returns its run id."""
    client, deadline = _begin(settings)
    from mlflow.entities import Metric, Param

    def operation(abandoned: threading.Event) -> str:
        experiment_id = _experiment_id(
            client, settings.mlflow_experiment, settings.mlflow_tracking_uri
        )
        _stop_if(abandoned)
        run = client.create_run(
            experiment_id, run_name=run_name, tags={"ia_continu.kind": "monitoring"}
        )
        try:
            _stop_if(abandoned)
            ts = int(now.timestamp() * 1000)
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                params=[Param(k, str(v)) for k, v in params.items()],
            )
            client.set_terminated(run.info.run_id)
        except BaseException:
            with contextlib.suppress(Exception):
                client.set_terminated(run.info.run_id, status="FAILED")
            raise
        return str(run.info.run_id)

    return run_with_deadline(deadline, "logging the monitoring run", operation)


def run_url(settings: Settings, *, experiment_id: str, run_id: str) -> str:
    """Link to a run in the MLflow UI."""
    base = settings.mlflow_ui_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def get_experiment_id(settings: Settings) -> str:
    """The id of the configured experiment (created if missing), for run links."""
    client, deadline = _begin(settings)
    return run_with_deadline(
        deadline,
        "looking up the experiment",
        lambda _: _experiment_id(client, settings.mlflow_experiment, settings.mlflow_tracking_uri),
    )


def delete_model_alias(*, settings: Settings, alias: str, deadline: Deadline | None = None) -> None:
    """Remove ``alias`` from the registered model (no error when it is not set)."""
    client, deadline = _begin(settings, deadline)

    def operation(abandoned: threading.Event) -> None:
        try:
            client.delete_registered_model_alias(settings.model_name, alias)
        except Exception as exc:
            if not _is_missing(exc):
                raise

    run_with_deadline(deadline, f"removing the {alias} alias", operation)


def ensure_experiment(settings: Settings, *, artifact_location: str | None = None) -> str:
    """Create the configured experiment if missing, storing its artifacts at
    ``artifact_location`` (a local store would otherwise write ./mlruns in the cwd)."""
    client, deadline = _begin(settings)

    def operation(abandoned: threading.Event) -> str:
        key = (settings.mlflow_tracking_uri, settings.mlflow_experiment)
        experiment = client.get_experiment_by_name(settings.mlflow_experiment)
        if experiment is not None:
            experiment_id = str(experiment.experiment_id)
        else:
            experiment_id = str(
                client.create_experiment(
                    settings.mlflow_experiment, artifact_location=artifact_location
                )
            )
        _experiment_ids[key] = experiment_id
        return experiment_id

    return run_with_deadline(deadline, "creating the experiment", operation)
