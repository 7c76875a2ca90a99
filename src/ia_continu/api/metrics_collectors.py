"""Metric families built at scrape time: the settings, the served model, and the
database's view (champion, versions, latest monitoring run), shared by every process."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import Engine

from ia_continu.config import Settings

log = logging.getLogger(__name__)

FEATURES = ("feature1", "feature2")


class _SettingsCollector:
    """The thresholds the alert rules need, as this process's settings say."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily(
            "ia_config_min_accuracy",
            "IA_MIN_ACCURACY: the accuracy below which the champion is considered failing",
            value=self._settings.min_accuracy,
        )
        yield GaugeMetricFamily(
            "ia_config_monitor_interval_seconds",
            "IA_MONITOR_INTERVAL: seconds between scheduled monitoring runs",
            value=self._settings.monitor_interval,
        )


class _FamiliesCollector:
    def __init__(self, families: list[Any]) -> None:
        self._families = families

    def collect(self) -> Iterator[Any]:
        yield from self._families


class _DatabaseCollector:
    """Read at scrape time, so every process (and the Prefect worker's writes) agree."""

    def __init__(self, engine: Engine | None) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from ia_continu.db import snapshot as db_snapshot

        up = GaugeMetricFamily("ia_database_up", "1 when /metrics could read the database")
        if self._engine is None:
            up.add_metric([], 0)
            yield up
            return
        try:
            snap = db_snapshot.read_metrics_snapshot(self._engine)
        except Exception as exc:  # report the outage instead of failing the scrape
            log.warning("metrics: database unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _champion_families(snap)
        yield from _monitoring_families(snap)


def _champion_families(snap: Any) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    info = GaugeMetricFamily(
        "ia_champion_info",
        "1 for the champion (active) model version",
        labels=["version", "registry_version"],
    )
    accuracy = GaugeMetricFamily(
        "ia_champion_accuracy", "Held-out accuracy of the champion model", labels=["version"]
    )
    if snap.champion_version is not None:
        registry_version = snap.champion_registry_version
        info.add_metric(
            [snap.champion_version, "" if registry_version is None else str(registry_version)], 1
        )
        accuracy.add_metric([snap.champion_version], snap.champion_accuracy)
    yield info
    yield accuracy
    yield GaugeMetricFamily(
        "ia_model_versions",
        "Model versions stored (every retrain, from the API or the monitoring flow, adds one)",
        value=snap.model_count,
    )


def _monitoring_families(snap: Any) -> Iterator[Any]:
    from prometheus_client.core import GaugeMetricFamily

    yield GaugeMetricFamily(
        "ia_monitoring_runs", "Monitoring runs recorded", value=snap.monitoring_run_count
    )
    run = snap.last_monitoring_run
    info = GaugeMetricFamily(
        "ia_monitoring_last_run_info",
        "1 with the latest monitoring run's status and decision",
        labels=["status", "decision"],
    )
    when = GaugeMetricFamily(
        "ia_monitoring_last_run_timestamp_seconds",
        "When the latest monitoring run finished (started, while it runs), Unix time",
    )
    duration = GaugeMetricFamily(
        "ia_monitoring_last_run_duration_seconds", "Duration of the latest monitoring run"
    )
    drift = GaugeMetricFamily(
        "ia_monitoring_last_drift_detected", "1 when the latest monitoring run detected drift"
    )
    accuracy = GaugeMetricFamily(
        "ia_monitoring_last_accuracy",
        "Champion accuracy on the latest monitoring batch",
    )
    reference = GaugeMetricFamily(
        "ia_monitoring_last_reference_accuracy",
        "Champion held-out accuracy the latest monitoring run compared against",
    )
    ks = GaugeMetricFamily(
        "ia_monitoring_last_ks_statistic",
        "Kolmogorov-Smirnov statistic per feature, latest monitoring run",
        labels=["feature"],
    )
    ks_p = GaugeMetricFamily(
        "ia_monitoring_last_ks_p_value",
        "Kolmogorov-Smirnov p-value per feature, latest monitoring run",
        labels=["feature"],
    )
    psi = GaugeMetricFamily(
        "ia_monitoring_last_psi",
        "Population stability index per feature, latest monitoring run",
        labels=["feature"],
    )
    if run is not None:
        info.add_metric([str(run.get("status") or ""), str(run.get("decision") or "")], 1)
        moment = run.get("finished_at") or run.get("started_at")
        if moment is not None:
            when.add_metric([], moment.timestamp())
        _add_if_number(duration, [], run.get("duration_seconds"))
        drift.add_metric([], 1 if run.get("drift_detected") else 0)
        _add_if_number(accuracy, [], run.get("accuracy"))
        _add_if_number(reference, [], run.get("reference_accuracy"))
        for feature in FEATURES:
            _add_if_number(ks, [feature], run.get(f"ks_statistic_{feature}"))
            _add_if_number(ks_p, [feature], run.get(f"ks_p_value_{feature}"))
            _add_if_number(psi, [feature], run.get(f"psi_{feature}"))
    yield from (info, when, duration, drift, accuracy, reference, ks, ks_p, psi)


def _add_if_number(family: Any, labels: list[str], value: object) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        family.add_metric(labels, float(value))
