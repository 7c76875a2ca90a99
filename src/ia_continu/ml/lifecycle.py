"""Train -> track -> register -> activate: the retraining service shared by the API,
the CLI and the monitoring flow. No web or orchestration framework in here."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.engine import Engine

from ia_continu.config import Settings
from ia_continu.db import repository as repo
from ia_continu.ml.data import Dataset
from ia_continu.ml.predictor import LinearModel
from ia_continu.ml.train import Hyperparameters, TrainingResult, train_model
from ia_continu.ml.warmup import wait_until_warm


class NoDatasetError(LookupError):
    """No dataset to train on (none generated yet, or an unknown generation_id)."""


class UnknownModelError(LookupError):
    """No model with that version."""


@dataclass(frozen=True, slots=True)
class RetrainOutcome:
    record: repo.ModelRecord
    model: LinearModel
    result: TrainingResult
    run_id: str
    run_name: str
    experiment_id: str
    generation_id: int
    # Seconds per step: warm_up_wait, load_data, fit, metrics, mlflow (mlflow_run,
    # mlflow_model_log, mlflow_registration, mlflow_alias, mlflow_finish), activation.
    timings: dict[str, float] = field(default_factory=dict)


def hyperparameters_from(settings: Settings) -> Hyperparameters:
    return Hyperparameters(
        C=settings.model_c, solver=settings.model_solver, max_iter=settings.model_max_iter
    )


def retrain(
    *,
    settings: Settings,
    engine: Engine,
    generation_id: int | None = None,
    activate: bool = True,
    now: datetime | None = None,
    run_prefix: str = "retrain",
    dataset: Dataset | None = None,
    extra_params: dict[str, object] | None = None,
) -> RetrainOutcome:
    """Train on a stored dataset, log and register it in MLflow, then store it.

    With ``activate`` the model becomes the champion (alias ``champion``, the active
    row, served by every API process); otherwise it is stored as ``challenger``.
    Any failure before the final database transaction leaves the active model as it was.
    """
    from ia_continu.ml import registry

    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    now = now or datetime.now(UTC)

    with clock("warm_up_wait"):  # non-zero only while the API's warm-up still runs
        wait_until_warm()

    with clock("load_data"):
        if generation_id is None:
            generation_id = repo.get_latest_generation_id(engine)
            if generation_id is None:
                raise NoDatasetError("no dataset yet: POST /generate first")
        if dataset is None:
            dataset = repo.load_dataset(engine, generation_id)
            if dataset is None:
                raise NoDatasetError(f"generation_id {generation_id} does not exist")

    result = train_model(
        dataset,
        hyperparameters=hyperparameters_from(settings),
        test_size=settings.test_size,
        random_state=settings.random_state,
    )
    timings.update(result.timings)  # fit, metrics

    with clock("mlflow"):  # = mlflow_run + mlflow_model_log + registration + alias + finish
        run = registry.log_training_run(
            settings=settings,
            result=result,
            generation_id=generation_id,
            now=now,
            run_prefix=run_prefix,
            # The champion alias moves with the active row, below: set here, a failure
            # between the two left MLflow's champion on a model nobody serves.
            alias=None if activate else registry.CHALLENGER,
            extra_params={"hour_generated": dataset.hour, **(extra_params or {})},
            timings=timings,
        )

    with clock("activation"):
        model = LinearModel.from_estimator(result.estimator, version=run.model_version)
        save_model_file(settings.models_dir, model)
        record = repo.insert_model(
            engine,
            repo.ModelRecord(
                version=run.model_version,
                accuracy=result.metrics.accuracy,
                precision=result.metrics.precision,
                recall=result.metrics.recall,
                f1_score=result.metrics.f1_score,
                training_samples=result.training_samples,
                test_samples=result.test_samples,
                created_at=now,
                is_active=activate,
                generation_id=generation_id,
                registry_version=run.registry_version,
                run_id=run.run_id,
                run_name=run.run_name,
                parameters=model.to_json(),
                hour_parity=dataset.hour % 2,
            ),
            activate=activate,
            before_commit=_move_champion(settings, run.registry_version) if activate else None,
        )
    return RetrainOutcome(
        record=record,
        model=model,
        result=result,
        run_id=run.run_id,
        run_name=run.run_name,
        experiment_id=run.experiment_id,
        generation_id=generation_id,
        timings=timings,
    )


def activate_version(*, settings: Settings, engine: Engine, version: str) -> repo.ModelRecord:
    """Make an existing version the champion again (rollback or promotion).

    The MLflow alias moves inside the activation's transaction: if MLflow is down nothing
    changes (503 upstream), and if the database fails the alias has not moved.
    """
    record = repo.get_model(engine, version)
    if record is None:
        raise UnknownModelError(f"model version {version!r} does not exist")
    model = model_from_record(record)  # before anything moves: it must be servable
    save_model_file(settings.models_dir, model)
    move = None
    if record.registry_version is not None:
        move = _move_champion(settings, record.registry_version)
    activated = repo.activate_model(engine, version, before_commit=move)
    if activated is None:  # deleted meanwhile
        raise UnknownModelError(f"model version {version!r} does not exist")
    return activated


def _move_champion(settings: Settings, registry_version: int) -> Callable[[], None]:
    """Point MLflow's champion alias at ``registry_version``: run inside the database
    transaction that activates the model, so that the alias and the active row change
    together (a failure of either leaves both as they were; concurrent activations from
    several processes are serialised by the transaction's lock on the models table)."""
    from ia_continu.ml import registry

    def move() -> None:
        registry.set_model_alias(
            settings=settings, alias=registry.CHAMPION, registry_version=registry_version
        )

    return move


# --- the served model on local disk ------------------------------------------------------


def save_model_file(models_dir: Path, model: LinearModel) -> Path:
    """Write ``<models_dir>/<version>.json`` atomically (readers never see half a file)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / f"{model.version}.json"
    fd, tmp = tempfile.mkstemp(dir=models_dir, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(model.to_dict(), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_model_file(models_dir: Path, version: str) -> LinearModel | None:
    path = models_dir / f"{version}.json"
    try:
        return LinearModel.from_json(path.read_text())
    except (OSError, ValueError, KeyError):
        return None


def model_from_record(record: repo.ModelRecord) -> LinearModel:
    if not record.parameters:
        raise UnknownModelError(f"model {record.version} has no stored parameters")
    return LinearModel.from_json(record.parameters)


def load_served_model(
    *, engine: Engine, models_dir: Path, version: str | None = None
) -> LinearModel | None:
    """The model to serve: the active one (or ``version``), from local disk first,
    then from the parameters stored with its database row. Never from MLflow."""
    if version is None:
        version = repo.get_active_version(engine)
        if version is None:
            return None
    model = load_model_file(models_dir, version)
    if model is not None:
        return model
    record = repo.get_model(engine, version)
    if record is None or not record.parameters:
        return None
    model = model_from_record(record)
    with contextlib.suppress(OSError):  # cache it locally for the next start
        save_model_file(models_dir, model)
    return model


class _Stopwatch:
    def __init__(self, sink: dict[str, float]) -> None:
        self._sink = sink

    def __call__(self, name: str) -> _Lap:
        return _Lap(self._sink, name)


class _Lap:
    def __init__(self, sink: dict[str, float], name: str) -> None:
        self._sink, self._name = sink, name

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._sink[self._name] = time.perf_counter() - self._start


Clock = Callable[[], datetime]
