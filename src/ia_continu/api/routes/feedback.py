"""POST /feedback (true labels for served predictions) and GET /predictions/performance
(realized metrics of the served and shadow models on the labelled predictions)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

from ia_continu.api.body import parse_body
from ia_continu.api.deps import get_state
from ia_continu.api.ids import ID_RE
from ia_continu.api.schemas import ErrorResponse
from ia_continu.api.schemas_feedback import (
    MAX_FEEDBACK_ITEMS,
    FeedbackBatch,
    FeedbackItem,
    FeedbackResponse,
    PerformanceBucketPoint,
    PerformanceResponse,
    PerformanceTimeseriesResponse,
    ShadowMetrics,
    ShadowPerformance,
    VersionPerformance,
)
from ia_continu.api.state import AppState

log = logging.getLogger(__name__)
router = APIRouter(tags=["feedback"])
_E = {"model": ErrorResponse}

DEFAULT_WINDOW = timedelta(days=7)
# RFC 3339 date-time, as the OpenAPI format says: pydantic alone would also take "0.5" (a
# Unix time) or "2026-01-01" (a date); a time without an offset is ambiguous.
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")


def _require_rfc3339(value: object) -> object:
    if isinstance(value, str) and not _DATE_TIME.match(value):
        raise PydanticCustomError(
            "datetime_format",
            "Input should be an RFC 3339 date-time with a time zone, e.g. 2026-01-15T10:30:00Z",
        )
    return value


DateTimeQuery = Annotated[datetime, BeforeValidator(_require_rfc3339)]
MAX_WINDOW = timedelta(days=90)


def _feedback_openapi() -> dict[str, Any]:
    # One label or a list of labels. Parsed by one model or the other (see below) so that
    # a 422 names the item as ["body", "items", 3, "label"], not a union member.
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            FeedbackItem.model_json_schema(),
                            _inline(FeedbackBatch.model_json_schema()),
                        ]
                    }
                }
            },
        }
    }


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace local ``#/$defs/X`` references by the definitions (OpenAPI has no $defs
    at the place this schema lands)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses={422: _E, 503: _E},
    openapi_extra=_feedback_openapi(),
)
async def post_feedback(request: Request) -> FeedbackResponse:
    """Store the true label of served predictions: ``{"prediction_id", "label"}`` or
    ``{"items": [...]}`` (1 to 10,000). The same label again changes nothing; a different
    label replaces the old one. An id no prediction carries is kept and counted as an
    orphan by /predictions/performance (the prediction may not be written yet)."""
    raw = await request.body()
    state: AppState = request.app.state.ia
    # A valid single label cannot contain the bytes "items" (ids are hexadecimal).
    if b'"items"' in raw:
        fast = _read_valid_batch(raw)
        if fast is not None:
            items = fast
        else:  # the schema says what is wrong, naming the item
            batch = parse_body(FeedbackBatch, raw)
            items = [(i.prediction_id.lower(), i.label) for i in batch.items]
    else:
        one = parse_body(FeedbackItem, raw)
        items = [(one.prediction_id.lower(), one.label)]
    from ia_continu.db.feedback import upsert_feedback

    outcome = await asyncio.to_thread(
        upsert_feedback, state.engine, items, received_at=datetime.now(UTC)
    )
    return FeedbackResponse(
        received=outcome.received,
        stored=outcome.stored,
        created=outcome.created,
        updated=outcome.updated,
        unchanged=outcome.unchanged,
    )


def _read_valid_batch(raw: bytes) -> list[tuple[str, int]] | None:
    """The items of a well-formed batch, or None for anything else (then pydantic parses
    it and names the faulty item). pydantic spent ~40 ms on 10,000 items, mostly on the
    id pattern and the per-item validator; this loop takes a few ms."""
    import orjson

    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.keys() != {"items"}:
        return None
    entries = body["items"]
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_FEEDBACK_ITEMS:
        return None
    match = ID_RE.match
    items: list[tuple[str, int]] = []
    for entry in entries:
        if type(entry) is not dict or len(entry) != 2:
            return None
        pid, label = entry.get("prediction_id"), entry.get("label")
        # type() rather than isinstance: True is an int, and is not a label.
        if type(pid) is not str or type(label) is not int or label not in (0, 1):
            return None
        if len(pid) != 36 or match(pid) is None:
            return None
        items.append((pid.lower(), label))
    return items


def _invalid_query(field: str, message: str, value: object) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", field), "msg": message, "input": str(value)}]
    )


def resolve_window(
    since: datetime | None, until: datetime | None, now: datetime
) -> tuple[datetime, datetime]:
    """[since, until) in UTC: default the last 7 days, at most 90 days (422 naming the
    field otherwise). A time without a zone (only from Python callers) is UTC."""

    def utc(value: datetime) -> datetime:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    try:
        end = utc(until) if until is not None else now
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 has no UTC equivalent
        raise _invalid_query("until", "out of range", until) from None
    try:
        start = utc(since) if since is not None else end - DEFAULT_WINDOW
    except OverflowError:  # until = year 1: 7 days earlier does not exist
        field = "since" if since is not None else "until"
        raise _invalid_query(field, "out of range", since or until) from None
    if start >= end:
        raise _invalid_query("since", "since must be earlier than until", since)
    if end - start > MAX_WINDOW:
        raise _invalid_query(
            "since", f"the window is at most {MAX_WINDOW.days} days (until - since)", since
        )
    return start, end


@router.get(
    "/predictions/performance",
    response_model=PerformanceResponse,
    responses={422: _E, 503: _E},
)
async def predictions_performance(
    since: Annotated[
        DateTimeQuery | None, Query(description="RFC 3339 with a zone; default until - 7 days")
    ] = None,
    until: Annotated[
        DateTimeQuery | None, Query(description="RFC 3339 with a zone; default now")
    ] = None,
    version: Annotated[
        str | None,
        # No NUL: PostgreSQL refuses it in a text parameter (a 503 instead of a 422).
        Query(min_length=1, max_length=32, pattern=r"^[^\x00]+$", description="one model version"),
    ] = None,
    state: AppState = Depends(get_state),
) -> PerformanceResponse:
    """Realized performance: per model version and overall, the predictions served in
    [since, until), how many have feedback (coverage), accuracy / precision / recall / F1
    on those, and the label delay p50/p95; the shadow models on the same labelled rows;
    the orphan labels. The window is at most 90 days."""
    start, end = resolve_window(since, until, datetime.now(UTC))
    if state.predlog is not None:  # read-your-writes for what this process served
        await asyncio.shield(state.predlog.flush())
    from ia_continu.db.performance import read_performance

    record = await asyncio.to_thread(
        read_performance, state.engine, since=start, until=end, version=version
    )
    return build_performance(record, since=start, until=end, version=version)


def build_performance(
    record: Any, *, since: datetime, until: datetime, version: str | None
) -> PerformanceResponse:
    from ia_continu.db.performance import Confusion

    overall = Confusion()
    all_delays: dict[int, int] = {}
    served = 0
    by_version = {}
    for name, v in sorted(record.by_version.items()):
        served += v.served
        for attr in ("tp", "fp", "fn", "tn"):
            setattr(overall, attr, getattr(overall, attr) + getattr(v.confusion, attr))
        for bucket, n in v.delay_histogram.items():
            all_delays[bucket] = all_delays.get(bucket, 0) + n
        by_version[name] = _version_performance(v.served, v.confusion, v.delay_histogram)
    return PerformanceResponse(
        since=since,
        until=until,
        version=version,
        overall=_version_performance(served, overall, all_delays),
        by_model_version=by_version,
        shadow={
            name: ShadowPerformance(
                scored=s.scored,
                labelled=s.shadow.total,
                shadow=ShadowMetrics(**s.shadow.metrics()),
                champion=ShadowMetrics(**s.champion.metrics()),
            )
            for name, s in sorted(record.by_shadow.items())
        },
        orphans=record.orphans,
    )


def _version_performance(
    served: int, confusion: Any, delay_histogram: dict[int, int]
) -> VersionPerformance:
    from ia_continu.db.feedback import delay_percentiles

    labelled = confusion.total
    p50 = p95 = None
    percentiles = delay_percentiles(delay_histogram, (50, 95))
    if percentiles is not None:
        p50, p95 = percentiles
    return VersionPerformance(
        served=served,
        labelled=labelled,
        coverage=labelled / served if served else None,
        label_delay_p50_seconds=p50,
        label_delay_p95_seconds=p95,
        **confusion.metrics(),
    )


# --- Prometheus gauges (bounded: the served champion and the shadow version only) -------

_GAUGE_TTL_SECONDS = 30.0
_gauge_cache: dict[int, tuple[float, bytes]] = {}
_gauge_lock = threading.Lock()


def render_performance_gauges(state: AppState | None) -> bytes:
    """Realized metrics over the default window for the champion and the shadow model,
    in the Prometheus text format. Computed at most every 30 s per process (the query
    reads the whole window); a database error yields nothing rather than a failed scrape."""
    if state is None or state.model is None:
        return b""
    key = id(state)
    with _gauge_lock:
        cached = _gauge_cache.get(key)
        if cached is not None and time.monotonic() - cached[0] < _GAUGE_TTL_SECONDS:
            return cached[1]
        try:
            body = _compute_gauges(state)
        except Exception as exc:
            log.warning("metrics: realized performance unavailable: %s", exc)
            body = b""
        _gauge_cache.clear()  # one app per process in production; tests build many
        _gauge_cache[key] = (time.monotonic(), body)
        return body


def _compute_gauges(state: AppState) -> bytes:
    from prometheus_client import generate_latest
    from prometheus_client.core import GaugeMetricFamily

    from ia_continu.db.performance import read_performance

    now = datetime.now(UTC)
    model = state.model
    assert model is not None
    record = read_performance(state.engine, since=now - DEFAULT_WINDOW, until=now)
    names = (
        "served",
        "labelled",
        "coverage",
        "accuracy",
        "precision",
        "recall",
        "f1_score",
        "label_delay_p50_seconds",
        "label_delay_p95_seconds",
    )
    families = {
        n: GaugeMetricFamily(
            f"ia_realized_{n}",
            f"Realized {n.replace('_', ' ')} over the last 7 days (feedback joined to "
            "logged predictions), champion and shadow model",
            labels=["role", "version"],
        )
        for n in names
    }
    rows: list[tuple[str, str, dict[str, Any]]] = []
    champion = record.by_version.get(model.version)
    if champion is not None:
        rows.append(
            (
                "champion",
                model.version,
                _version_performance(
                    champion.served, champion.confusion, champion.delay_histogram
                ).model_dump(),
            )
        )
    shadow_model = state.shadow
    if shadow_model is not None and shadow_model.version in record.by_shadow:
        s = record.by_shadow[shadow_model.version]
        labelled = s.shadow.total
        rows.append(
            (
                "shadow",
                shadow_model.version,
                {
                    "served": s.scored,
                    "labelled": labelled,
                    "coverage": labelled / s.scored if s.scored else None,
                    **s.shadow.metrics(),
                },
            )
        )
    for role, version, values in rows:
        for n in names:
            value = values.get(n)
            if isinstance(value, int | float):
                families[n].add_metric([role, version], float(value))
    orphans = GaugeMetricFamily(
        "ia_feedback_orphans",
        "Labels received over the last 7 days whose prediction_id matches no logged prediction",
        value=record.orphans,
    )

    class _Collector:
        def collect(self) -> Any:
            yield from families.values()
            yield orphans

    return generate_latest(_Collector())


MAX_PERFORMANCE_BUCKETS = 2_000  # (until - since) / bucket_seconds, per request


@router.get(
    "/predictions/performance/timeseries",
    response_model=PerformanceTimeseriesResponse,
    responses={422: _E, 503: _E},
)
async def predictions_performance_timeseries(
    since: Annotated[
        DateTimeQuery | None, Query(description="RFC 3339; default until - 7 days")
    ] = None,
    until: Annotated[DateTimeQuery | None, Query(description="RFC 3339; default now")] = None,
    bucket_seconds: Annotated[
        int, Query(ge=60, le=86_400, description="bucket width in seconds")
    ] = 3600,
    state: AppState = Depends(get_state),
) -> PerformanceTimeseriesResponse:
    """Realized accuracy over time: per bucket (by prediction time) and model version, the
    predictions served, how many have feedback (coverage), and the accuracy on those.
    At most 2,000 buckets: ``(until - since) / bucket_seconds <= 2000``, else 422."""
    start, end = resolve_window(since, until, datetime.now(UTC))
    if (end - start).total_seconds() / bucket_seconds > MAX_PERFORMANCE_BUCKETS:
        raise _invalid_query(
            "bucket_seconds",
            f"too many buckets: (until - since) / bucket_seconds must be "
            f"<= {MAX_PERFORMANCE_BUCKETS}",
            bucket_seconds,
        )
    if state.predlog is not None:  # read-your-writes for what this process served
        await asyncio.shield(state.predlog.flush())
    from ia_continu.db.performance import read_performance_buckets

    buckets = await asyncio.to_thread(
        read_performance_buckets,
        state.engine,
        since=start,
        until=end,
        bucket_seconds=bucket_seconds,
    )
    return PerformanceTimeseriesResponse(
        since=start,
        until=end,
        bucket_seconds=bucket_seconds,
        points=[
            PerformanceBucketPoint(
                t=b.start,
                model_version=b.model_version,
                served=b.served,
                labelled=b.labelled,
                coverage=b.labelled / b.served if b.served else 0.0,
                accuracy=b.correct / b.labelled if b.labelled else None,
            )
            for b in buckets
        ],
    )
