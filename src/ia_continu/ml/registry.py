"""MLflow tracking and model registry: the only module that imports mlflow.

``import mlflow`` costs ~2 s, so it happens inside the functions, never at import
time or on the API's start-up path.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from ia_continu.config import Settings
from ia_continu.ml.train import TrainingResult

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryUnavailableError(RuntimeError):
    """The MLflow tracking server cannot be reached or failed."""


@dataclass(frozen=True, slots=True)
class RegisteredRun:
    run_id: str
    run_name: str
    experiment_id: str
    registry_version: int

    @property
    def model_version(self) -> str:
        return f"v{self.registry_version}"


_experiment_ids: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def _client(settings: Settings) -> Any:
    import mlflow
    from mlflow import MlflowClient

    # MLflow's defaults retry a dead server for minutes; a user waiting on /retrain needs
    # a prompt 503 instead. These are read by MLflow at request time.
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(settings.mlflow_max_retries)
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, settings.mlflow_timeout)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return MlflowClient(tracking_uri=settings.mlflow_tracking_uri)


def check_tracking_server(settings: Settings, *, timeout: float = 2.0) -> None:
    """Fail fast (RegistryUnavailableError) when an HTTP tracking server does not answer."""
    uri = settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    try:
        response = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as exc:
        raise RegistryUnavailableError(f"MLflow tracking server {uri} unreachable: {exc}") from exc
    if response.status_code != 200:
        raise RegistryUnavailableError(
            f"MLflow tracking server {uri} answered {response.status_code} on /health"
        )


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


def _unique_run_name(client: Any, experiment_id: str, prefix: str, now: datetime) -> str:
    base = f"{prefix}_{now:%Y%m%d_%H%M%S}"
    taken = client.search_runs(
        [experiment_id], filter_string=f"attributes.run_name LIKE '{base}%'", max_results=1000
    )
    names = {run.info.run_name for run in taken}
    if base not in names:
        return base
    n = 2
    while f"{base}_{n}" in names:
        n += 1
    return f"{base}_{n}"


def log_training_run(
    *,
    settings: Settings,
    result: TrainingResult,
    generation_id: int,
    now: datetime,
    run_prefix: str = "retrain",
    alias: str | None = CHAMPION,
    extra_params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> RegisteredRun:
    """Log params, held-out metrics and the model; register it and set ``alias``.

    Raises RegistryUnavailableError for any MLflow failure, leaving the caller's state
    untouched (a version may have been registered without its alias: never served).
    """
    check_tracking_server(settings)
    try:
        return _log_training_run(
            settings=settings,
            result=result,
            generation_id=generation_id,
            now=now,
            run_prefix=run_prefix,
            alias=alias,
            extra_params=extra_params or {},
            tags=tags or {},
        )
    except RegistryUnavailableError:
        raise
    except Exception as exc:
        raise RegistryUnavailableError(f"MLflow failed: {type(exc).__name__}: {exc}") from exc


def _log_training_run(
    *,
    settings: Settings,
    result: TrainingResult,
    generation_id: int,
    now: datetime,
    run_prefix: str,
    alias: str | None,
    extra_params: dict[str, Any],
    tags: dict[str, str],
) -> RegisteredRun:
    import mlflow
    import mlflow.sklearn
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.models import infer_signature

    with _lock:  # mlflow's fluent API keeps the active run in process-global state
        client = _client(settings)
        experiment_id = _experiment_id(
            client, settings.mlflow_experiment, settings.mlflow_tracking_uri
        )
        run_name = _unique_run_name(client, experiment_id, run_prefix, now)
        hp = result.hyperparameters
        params = {
            "C": hp.C,
            "solver": hp.solver,
            "max_iter": hp.max_iter,
            "training_samples": result.training_samples,
            "test_samples": result.test_samples,
            "generation_id": generation_id,
            **extra_params,
        }
        ts = int(now.timestamp() * 1000)
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, float(v), ts, 0) for k, v in result.metrics.as_dict().items()],
                params=[Param(k, str(v)) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in tags.items()],
            )
            predictions = result.estimator.predict(result.x_test[:5])
            signature = infer_signature(result.x_test[:5], predictions)
            info = mlflow.sklearn.log_model(
                result.estimator,
                name="model",
                signature=signature,
                # Explicit requirements: inferring them costs ~4-5 s per call.
                pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
                registered_model_name=settings.model_name,
                await_registration_for=30,
            )
        version = int(info.registered_model_version)
        if alias:
            client.set_registered_model_alias(settings.model_name, alias, str(version))
        return RegisteredRun(
            run_id=run.info.run_id,
            run_name=run_name,
            experiment_id=experiment_id,
            registry_version=version,
        )


def set_model_alias(*, settings: Settings, alias: str, registry_version: int) -> None:
    check_tracking_server(settings)
    try:
        with _lock:
            _client(settings).set_registered_model_alias(
                settings.model_name, alias, str(registry_version)
            )
    except Exception as exc:
        raise RegistryUnavailableError(f"MLflow failed: {type(exc).__name__}: {exc}") from exc


def get_alias_version(*, settings: Settings, alias: str) -> int | None:
    """The registry version behind ``alias``, or None when the alias is not set."""
    with _lock:
        client = _client(settings)
        try:
            mv = client.get_model_version_by_alias(settings.model_name, alias)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                return None
            raise
    return int(mv.version)


def log_monitoring_metrics(
    *,
    settings: Settings,
    run_name: str,
    metrics: dict[str, float],
    params: dict[str, Any],
    now: datetime,
) -> str:
    """Log one monitoring run's figures as an MLflow run; returns its run id."""
    check_tracking_server(settings)
    from mlflow.entities import Metric, Param

    try:
        with _lock:
            client = _client(settings)
            experiment_id = _experiment_id(
                client, settings.mlflow_experiment, settings.mlflow_tracking_uri
            )
            run = client.create_run(
                experiment_id, run_name=run_name, tags={"ia_continu.kind": "monitoring"}
            )
            ts = int(now.timestamp() * 1000)
            client.log_batch(
                run.info.run_id,
                metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                params=[Param(k, str(v)) for k, v in params.items()],
            )
            client.set_terminated(run.info.run_id)
            return str(run.info.run_id)
    except Exception as exc:
        raise RegistryUnavailableError(f"MLflow failed: {type(exc).__name__}: {exc}") from exc


