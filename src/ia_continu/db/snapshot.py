"""What /metrics reads from the database at each scrape (champion, versions, latest run)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ia_continu.db.sql import _utc
from ia_continu.db.tables import models, monitoring_runs


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """What /metrics reports from the database: shared by every API process."""

    champion_version: str | None
    champion_accuracy: float | None
    champion_registry_version: int | None
    model_count: int
    monitoring_run_count: int
    # The latest monitoring_runs row as a plain mapping (column -> value), or None.
    last_monitoring_run: dict[str, Any] | None


def read_metrics_snapshot(engine: Engine) -> MetricsSnapshot:
    """The champion, the number of versions and the latest monitoring run, in one
    short read transaction."""

    with engine.connect() as conn:
        champion = conn.execute(
            sa.select(models.c.version, models.c.accuracy, models.c.registry_version).where(
                models.c.is_active
            )
        ).first()
        model_count = conn.execute(sa.select(sa.func.count()).select_from(models)).scalar_one()
        run_count = conn.execute(
            sa.select(sa.func.count()).select_from(monitoring_runs)
        ).scalar_one()
        last = (
            conn.execute(sa.select(monitoring_runs).order_by(monitoring_runs.c.id.desc()).limit(1))
            .mappings()
            .first()
        )
    run = dict(last) if last is not None else None
    if run is not None:
        for column in ("started_at", "finished_at"):
            if run.get(column) is not None:
                run[column] = _utc(run[column])
    return MetricsSnapshot(
        champion_version=champion.version if champion else None,
        champion_accuracy=champion.accuracy if champion else None,
        champion_registry_version=champion.registry_version if champion else None,
        model_count=int(model_count),
        monitoring_run_count=int(run_count),
        last_monitoring_run=run,
    )
