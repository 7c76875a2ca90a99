"""POST /datasets: labelled rows sent by a client, stored as one dataset like /generate's.

The body is JSON (``{"rows": [[feature1, feature2, target], ...]}``) or CSV (``text/csv``
with the header ``feature1,feature2,target``). Every row is checked before anything is
written, and the rows are written in one transaction: a bad value is a 422 naming its row
and column, and nothing is stored.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, NoReturn

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from ia_continu.api.body import body_openapi, parse_body
from ia_continu.api.schemas import (
    DatasetUploadRequest,
    DatasetUploadResponse,
    ErrorResponse,
)
from ia_continu.api.state import AppState
from ia_continu.ml.data import MAX_SAMPLES, MIN_SAMPLES


def _require_digits(value: object) -> object:
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise PydanticCustomError("int_parsing", "Input should be a whole number of hours, 0 to 23")
    return value


HourQuery = Annotated[int, Field(ge=0, le=23), BeforeValidator(_require_digits)]

router = APIRouter()
_E = {"model": ErrorResponse}
MAX_REPORTED_ERRORS = 20  # a file of bad rows must not become a megabyte of 422
_COLUMNS = ("feature1", "feature2", "target")


@router.post(
    "/datasets",
    response_model=DatasetUploadResponse,
    tags=["data"],
    responses={415: _E, 422: _E, 503: _E},
    # Only the JSON body is described: a schema for text/csv could only say "a string",
    # and the CSV form is in the description (and docs/loop.md).
    openapi_extra=body_openapi(DatasetUploadRequest),
)
async def upload_dataset(
    request: Request,
    # Query values are text: digits only (pydantic's lax int also took "1.0").
    hour: Annotated[
        HourQuery | None, Query(description="text/csv only: hour the rows were observed")
    ] = None,
) -> DatasetUploadResponse:
    """Store 100 to 10,000 labelled rows (JSON or CSV) as a dataset with ``source``
    "upload": /retrain trains on it with its ``generation_id``, and the monitoring flow
    counts it as fresh labelled data.

    The same rows may be sent as ``Content-Type: text/csv``: a header line
    ``feature1,feature2,target``, then one row per line (``?hour=`` sets the hour)."""
    raw = await request.body()
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    state: AppState = request.app.state.ia
    if media_type in ("", "application/json"):
        return await asyncio.to_thread(_store_json, state, raw)
    if media_type in ("text/csv", "application/csv"):
        return await asyncio.to_thread(_store_csv, state, raw, hour)
    raise HTTPException(415, 'send application/json ({"rows": [...]}) or text/csv')


_NUMBER = (float, int)  # not bool: type() is exact


def _fast_json(raw: bytes) -> tuple[Any, int | None] | None:
    """The common valid body as a (n, 3) array, without building 30,000 validated
    objects (pydantic took about 2x as long for 10,000 rows). None on anything unusual: the
    pydantic schema then decides, and names the row and column."""
    import numpy as np
    import orjson

    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or not data.keys() <= {"rows", "hour"}:
        return None
    rows, hour = data.get("rows"), data.get("hour")
    if type(rows) is not list or not MIN_SAMPLES <= len(rows) <= MAX_SAMPLES:
        return None
    if hour is not None and (type(hour) is not int or not 0 <= hour <= 23):
        return None
    for row in rows:
        if (
            type(row) is not list
            or len(row) != 3
            or type(row[0]) not in _NUMBER
            or type(row[1]) not in _NUMBER
            or type(row[2]) not in _NUMBER
        ):
            return None
    try:
        arr = np.array(rows, dtype=np.float64)
    except (OverflowError, ValueError):
        return None
    if not np.isfinite(arr[:, :2]).all() or not np.isin(arr[:, 2], (0.0, 1.0)).all():
        return None
    return arr, hour


def _parse_json(raw: bytes) -> DatasetUploadRequest:
    try:
        return parse_body(DatasetUploadRequest, raw)
    except RequestValidationError as exc:
        raise RequestValidationError(_name_columns(exc.errors())) from None


def _name_columns(errors: Any) -> list[dict[str, Any]]:
    """("body", "rows", 17, 2) -> ("body", "rows", 17, "target"), and a message naming
    the row (1-based, rows[17] is row 18) and the column."""
    named = []
    for error in list(errors)[:MAX_REPORTED_ERRORS]:
        loc = tuple(error.get("loc", ()))
        item = dict(error)
        if len(loc) >= 4 and loc[1] == "rows" and isinstance(loc[2], int):
            column = _COLUMNS[loc[3]] if isinstance(loc[3], int) and loc[3] < 3 else loc[3]
            item["loc"] = (*loc[:3], column, *loc[4:])
            item["msg"] = f"row {loc[2] + 1} (rows[{loc[2]}]), column {column}: {error['msg']}"
        elif len(loc) == 3 and loc[1] == "rows" and isinstance(loc[2], int):
            item["msg"] = (
                f"row {loc[2] + 1} (rows[{loc[2]}]): {error['msg']} "
                "(a row is [feature1, feature2, target])"
            )
        elif loc[1:] == ("rows",):
            item.pop("input", None)  # the whole list
        named.append(item)
    return named


def _store_json(state: AppState, raw: bytes) -> DatasetUploadResponse:
    import numpy as np

    fast = _fast_json(raw)
    if fast is not None:
        arr, hour = fast
    else:
        body = _parse_json(raw)  # 422 naming the row and column
        arr, hour = np.asarray(body.rows, dtype=np.float64), body.hour
    return _store(state, arr[:, :2], arr[:, 2].astype(np.int64), hour)


def _store_csv(state: AppState, raw: bytes, hour: int | None) -> DatasetUploadResponse:
    from ia_continu.ml.labelled import LabelledRowError, parse_csv_bytes

    try:
        features, target = parse_csv_bytes(raw)
    except UnicodeDecodeError as exc:
        _csv_error("csv_invalid", f"not UTF-8 text (byte {exc.start})", ("body",))
    except LabelledRowError as exc:
        loc: tuple[Any, ...] = ("body",)
        if exc.row is not None:
            loc = ("body", "rows", exc.row - 1)
        if exc.column is not None:
            loc = (*loc, exc.column)
        _csv_error("csv_invalid", str(exc), loc)
    n = len(target)
    if not MIN_SAMPLES <= n <= MAX_SAMPLES:
        _csv_error(
            "csv_rows",
            f"{n} rows: send {MIN_SAMPLES} to {MAX_SAMPLES} rows per request "
            "(`ia-continu datasets import` takes files of any size)",
            ("body", "rows"),
        )
    return _store(state, features, target, hour)


def _csv_error(kind: str, message: str, loc: tuple[Any, ...]) -> NoReturn:
    raise RequestValidationError([{"type": kind, "loc": loc, "msg": message}])


def _store(state: AppState, features: Any, target: Any, hour: int | None) -> DatasetUploadResponse:
    import numpy as np

    from ia_continu.api.routes.core import _local_hour
    from ia_continu.db import datasets as db_datasets
    from ia_continu.ml.data import Dataset

    now = state.clock()
    hour = hour if hour is not None else _local_hour(now, state.settings.timezone)
    dataset = Dataset(features=np.ascontiguousarray(features), target=target, hour=hour)
    record = db_datasets.insert_dataset(state.engine, dataset, created_at=now, source="upload")
    ones = int(target.sum())
    return DatasetUploadResponse(
        generation_id=record.generation_id,
        samples_created=record.samples_count,
        timestamp=now,
        hour_generated=hour,
        class_counts={"0": len(target) - ones, "1": ones},
    )
