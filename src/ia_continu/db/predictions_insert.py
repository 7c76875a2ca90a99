"""Writing the /predict log: batches of rows, and the rollup in the same transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine

from ia_continu.db.engine import WRITE
from ia_continu.db.predictions import epoch_us_to_datetime
from ia_continu.db.tables import predictions

# One logged prediction as the API queues it: (time in integer microseconds since the
# epoch, UTC; feature1, feature2, prediction, confidence, model_version). A plain tuple is
# the cheapest thing to build on the request path, and it goes to the driver as it is.
PredictionRow = tuple[int, float, float, int, float, str]


# The same with the learning-from-production columns: prediction_id, then the shadow
# challenger's version, class and confidence (None when no shadow scored the row).
FullPredictionRow = tuple[
    int, float, float, int, float, str, str | None, str | None, int | None, float | None
]


_NO_ID_NO_SHADOW = (None, None, None, None)


_PREDICTION_COLUMNS = (
    "created_at, feature1, feature2, prediction, confidence, model_version, "
    "prediction_id, shadow_version, shadow_prediction, shadow_confidence"
)


# SQLite: the time text is built by SQLite itself, in exactly the form SQLAlchemy's DateTime
# writes ("YYYY-MM-DD HH:MM:SS.ffffff"), so range filters written with SQLAlchemy compare
# like for like, and the flush does no per-row Python work.
_SQLITE_INSERT_PREDICTION = (
    f"INSERT INTO predictions ({_PREDICTION_COLUMNS}) VALUES ("
    "strftime('%Y-%m-%d %H:%M:%S', ?1 / 1000000, 'unixepoch') || '.' || "
    "substr('00000' || (?1 % 1000000), -6), ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
)


def insert_predictions(
    engine: Engine, rows: Sequence[PredictionRow] | Sequence[FullPredictionRow]
) -> int:
    """Append logged predictions in one transaction: COPY on PostgreSQL, the driver's
    executemany on SQLite. Rows are 6-tuples (no id, no shadow) or full 10-tuples.
    Blocking: the API calls it from a thread."""
    if not rows:
        return 0
    full: Sequence[FullPredictionRow] = [
        r if len(r) == 10 else (*r, *_NO_ID_NO_SHADOW) for r in rows
    ]
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        dialect = conn.dialect.name
        if dialect == "postgresql":
            raw = conn.connection.driver_connection
            assert raw is not None
            with (
                raw.cursor() as cur,
                cur.copy(f"COPY predictions ({_PREDICTION_COLUMNS}) FROM STDIN") as copy,
            ):
                for us, *rest in full:
                    copy.write_row((epoch_us_to_datetime(us), *rest))
        elif dialect == "sqlite":
            conn.exec_driver_sql(_SQLITE_INSERT_PREDICTION, full)
        else:
            conn.execute(
                predictions.insert(),
                [
                    {
                        "created_at": epoch_us_to_datetime(us),
                        "feature1": x1,
                        "feature2": x2,
                        "prediction": pred,
                        "confidence": conf,
                        "model_version": version,
                        "prediction_id": pid,
                        "shadow_version": sv,
                        "shadow_prediction": sp,
                        "shadow_confidence": sc,
                    }
                    for us, x1, x2, pred, conf, version, pid, sv, sp, sc in full
                ],
            )
        _add_to_rollup(conn, rows)  # same transaction: the summary never disagrees
    return len(rows)


def _add_to_rollup(conn: Connection, rows: Sequence[Sequence[Any]]) -> None:
    """The per-minute rollups, and the copy of these predictions into the feedback rows
    already waiting for them (labels that arrived before this flush)."""
    from ia_continu.db.feedback import fill_early_feedback
    from ia_continu.db.rollup import add_to_rollup

    add_to_rollup(conn, rows)
    fill_early_feedback(conn, rows)
