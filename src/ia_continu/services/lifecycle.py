"""Train -> track -> register -> activate: the retraining service shared by the API,
the CLI and the monitoring flow. No web or orchestration framework in here."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from ia_continu.config import Settings
from ia_continu.db import datasets as db_datasets
from ia_continu.db import models as db_models
from ia_continu.ml.data import Dataset
from ia_continu.ml.predictor import LinearModel
from ia_continu.ml.train import Hyperparameters, TrainingResult, train_model
from ia_continu.ml.warm_gate import wait_until_warm

if TYPE_CHECKING:
    from ia_continu.registry.core import Deadline
    from ia_continu.registry.training_runs import RegisteredRun
from ia_continu.db.model_files import UnknownModelError, model_from_record, save_model_file

log = logging.getLogger(__name__)


class NoDatasetError(LookupError):
    """No dataset to train on (none generated yet, or an unknown generation_id)."""


@dataclass(frozen=True, slots=True)
class RetrainOutcome:
    record: db_models.ModelRecord
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
    Any failure leaves the active model as it was. Every MLflow call of the retrain
    shares one deadline (IA_MLFLOW_DEADLINE), and no database transaction is open while
    MLflow is called: a version gets an alias only once its models row exists, and a
    failure after the row was stored leaves that row inactive (see docs/mlflow.md).
    """
    from ia_continu.registry import core as registry
    from ia_continu.registry import training_runs

    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    now = now or datetime.now(UTC)

    with clock("warm_up_wait"):  # non-zero only while the API's warm-up still runs
        wait_until_warm()

    with clock("load_data"):
        if generation_id is None:
            generation_id = db_datasets.get_latest_generation_id(engine)
            if generation_id is None:
                raise NoDatasetError("no dataset yet: POST /generate first")
        if dataset is None:
            dataset = db_datasets.load_dataset(engine, generation_id)
            if dataset is None:
                raise NoDatasetError(f"generation_id {generation_id} does not exist")

    result = train_model(
        dataset,
        hyperparameters=hyperparameters_from(settings),
        test_size=settings.test_size,
        random_state=settings.random_state,
    )
    timings.update(result.timings)  # fit, metrics

    deadline = registry.Deadline(settings.mlflow_deadline)
    with clock("mlflow"):  # = mlflow_run + mlflow_model_log + registration + finish
        run = training_runs.log_training_run(
            settings=settings,
            result=result,
            generation_id=generation_id,
            now=now,
            run_prefix=run_prefix,
            # Aliases are set below, once the models row exists: an alias never points
            # at a version the database does not know.
            alias=None,
            extra_params={"hour_generated": dataset.hour, **(extra_params or {})},
            timings=timings,
            deadline=deadline,
        )

    with clock("activation"):
        model = LinearModel.from_estimator(result.estimator, version=run.model_version)
        try:
            save_model_file(settings.models_dir, model)
            # Stored inactive first: the alias moves between this short transaction and
            # the one that activates it (no lock held while MLflow answers).
            record = db_models.insert_model(
                engine,
                db_models.ModelRecord(
                    version=run.model_version,
                    accuracy=result.metrics.accuracy,
                    precision=result.metrics.precision,
                    recall=result.metrics.recall,
                    f1_score=result.metrics.f1_score,
                    training_samples=result.training_samples,
                    test_samples=result.test_samples,
                    created_at=now,
                    is_active=False,
                    generation_id=generation_id,
                    registry_version=run.registry_version,
                    run_id=run.run_id,
                    run_name=run.run_name,
                    parameters=model.to_json(),
                    hour_parity=dataset.hour % 2,
                ),
                activate=False,
            )
        except BaseException:
            _discard_now(settings, run)
            raise
        if activate:
            activated = _publish_champion(
                settings,
                engine,
                version=record.version,
                registry_version=run.registry_version,
                deadline=deadline,
                timings=timings,
            )
            if activated is None:  # deleted meanwhile: nothing to serve
                raise UnknownModelError(f"model version {record.version!r} disappeared")
            record = activated
        else:
            with clock("mlflow_alias"):
                registry.set_model_alias(
                    settings=settings,
                    alias=registry.CHALLENGER,
                    registry_version=run.registry_version,
                    deadline=deadline,
                )
    # "mlflow" stays the total of the mlflow_* steps (the alias moves after the row).
    timings["mlflow"] += timings.get("mlflow_alias", 0.0)
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


