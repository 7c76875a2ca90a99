"""Helpers shared by the aggregate modules of db/: UTC times, the liveness query, time buckets."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine


def _utc(value: datetime) -> datetime:
    # SQLite returns naive datetimes; every stored time is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def check_database(engine: Engine) -> None:
    """Raise if the database cannot answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))


def utcnow() -> datetime:
    return datetime.now(UTC)


def _finite_mean(total: Decimal | float, count: int) -> float | None:
    """The mean as a float; None without rows, or where SQLite's float sum overflowed."""
    if not count:
        return None
    mean = float(total / count)
    return mean if math.isfinite(mean) else None


def time_bucket(column: Any, width: int, *, dialect: str) -> Any:
    """The start (epoch seconds) of the ``width``-second bucket holding a stored time,
    labelled "bucket"; shared by every bucketed query over the prediction log."""
    if dialect == "sqlite":
        # Whole seconds from the stored text: strftime would round .9995 s up to the
        # next second (and so, sometimes, into the next bucket).
        seconds: Any = sa.cast(sa.func.strftime("%s", sa.func.substr(column, 1, 19)), sa.Integer)
    else:
        seconds = sa.cast(sa.func.floor(sa.extract("epoch", column)), sa.BigInteger)
    # The width inlined, not bound: PostgreSQL must see the same expression in SELECT and
    # GROUP BY, and two bound parameters are two different expressions to it.
    literal_width = sa.literal_column(str(width), sa.BigInteger)
    return ((seconds // literal_width) * literal_width).label("bucket")