def run_url(settings: Settings, *, experiment_id: str, run_id: str) -> str:
    """Link to a run in the MLflow UI."""
    base = settings.mlflow_ui_url.rstrip("/")
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def get_experiment_id(settings: Settings) -> str:
    """The id of the configured experiment (created if missing), for run links."""
    check_tracking_server(settings)
    try:
        with _lock:
            client = _client(settings)
            return _experiment_id(client, settings.mlflow_experiment, settings.mlflow_tracking_uri)
    except Exception as exc:
        raise RegistryUnavailableError(f"MLflow failed: {type(exc).__name__}: {exc}") from exc


def delete_model_alias(*, settings: Settings, alias: str) -> None:
    """Remove ``alias`` from the registered model (no error when it is not set)."""
    check_tracking_server(settings)
    try:
        with _lock:
            client = _client(settings)
            try:
                client.delete_registered_model_alias(settings.model_name, alias)
            except Exception as exc:
                if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                    return
                raise
    except Exception as exc:
        raise RegistryUnavailableError(f"MLflow failed: {type(exc).__name__}: {exc}") from exc


def ensure_experiment(settings: Settings, *, artifact_location: str | None = None) -> str:
    """Create the configured experiment if missing, storing its artifacts at
    ``artifact_location`` (a local store would otherwise write ./mlruns in the cwd)."""
    check_tracking_server(settings)
    try:
        with _lock:
            client = _client(settings)
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
    except Exception as exc:
        raise RegistryUnavailableError(f"MLflow failed: {type(exc).__name__}: {exc}") from exc
