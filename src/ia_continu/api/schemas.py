"""Request and response bodies. Field names follow the seed's contract exactly."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from ia_continu.ml.data import MAX_SAMPLES, MIN_SAMPLES


def _reject_bool_and_str(value: object) -> object:
    # Pydantic's lax mode reads true as 1 and "500" as 500; JSON Schema's integer is a
    # number with no fraction (284 or 284.0), never a boolean or a string.
    if isinstance(value, bool | str | bytes):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


# Bounds inside the type, before the validator: on the field of an "X | None" they reached
# the OpenAPI schema as raw "ge"/"le" keys, which no client or fuzzer reads.
_NotBoolOrStr = BeforeValidator(_reject_bool_and_str)
# generation_id is a 32-bit INTEGER column: a larger id cannot exist, and SQLite's driver
# raised OverflowError (a 500) on ids beyond 2**63.
GenerationId = Annotated[int, Field(ge=1, le=2**31 - 1), _NotBoolOrStr]
Samples = Annotated[int, Field(ge=MIN_SAMPLES, le=MAX_SAMPLES), _NotBoolOrStr]
# The largest integer every JSON client reads exactly (doubles): 2**63 - 1 is not.
Seed = Annotated[int, Field(ge=0, le=2**53 - 1), _NotBoolOrStr]
Hour = Annotated[int, Field(ge=0, le=23), _NotBoolOrStr]
# Strict floats: true/false and "1" are not features (lax mode read {"features": [false, 0]}
# as [0.0, 0.0] and answered 200); integers are accepted.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]


class _Strict(BaseModel):
    # Unknown fields are refused: a typo such as "sample" must not silently use a default.
    model_config = ConfigDict(extra="forbid")


class ErrorResponse(BaseModel):
    detail: str | list[dict[str, object]] = Field(description="What went wrong, naming the field")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"
    timestamp: datetime
    version: str


class GenerateRequest(_Strict):
    samples: Samples = Field(1000, description="rows to generate")
    seed: Seed | None = Field(None, description="for reproducible data")
    hour: Hour | None = Field(
        None, description="overrides the clock's hour for the odd-hour drift rule"
    )


class GenerateResponse(BaseModel):
    generation_id: int
    samples_created: int
    timestamp: datetime
    hour_generated: int


class PredictRequest(_Strict):
    features: list[FiniteFloat] = Field(
        ...,
        min_length=2,
        max_length=2,
        description="[feature1, feature2]",
        examples=[[0.5, -1.2]],
    )


class PredictResponse(BaseModel):
    prediction: Literal[0, 1]
    model_version: str
    confidence: float = Field(ge=0.5, le=1.0)
    timestamp: datetime
    prediction_id: str = Field(description="send it back with the true label: POST /feedback")


MAX_BATCH_ROWS = 10_000
FeatureRow = Annotated[
    list[FiniteFloat], Field(min_length=2, max_length=2, description="[feature1, feature2]")
]


class BatchPredictRequest(_Strict):
    instances: list[FeatureRow] = Field(
        ...,
        min_length=1,
        max_length=MAX_BATCH_ROWS,
        description=f"1 to {MAX_BATCH_ROWS} rows of [feature1, feature2]",
        examples=[[[0.5, -1.2], [1.0, 2.0]]],
    )


class BatchPredictResponse(BaseModel):
    predictions: list[Literal[0, 1]] = Field(description="one class per row, in order")
    confidences: list[float] = Field(description="probability of each predicted class")
    model_version: str
    timestamp: datetime
    prediction_ids: list[str] = Field(description="one id per row, in order (POST /feedback)")


class RetrainRequest(_Strict):
    generation_id: GenerationId | None = Field(None, description="default: the latest dataset")


class RetrainResponse(BaseModel):
    status: Literal["success"] = "success"
    model_version: str
    training_samples: int
    accuracy: float
    timestamp: datetime
    test_samples: int
    precision: float
    recall: float
    f1_score: float
    generation_id: int
    run_id: str
    run_name: str


class EvaluateRequest(_Strict):
    generation_id: GenerationId | None = Field(None, description="default: the latest dataset")


class EvaluateResponse(BaseModel):
    generation_id: int
    samples: int
    model_version: str
    accuracy: float
    precision: float
    recall: float
    f1_score: float
    timestamp: datetime


class ModelInfo(BaseModel):
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


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    active_version: str | None


# --- dashboard ----------------------------------------------------------------------------


class DashboardLinks(BaseModel):
    mlflow: str
    prefect: str
    uptime_kuma: str


class DashboardThresholds(BaseModel):
    min_accuracy: float = Field(description="retrain below this accuracy on a batch")
    max_accuracy_drop: float = Field(description="retrain below champion held-out minus this")
    drift_p_value: float = Field(description="KS p-value below which a feature has drifted")
    psi_threshold: float


class DashboardEndpoints(BaseModel):
    """Which optional routes this API serves: the page skips the others."""

    monitoring_history: bool
    monitoring_run: bool
    predictions_timeseries: bool
    rollback: bool


class DashboardConfig(BaseModel):
    version: str
    refresh_seconds: int
    links: DashboardLinks
    thresholds: DashboardThresholds
    api_key_required: bool = Field(description="POST routes need the X-API-Key header")
    predict_requires_key: bool
    endpoints: DashboardEndpoints


class HistogramDataset(BaseModel):
    generation_id: int
    samples: int = Field(description="rows stored in the dataset")
    rows_used: int = Field(description="rows binned: the first ones, at most a fixed cap")
    hour_generated: int
    created_at: datetime
    model_version: str | None = Field(None, description="the champion trained on it")


class FeatureHistogramInfo(BaseModel):
    edges: list[float] = Field(description="bins + 1 common edges")
    reference: list[int] | None = Field(description="counts per bin, champion's training data")
    latest: list[int] | None = Field(description="counts per bin, latest dataset")
    reference_mean: float | None
    latest_mean: float | None


class HistogramsResponse(BaseModel):
    bins: int
    reference: HistogramDataset | None = Field(description="the champion's training dataset")
    latest: HistogramDataset | None = Field(description="the most recent dataset")
    features: dict[str, FeatureHistogramInfo]


# --- monitoring (continuous-learning loop) ------------------------------------------------


class FeatureDriftInfo(BaseModel):
    ks_statistic: float
    ks_p_value: float
    psi: float


class MonitoringRunRequest(_Strict):
    # The types of /generate's fields: {"seed": false} was a seed of 0.
    hour: Hour | None = Field(None, description="force a fresh batch generated as at this hour")
    samples: Samples | None = Field(None, description="force a fresh batch of this size")
    seed: Seed | None = Field(None, description="seed of the forced batch (reproducible data)")


class MonitoringRun(BaseModel):
    id: int
    started_at: datetime
    finished_at: datetime | None
    duration_seconds: float | None
    status: Literal["ok", "drift", "failed"]
    champion_version: str | None
    generation_id: int | None
    batch_samples: int | None
    hour_generated: int | None
    reference_accuracy: float | None = Field(description="the champion's own held-out accuracy")
    accuracy: float | None = Field(description="the champion on the fresh batch")
    precision: float | None
    recall: float | None
    f1_score: float | None
    drift: dict[str, FeatureDriftInfo] | None = Field(
        description="champion's training data vs the batch, per feature"
    )
    live_drift: dict[str, FeatureDriftInfo] | None = Field(
        description="champion's training data vs logged /predict inputs (when enough)"
    )
    drift_detected: bool
    decision: Literal["none", "promoted", "kept_champion", "failed"]
    reason: str | None
    new_version: str | None
    new_accuracy: float | None = Field(description="the challenger on its held-out rows")
    champion_accuracy_on_holdout: float | None = Field(
        description="the champion on the challenger's held-out rows"
    )
    mlflow_run_id: str | None
    flow_run_id: str | None
    error: str | None
    data_source: Literal["generated", "feedback", "upload"] | None = Field(
        None, description="where the run's labelled rows came from; null: no fresh data"
    )
    labelled_samples: int | None = Field(None, description="labelled rows the run used")


class MonitoringHistory(BaseModel):
    items: list[MonitoringRun]
    total: int
    limit: int
    offset: int


class ActivateResponse(BaseModel):
    status: Literal["activated"] = "activated"
    model_version: str = Field(description="the champion from now on")
    previous_version: str | None = Field(description="the champion before this call")
    registry_version: int | None = Field(description="MLflow registry version (alias champion)")
    accuracy: float
    timestamp: datetime


# --- prediction log (/predictions/*) --------------------------------------------------------

ClassCounts = dict[Literal["0", "1"], int]


class FeatureMeans(BaseModel):
    feature1: float | None
    feature2: float | None


class ModelVersionTraffic(BaseModel):
    count: int
    class_counts: ClassCounts
    mean_confidence: float | None


class PredictionStatsResponse(BaseModel):
    window_minutes: int
    count: int = Field(description="predictions logged in the window (all API processes)")
    class_counts: ClassCounts
    class_balance: float | None = Field(description="share of class 1; null without traffic")
    feature_means: FeatureMeans
    by_model_version: dict[str, ModelVersionTraffic]
    logging_enabled: bool
    # This process's logger since it started (each worker process has its own queue).
    logged: int = Field(description="accepted into the queue")
    dropped: int = Field(description="refused because the queue was full")
    queued: int = Field(description="accepted, not yet written")
    flushed: int = Field(description="written to the database")
    flush_errors: int = Field(description="failed writes (the rows are kept and retried)")
    abandoned: int = Field(description="given up after failing for the whole retry window")


class PredictionTimeseriesPoint(BaseModel):
    t: datetime = Field(description="bucket start (UTC)")
    model_version: str
    class_0: int
    class_1: int


class PredictionTimeseriesResponse(BaseModel):
    window_minutes: int
    bucket_seconds: int
    points: list[PredictionTimeseriesPoint] = Field(
        description="oldest first, one per bucket and model version; empty buckets absent"
    )


# --- labelled uploads (POST /datasets) ----------------------------------------------------

# Strict: true, 1.0 and "1" are not labels.
Target = Annotated[int, Field(ge=0, le=1, strict=True)]
LabelledRow = tuple[FiniteFloat, FiniteFloat, Target]


class DatasetUploadRequest(_Strict):
    rows: list[LabelledRow] = Field(
        ...,
        min_length=MIN_SAMPLES,
        max_length=MAX_SAMPLES,
        description=f"{MIN_SAMPLES} to {MAX_SAMPLES} rows of [feature1, feature2, target]",
        examples=[[[0.5, -1.2, 0], [1.0, 2.0, 1]]],
    )
    hour: Hour | None = Field(
        None, description="hour the rows were observed (hour_generated); default: now"
    )


class DatasetUploadResponse(BaseModel):
    generation_id: int
    samples_created: int
    timestamp: datetime
    hour_generated: int
    source: Literal["upload"] = "upload"
    class_counts: ClassCounts
