"""Model versions: insert, activate (champion), shadow, list."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ia_continu.db.engine import WRITE
from ia_continu.db.sql import _utc
from ia_continu.db.tables import models


@dataclass(frozen=True, slots=True)
class ModelRecord:
    version: str
    accuracy: float
    training_samples: int
    created_at: datetime
    is_active: bool
    precision: float | None = None
    recall: float | None = None
    f1_score: float | None = None
    test_samples: int | None = None
    generation_id: int | None = None
    registry_version: int | None = None
    run_id: str | None = None
    run_name: str | None = None
    parameters: str | None = None
    hour_parity: int | None = None


def insert_model(
    engine: Engine,
    record: ModelRecord,
    *,
    activate: bool,
    before_commit: Callable[[], None] | None = None,
) -> ModelRecord:
    """Store a trained model; with ``activate`` it becomes the only active one, atomically.

    ``before_commit`` runs inside the transaction, with the models table locked: if it
    raises, nothing is stored (used to move MLflow's alias in step with the active row).
    """
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        _lock_models(conn)
        if activate:
            conn.execute(models.update().where(models.c.is_active).values(is_active=False))
        values = _model_values(record)
        values["is_active"] = activate
        conn.execute(models.insert().values(**values))
        if before_commit is not None:
            before_commit()
    return _replace(record, is_active=activate)


def activate_model(
    engine: Engine, version: str, *, before_commit: Callable[[], None] | None = None
) -> ModelRecord | None:
    """Make ``version`` the only active model. None when it does not exist.

    ``before_commit`` as in ``insert_model``.
    """
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        _lock_models(conn)
        exists = conn.execute(sa.select(models.c.id).where(models.c.version == version)).first()
        if exists is None:
            return None
        conn.execute(
            models.update()
            .where(models.c.is_active, models.c.version != version)
            .values(is_active=False)
        )
        conn.execute(models.update().where(models.c.version == version).values(is_active=True))
        if before_commit is not None:
            before_commit()
    return get_model(engine, version)


def _lock_models(conn: Connection) -> None:
    # SQLite: BEGIN IMMEDIATE already serialises writers. PostgreSQL: without a table
    # lock, two concurrent activations could each miss the other's new row.
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("LOCK TABLE models IN SHARE ROW EXCLUSIVE MODE")


def get_active_version(engine: Engine) -> str | None:
    """The active version only: the cheap query every API process polls."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(models.c.version).where(models.c.is_active)
        ).scalar_one_or_none()


def get_active_model(engine: Engine) -> ModelRecord | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(models).where(models.c.is_active)).mappings().first()
    return _model_record(row) if row else None


def get_model(engine: Engine, version: str) -> ModelRecord | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(models).where(models.c.version == version)).mappings().first()
    return _model_record(row) if row else None


def list_models(engine: Engine) -> list[ModelRecord]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(models).order_by(models.c.id.desc())).mappings().all()
    return [_model_record(r) for r in rows]


def list_models_page(
    engine: Engine, *, limit: int, offset: int = 0
) -> tuple[list[ModelRecord], int]:
    """One page of model versions, newest first (highest id), and how many there are."""
    with engine.connect() as conn:
        rows = (
            conn.execute(sa.select(models).order_by(models.c.id.desc()).limit(limit).offset(offset))
            .mappings()
            .all()
        )
        total = int(conn.execute(sa.select(sa.func.count()).select_from(models)).scalar_one())
    return [_model_record(r) for r in rows], total


def _model_values(record: ModelRecord) -> dict[str, Any]:
    return {
        "version": record.version,
        "accuracy": record.accuracy,
        "training_samples": record.training_samples,
        "created_at": record.created_at,
        "precision": record.precision,
        "recall": record.recall,
        "f1_score": record.f1_score,
        "test_samples": record.test_samples,
        "generation_id": record.generation_id,
        "registry_version": record.registry_version,
        "run_id": record.run_id,
        "run_name": record.run_name,
        "parameters": record.parameters,
        "hour_parity": record.hour_parity,
    }


def _model_record(row: Any) -> ModelRecord:
    return ModelRecord(
        version=row["version"],
        accuracy=row["accuracy"],
        training_samples=row["training_samples"],
        created_at=_utc(row["created_at"]),
        is_active=bool(row["is_active"]),
        precision=row["precision"],
        recall=row["recall"],
        f1_score=row["f1_score"],
        test_samples=row["test_samples"],
        generation_id=row["generation_id"],
        registry_version=row["registry_version"],
        run_id=row["run_id"],
        run_name=row["run_name"],
        parameters=row["parameters"],
        hour_parity=row["hour_parity"],
    )


def _replace(record: ModelRecord, **changes: Any) -> ModelRecord:
    from dataclasses import replace

    return replace(record, **changes)


def _select_shadow(*columns: Any) -> Any:
    """The shadow rule, in one place (API workers and the monitoring flow): the newest
    ``models`` row that is not active and was registered after the active one. No active
    row makes the comparison NULL, so no shadow."""
    active_id = sa.select(models.c.id).where(models.c.is_active).scalar_subquery()
    return (
        sa.select(*columns)
        .where(sa.not_(models.c.is_active), models.c.id > active_id)
        .order_by(models.c.id.desc())
        .limit(1)
    )


def get_shadow_model(engine: Engine) -> ModelRecord | None:
    """The model served in shadow (see ``_select_shadow``); None otherwise."""
    with engine.connect() as conn:
        row = conn.execute(_select_shadow(models)).mappings().first()
    return _model_record(row) if row else None


def get_shadow_version(engine: Engine) -> str | None:
    """The shadow model's version only: what each API worker polls."""
    with engine.connect() as conn:
        return conn.execute(_select_shadow(models.c.version)).scalar_one_or_none()
