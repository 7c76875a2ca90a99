"""Served models as local JSON files (written atomically), rebuilt from the parameters
stored with their database row when missing. Never from MLflow."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from sqlalchemy.engine import Engine

from ia_continu.db import models as db_models
from ia_continu.ml.predictor import LinearModel


class UnknownModelError(LookupError):
    """No model with that version."""


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


def model_from_record(record: db_models.ModelRecord) -> LinearModel:
    if not record.parameters:
        raise UnknownModelError(f"model {record.version} has no stored parameters")
    return LinearModel.from_json(record.parameters)


def load_served_model(
    *, engine: Engine, models_dir: Path, version: str | None = None
) -> LinearModel | None:
    """The model to serve: the active one (or ``version``), from local disk first,
    then from the parameters stored with its database row. Never from MLflow."""
    if version is None:
        version = db_models.get_active_version(engine)
        if version is None:
            return None
    model = load_model_file(models_dir, version)
    if model is not None:
        return model
    record = db_models.get_model(engine, version)
    if record is None or not record.parameters:
        return None
    model = model_from_record(record)
    with contextlib.suppress(OSError):  # cache it locally for the next start
        save_model_file(models_dir, model)
    return model
