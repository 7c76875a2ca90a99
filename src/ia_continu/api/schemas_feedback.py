"""Bodies of POST /feedback and GET /predictions/performance (learning from production)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from ia_continu.api.ids import ID_PATTERN
from ia_continu.api.schemas import _NotBoolOrStr, _Strict

MAX_FEEDBACK_ITEMS = 10_000

PredictionId = Annotated[
    str,
    Field(
        min_length=36,
        max_length=36,
        pattern=ID_PATTERN,
        description="the prediction_id returned by /predict or /predict/batch",
        examples=["019ad2b4-5c1e-7a3f-8b2d-4f6e8a9c0d1e"],
    ),
]
Label = Annotated[int, Field(ge=0, le=1, description="the true class"), _NotBoolOrStr]


class FeedbackItem(_Strict):
    prediction_id: PredictionId
    label: Label


class FeedbackBatch(_Strict):
    items: list[FeedbackItem] = Field(
        ..., min_length=1, max_length=MAX_FEEDBACK_ITEMS, description="1 to 10,000 labels"
    )


class FeedbackResponse(BaseModel):
    received: int = Field(description="items in the request")
    stored: int = Field(description="labels written: created + updated")
    created: int = Field(description="ids labelled for the first time")
    updated: int = Field(description="ids whose label changed (the new label replaces the old)")
    unchanged: int = Field(
        description="the same label again, or an id repeated in the request (last one wins)"
    )


class ShadowMetrics(BaseModel):
    accuracy: float | None
    precision: float | None
    recall: float | None
    f1_score: float | None


class VersionPerformance(BaseModel):
    served: int = Field(description="predictions served in the window")
    labelled: int = Field(description="of which have feedback")
    coverage: float | None = Field(description="labelled / served; null without traffic")
    accuracy: float | None = Field(description="on the labelled predictions; null without any")
    precision: float | None
    recall: float | None
    f1_score: float | None
    label_delay_p50_seconds: float | None = Field(
        description="median of feedback received_at - prediction created_at; from a "
        "log-scale histogram: within 1.1 % of the exact value (delays of 1 ms or less "
        "count as 0)"
    )
    label_delay_p95_seconds: float | None = Field(
        description="95th percentile of the same delays, within the same bound"
    )


class ShadowPerformance(BaseModel):
    scored: int = Field(description="predictions this shadow model scored in the window")
    labelled: int = Field(description="of which have feedback (the rows compared below)")
    shadow: ShadowMetrics = Field(description="the shadow model's realized metrics")
    champion: ShadowMetrics = Field(
        description="the served models' realized metrics on the same labelled rows"
    )


class PerformanceResponse(BaseModel):
    since: datetime
    until: datetime
    version: str | None = Field(description="the model_version filter, if any")
    overall: VersionPerformance
    by_model_version: dict[str, VersionPerformance]
    shadow: dict[str, ShadowPerformance] = Field(description="per shadow model version")
    orphans: int = Field(
        description="labels received in the window whose prediction_id matches no logged "
        "prediction (0 with a version filter)"
    )


class PerformanceBucketPoint(BaseModel):
    t: datetime = Field(description="start of the bucket (UTC)")
    model_version: str
    served: int = Field(description="predictions this version served in the bucket")
    labelled: int = Field(description="of which have feedback")
    coverage: float = Field(description="labelled / served")
    accuracy: float | None = Field(description="realized, on the labelled ones; null without")


class PerformanceTimeseriesResponse(BaseModel):
    since: datetime
    until: datetime
    bucket_seconds: int
    points: list[PerformanceBucketPoint] = Field(
        description="per bucket and model version, oldest first; buckets without traffic are absent"
    )
