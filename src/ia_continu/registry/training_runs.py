"""Logging a training run to MLflow: the run, its metrics and parameters, the model files
and a registered model version, with everything undone if it cannot finish in time."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ia_continu.config import Settings
from ia_continu.ml.train import TrainingResult
from ia_continu.registry.core import (
    CHAMPION,
    ORPHAN_TAG,
    Deadline,
    _begin,
    _client,
    _experiment_id,
    _health_client,
    _pip_requirements,
    _stop_if,
    run_with_deadline,
)

# What ``mlflow.sklearn.log_model(..., registered_model_name=...)`` does in MLflow 3, with
# the same entities (run, logged model linked to the run, metrics linked to both, model
# files, registered version whose source is ``models:/<model_id>``), but in 16 calls
# instead of 28, the independent ones in parallel (7 sequential rounds): with a server that
# answers each call in 10-50 ms, the call count is the cost of a retrain.
_registered_models: set[tuple[str, str]] = set()


_pool: Any = None


@dataclass(frozen=True, slots=True)
class RegisteredRun:
    run_id: str
    run_name: str
    experiment_id: str
    registry_version: int

    @property
    def model_version(self) -> str:
        return f"v{self.registry_version}"


def _create_named_run(
    client: Any, pool: Any, *, experiment_id: str, prefix: str, now: datetime, tags: dict[str, str]
) -> tuple[Any, str]:
    """Create the run ``<prefix>_<YYYYmmdd_HHMMSS>`` (``_2``, ``_3`` … when the name is
    taken), searching for the taken names while the run is being created: one round
    trip instead of two; the rare collision renames the new run."""
    base = f"{prefix}_{now:%Y%m%d_%H%M%S}"
    search = pool.submit(
        client.search_runs,
        [experiment_id],
        filter_string=f"attributes.run_name LIKE '{base}%'",
        max_results=1000,
    )
    run = client.create_run(experiment_id, run_name=base, tags=tags)
    try:
        found = search.result()
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(run.info.run_id, status="FAILED")
        raise
    taken = {r.info.run_name for r in found if r.info.run_id != run.info.run_id}
    name = base
    n = 2
    while name in taken:
        name = f"{base}_{n}"
        n += 1
    if name != base:
        client.update_run(run.info.run_id, name=name)
    return run, name


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
    timings: dict[str, float] | None = None,
    deadline: Deadline | None = None,
) -> RegisteredRun:
    """Log params, held-out metrics and the model; register it and set ``alias``.

    ``timings`` (when given) receives the seconds spent in each MLflow step:
    ``mlflow_run``, ``mlflow_model_log``, ``mlflow_registration``, ``mlflow_alias``,
    ``mlflow_finish``.

    Raises RegistryUnavailableError for any MLflow failure or when ``deadline`` (default:
    IA_MLFLOW_DEADLINE from now) passes, leaving the caller's state untouched. A run
    left behind is marked FAILED and a version registered too late is tagged orphan,
    at once when MLflow answers, else by ``ia-continu registry reconcile``.
    """
    _, deadline = _begin(settings, deadline)
    sink = timings if timings is not None else {}

    def operation(abandoned: threading.Event) -> RegisteredRun:
        return _log_training_run(
            settings=settings,
            result=result,
            generation_id=generation_id,
            now=now,
            run_prefix=run_prefix,
            alias=alias,
            extra_params=extra_params or {},
            tags=tags or {},
            timings=sink,
            abandoned=abandoned,
        )

    def undo(run: RegisteredRun) -> None:  # registered after the caller gave up
        discard_registered_run(settings, run_id=run.run_id, registry_version=run.registry_version)

    return run_with_deadline(deadline, "logging the retrain", operation, on_late=undo)


def discard_registered_run(
    settings: Settings, *, run_id: str | None, registry_version: int | None
) -> None:
    """A retrain that will never be stored: its run FAILED, its version tagged orphan.
    Blocking and unbounded by a deadline (the per-call timeouts bound it): call it from
    an abandoned operation or wrap it in ``run_with_deadline``."""
    client = _client(settings)
    if registry_version is not None:
        client.set_model_version_tag(settings.model_name, str(registry_version), ORPHAN_TAG, "true")
    if run_id is not None:
        client.set_terminated(run_id, status="FAILED")


def _executor() -> Any:
    global _pool
    if _pool is None:
        from concurrent.futures import ThreadPoolExecutor

        _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="mlflow-io")
    return _pool


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
    timings: dict[str, float],
    abandoned: threading.Event,
) -> RegisteredRun:
    lap = _Laps(timings)
    with tempfile.TemporaryDirectory(prefix="ia-model-") as tmp:
        client = _client(settings)
        pool = _executor()
        # The model files (~20 ms of CPU) are written while the run is being created;
        # only MLmodel is rewritten once the logged model's id is known.
        model_dir = Path(tmp) / "model"
        saving = pool.submit(_save_model_files, result, model_dir)
        try:
            return _log_with_saved_files(
                client=client,
                pool=pool,
                saving=saving,
                model_dir=model_dir,
                settings=settings,
                result=result,
                generation_id=generation_id,
                now=now,
                run_prefix=run_prefix,
                alias=alias,
                extra_params=extra_params,
                tags=tags,
                lap=lap,
                abandoned=abandoned,
            )
        finally:
            _wait_all([saving], raise_first=False)  # before the directory goes


def _log_with_saved_files(
    *,
    client: Any,
    pool: Any,
    saving: Any,
    model_dir: Path,
    settings: Settings,
    result: TrainingResult,
    generation_id: int,
    now: datetime,
    run_prefix: str,
    alias: str | None,
    extra_params: dict[str, Any],
    tags: dict[str, str],
    lap: _Laps,
    abandoned: threading.Event,
) -> RegisteredRun:
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric, Param
    from mlflow.tracking.context.registry import resolve_tags

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
    str_params = {k: str(v) for k, v in params.items()}
    with lap("mlflow_run"):
        _stop_if(abandoned)
        experiment_id = _experiment_id(
            client, settings.mlflow_experiment, settings.mlflow_tracking_uri
        )
        # The tags mlflow.start_run would add (user, source name and type).
        run_tags = resolve_tags(tags)
        run, run_name = _create_named_run(
            client, pool, experiment_id=experiment_id, prefix=run_prefix, now=now, tags=run_tags
        )
    run_id = run.info.run_id
    model_id: str | None = None
    version: int | None = None
    try:
        with lap("mlflow_model_log"):
            _stop_if(abandoned)
            logged = client.create_logged_model(
                experiment_id,
                name="model",
                source_run_id=run_id,
                params=str_params,
                tags=run_tags,
            )
            model_id = logged.model_id
            ts = int(now.timestamp() * 1000)
            pending = [
                pool.submit(client.log_outputs, run_id, [LoggedModelOutput(model_id, step=0)]),
                # Metrics logged once, linked to the run and to the logged model.
                pool.submit(
                    client.log_batch,
                    run_id,
                    metrics=[
                        Metric(k, float(v), ts, 0, model_id=model_id, run_id=run_id)
                        for k, v in result.metrics.as_dict().items()
                    ],
                    params=[Param(k, v) for k, v in str_params.items()],
                ),
            ]
            mlflow_model, files = saving.result()
            _stamp_model_ids(mlflow_model, model_dir, logged=logged, run_id=run_id)
            repo = _artifact_repository(logged.artifact_location, settings)
            pending += [pool.submit(repo.log_artifact, str(f)) for f in files]
            _wait_all(pending)
            _stop_if(abandoned)
            client.finalize_logged_model(model_id, LoggedModelStatus.READY)
        with lap("mlflow_registration"):
            _stop_if(abandoned)
            version = _create_model_version(
                client, settings=settings, model_id=model_id, run_id=run_id
            )
        # The server itself tags the logged model with its registered version.
        finishing = [pool.submit(client.set_terminated, run_id)]
        with lap("mlflow_alias"):
            if alias:
                client.set_registered_model_alias(settings.model_name, alias, str(version))
        with lap("mlflow_finish"):
            _wait_all(finishing)
    except BaseException:
        _mark_failed(client, settings, run_id=run_id, model_id=model_id, version=version)
        raise
    return RegisteredRun(
        run_id=run_id,
        run_name=run_name,
        experiment_id=experiment_id,
        registry_version=version,
    )


def _save_model_files(result: TrainingResult, path: Path) -> tuple[Any, list[Path]]:
    """The standard MLflow model directory (MLmodel, skops file, environments)."""
    import mlflow.sklearn
    from mlflow.models import Model, infer_signature

    mlflow_model = Model()
    x_example = result.x_test[:5]
    mlflow.sklearn.save_model(
        result.estimator,
        str(path),
        mlflow_model=mlflow_model,
        signature=infer_signature(x_example, result.estimator.predict(x_example)),
        # Explicit requirements: inferring them costs ~4-5 s per call.
        pip_requirements=_pip_requirements(),
        serialization_format="skops",
    )
    files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return mlflow_model, files


def _stamp_model_ids(mlflow_model: Any, path: Path, *, logged: Any, run_id: str) -> None:
    """Write into MLmodel what ``log_model`` records there: the logged model's id, its
    artifact location and the run."""
    from mlflow.models.model import MLMODEL_FILE_NAME

    mlflow_model.artifact_path = logged.artifact_location
    mlflow_model.model_uuid = logged.model_id
    mlflow_model.model_id = logged.model_id
    mlflow_model.run_id = run_id
    mlflow_model.save(str(path / MLMODEL_FILE_NAME))


def _artifact_repository(artifact_location: str, settings: Settings) -> Any:
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_location, tracking_uri=settings.mlflow_tracking_uri)


def _create_model_version(client: Any, *, settings: Settings, model_id: str, run_id: str) -> int:
    """Register ``models:/<model_id>`` as a new version (creating the registered model
    the first time this process sees it)."""
    key = (settings.mlflow_tracking_uri, settings.model_name)
    for attempt in range(2):
        if key not in _registered_models:
            _ensure_registered_model(client, settings.model_name)
            _registered_models.add(key)
        try:
            mv = client.create_model_version(
                settings.model_name,
                source=f"models:/{model_id}",
                run_id=run_id,
                model_id=model_id,
                await_creation_for=30,
            )
            return int(mv.version)
        except Exception as exc:
            # Deleted behind our back since we cached it: create it again, once.
            if attempt == 0 and "RESOURCE_DOES_NOT_EXIST" in str(exc):
                _registered_models.discard(key)
                continue
            raise
    raise AssertionError("unreachable")


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def _mark_failed(
    client: Any, settings: Settings, *, run_id: str, model_id: str | None, version: int | None
) -> None:
    """Best effort: a half-logged run shows as FAILED rather than RUNNING forever, and a
    version registered for nothing is tagged orphan (reconcile does it otherwise)."""
    from mlflow.entities import LoggedModelStatus

    if version is not None:
        with contextlib.suppress(Exception):
            client.set_model_version_tag(settings.model_name, str(version), ORPHAN_TAG, "true")
    with contextlib.suppress(Exception):
        client.set_terminated(run_id, status="FAILED")
    if model_id is not None:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)


def _wait_all(futures: list[Any], *, raise_first: bool = True) -> None:
    """Wait for every future, then raise the first error (none is left running)."""
    errors = []
    for future in futures:
        try:
            future.result()
        except BaseException as exc:
            errors.append(exc)
    if errors and raise_first:
        raise errors[0]


class _Laps:
    def __init__(self, sink: dict[str, float]) -> None:
        self._sink = sink

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._sink[name] = time.perf_counter() - started


def warm_up(result: TrainingResult) -> None:
    """Import mlflow, its sklearn flavor, skops and the REST client machinery and save
    ``result`` as an MLflow model in a temporary directory: the first retrain's ~3-5 s
    of one-off CPU. Never touches the network. See registry/warmup.py."""
    from types import SimpleNamespace

    from mlflow.entities import LoggedModelOutput, Metric  # noqa: F401
    from mlflow.store.artifact.artifact_repository_registry import (  # noqa: F401
        get_artifact_repository,
    )
    from mlflow.tracking.context.registry import resolve_tags

    resolve_tags({})  # caches the source/user lookups
    _executor()
    _health_client()
    with tempfile.TemporaryDirectory(prefix="ia-warm-up-") as tmp:
        mlflow_model, _ = _save_model_files(result, Path(tmp) / "model")
        fake = SimpleNamespace(artifact_location=tmp, model_id="m-warm-up")
        _stamp_model_ids(mlflow_model, Path(tmp) / "model", logged=fake, run_id="warm-up")
