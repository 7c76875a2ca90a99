"""What the steps of a monitoring run take and return: requests, batches, checks,
outcomes (plain records), and the errors that end a run."""

from __future__ import annotations

from dataclasses import dataclass

from ia_continu.db import monitoring_runs as db_runs
from ia_continu.db import predictions as db_predictions
from ia_continu.ml import checks
from ia_continu.ml.evaluate import Metrics

LIVE_WINDOW = 10_000  # newest logged predictions compared with the reference at most


FEEDBACK_WINDOW = 100_000  # newest labelled predictions one run learns from at most


HEALTH_TIMEOUT = 5.0


class ApiUnavailableError(RuntimeError):
    """The API's /health did not answer 200."""


class NoChampionDataError(LookupError):
    """The champion cannot be evaluated (no stored parameters)."""


@dataclass(frozen=True, slots=True)
class RunRequest:
    """Optional overrides: a fresh batch of ``hour`` (and/or ``samples`` rows) is
    generated instead of looking for data that arrived since the last run."""

    hour: int | None = None
    samples: int | None = None
    seed: int | None = None  # reproducible forced batch

    @property
    def forces_batch(self) -> bool:
        return self.hour is not None or self.samples is not None


@dataclass(frozen=True, slots=True)
class BatchRef:
    generation_id: int
    hour: int
    samples: int
    source: str
    generated: bool  # True when this run generated it (no fresh data had arrived)
    data_source: str = "generated"  # generated | feedback | upload (monitoring_runs)
    # Set when the batch holds labelled traffic: stored with the run, so it is not reused.
    watermark: db_predictions.FeedbackWatermark | None = None
    note: str | None = None  # why this data (e.g. feedback still below IA_MIN_FEEDBACK)


@dataclass(frozen=True, slots=True)
class NoFreshData:
    """Nothing labelled arrived and IA_MONITOR_GENERATE is off: the run does nothing."""

    reason: str


@dataclass(frozen=True, slots=True)
class ShadowVerdict:
    """The shadow challenger against the champion on the same labelled live rows."""

    challenger_version: str
    rows: int
    champion_accuracy: float | None
    challenger_accuracy: float | None
    promote: bool
    missing: int  # labelled rows still needed before a verdict (0 once enough)
    reason: str


@dataclass(frozen=True, slots=True)
class ChampionCheck:
    version: str
    reference_accuracy: float  # its own held-out accuracy, measured at training
    metrics: Metrics  # on the fresh batch
    generation_id: int | None  # the data it was trained on


@dataclass(frozen=True, slots=True)
class DriftCheck:
    drift: checks.DriftReport | None
    live_drift: checks.DriftReport | None
    live_samples: int
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ChallengerOutcome:
    version: str
    accuracy: float  # on its own held-out rows
    champion_accuracy_on_holdout: float | None  # the champion on those same rows
    promote: bool
    run_id: str
    experiment_id: str


@dataclass(frozen=True, slots=True)
class MlflowLink:
    run_id: str
    url: str


@dataclass(frozen=True, slots=True)
class RunOutcome:
    run: db_runs.MonitoringRunRecord  # as stored
    mlflow_url: str | None  # link to the run's MLflow run, for the notification
    notified: bool | None  # None when the caller sends the notification itself