def activate_version(*, settings: Settings, engine: Engine, version: str) -> db_models.ModelRecord:
    """Make an existing version the champion again (rollback or promotion).

    The MLflow alias moves first (within IA_MLFLOW_DEADLINE), then the active row in a
    short transaction: if MLflow is down or frozen nothing changes in the database (503
    upstream), and if the database fails the alias is moved back. Never waits for a
    retrain: no lock is shared with one.
    """
    from ia_continu.registry import core as registry

    record = db_models.get_model(engine, version)
    if record is None:
        raise UnknownModelError(f"model version {version!r} does not exist")
    model = model_from_record(record)  # before anything moves: it must be servable
    save_model_file(settings.models_dir, model)
    deadline: Deadline | None = None
    if record.registry_version is not None:
        deadline = registry.Deadline(settings.mlflow_deadline)
    activated = _publish_champion(
        settings,
        engine,
        version=version,
        registry_version=record.registry_version,
        deadline=deadline,
    )
    if activated is None:  # deleted meanwhile
        raise UnknownModelError(f"model version {version!r} does not exist")
    return activated


def _publish_champion(
    settings: Settings,
    engine: Engine,
    *,
    version: str,
    registry_version: int | None,
    deadline: Deadline | None,
    timings: dict[str, float] | None = None,
) -> db_models.ModelRecord | None:
    """Champion alias, then active row: the MLflow call happens outside any database
    transaction (a frozen MLflow must not hold the models table's write lock, which
    every other activation and retrain of every process needs).

    The alias is a mirror of the active row: a failure between the two steps is undone
    at once when possible, and ``ia-continu registry reconcile`` (run by every monitoring
    run) puts the alias back on the active row's version otherwise."""
    from ia_continu.registry import core as registry

    if registry_version is None:
        return db_models.activate_model(engine, version)
    sink: dict[str, float] = timings if timings is not None else {}
    previous = db_models.get_active_model(engine)
    started = time.perf_counter()
    registry.set_model_alias(
        settings=settings,
        alias=registry.CHAMPION,
        registry_version=registry_version,
        deadline=deadline,
        # Moved after we answered 503: back on whatever row is active.
        on_late=lambda: _follow_active_row(settings, engine, None),
    )
    sink["mlflow_alias"] = time.perf_counter() - started
    try:
        activated = db_models.activate_model(engine, version)
    except BaseException:
        _restore_champion(settings, previous)
        raise
    if activated is None:
        _restore_champion(settings, previous)
        return None
    started = time.perf_counter()
    _follow_active_row(settings, engine, deadline)
    sink["mlflow_alias"] += time.perf_counter() - started
    return activated


def _restore_champion(settings: Settings, previous: db_models.ModelRecord | None) -> None:
    """Best effort: the alias back on the version that is still active."""
    from ia_continu.registry import core as registry

    try:
        if previous is not None and previous.registry_version is not None:
            registry.set_model_alias(
                settings=settings,
                alias=registry.CHAMPION,
                registry_version=previous.registry_version,
            )
        else:
            registry.delete_model_alias(settings=settings, alias=registry.CHAMPION)
    except Exception as exc:  # reconcile will do it
        log.warning("champion alias not restored (reconcile will): %s", exc)


def _follow_active_row(settings: Settings, engine: Engine, deadline: Deadline | None) -> None:
    """After the commit: if another process's activation moved the alias in between
    (its alias first, ours second, but its row first), put the alias back on the row
    that is active now. Best effort within what is left of the deadline."""
    from ia_continu.registry import core as registry

    try:
        active = db_models.get_active_model(engine)
        if active is None or active.registry_version is None:
            return
        current = registry.get_alias_version(
            settings=settings, alias=registry.CHAMPION, deadline=deadline
        )
        if current != active.registry_version:
            registry.set_model_alias(
                settings=settings,
                alias=registry.CHAMPION,
                registry_version=active.registry_version,
                deadline=deadline,
            )
    except Exception as exc:  # the row is active; reconcile aligns the alias later
        log.warning("champion alias not checked after activation: %s", exc)


def _discard_now(settings: Settings, run: RegisteredRun) -> None:
    """The version was registered but its row could not be stored: tag it orphan and
    mark its run FAILED, best effort (reconcile does it otherwise)."""
    from ia_continu.registry import core as registry
    from ia_continu.registry import training_runs

    try:
        registry.run_with_deadline(
            registry.Deadline(settings.mlflow_deadline),
            "tagging an orphan version",
            lambda _: training_runs.discard_registered_run(
                settings, run_id=run.run_id, registry_version=run.registry_version
            ),
        )
    except Exception as exc:
        log.warning("version %s not tagged orphan (reconcile will): %s", run.model_version, exc)


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
