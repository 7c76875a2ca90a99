"""Drift statistics and the retrain / promotion rules, as pure functions.

No database, MLflow or orchestration here: the monitoring service feeds arrays and
numbers in and records what comes out. scipy is imported inside the functions so that
importing this module stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

FEATURES = ("feature1", "feature2")
PSI_BINS = 10
# Share given to a bin that one sample leaves empty: ln(0) would make PSI infinite.
PSI_EPSILON = 1e-4


@dataclass(frozen=True, slots=True)
class FeatureDrift:
    ks_statistic: float
    ks_p_value: float
    psi: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


DriftReport = dict[str, FeatureDrift]


@dataclass(frozen=True, slots=True)
class RetrainDecision:
    retrain: bool
    drift_detected: bool
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "no threshold crossed"


def compute_ks(reference: ArrayLike, current: ArrayLike) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov test: (statistic, p-value)."""
    from scipy.stats import ks_2samp

    ref, cur = _clean(reference), _clean(current)
    result = ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def compute_psi(
    reference: ArrayLike,
    current: ArrayLike,
    *,
    bins: int = PSI_BINS,
    epsilon: float = PSI_EPSILON,
) -> float:
    """Population Stability Index of ``current`` against ``reference``.

    Bin edges are the reference's quantiles (each reference bin holds ~1/bins of it),
    the outer bins are open-ended so that no current value falls outside, and empty
    bins count as ``epsilon``. PSI = sum((cur - ref) * ln(cur / ref)).
    """
    if bins < 2:
        raise ValueError("PSI needs at least 2 bins")
    ref, cur = _clean(reference), _clean(current)
    inner = np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    # Ties in the reference give repeated edges; unique ones keep every bin non-degenerate.
    edges = np.unique(inner)
    ref_share = _bin_shares(ref, edges, epsilon)
    cur_share = _bin_shares(cur, edges, epsilon)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def _bin_shares(
    values: NDArray[np.float64], edges: NDArray[np.float64], eps: float
) -> NDArray[np.float64]:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=edges.size + 1)
    shares = counts / values.size
    return np.where(shares == 0, eps, shares).astype(np.float64)


def _clean(values: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("cannot compare an empty sample")
    if not np.all(np.isfinite(arr)):
        raise ValueError("samples must be finite")
    return arr


def compute_drift_report(
    reference: ArrayLike, current: ArrayLike, *, features: tuple[str, ...] = FEATURES
) -> DriftReport:
    """KS and PSI per feature between two (n, k) feature matrices."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1]:
        raise ValueError("reference and current must be 2-D with the same number of columns")
    if ref.shape[1] != len(features):
        raise ValueError(f"expected {len(features)} feature columns, got {ref.shape[1]}")
    report: DriftReport = {}
    for i, name in enumerate(features):
        statistic, p_value = compute_ks(ref[:, i], cur[:, i])
        report[name] = FeatureDrift(
            ks_statistic=statistic, ks_p_value=p_value, psi=compute_psi(ref[:, i], cur[:, i])
        )
    return report


def drifted_features(report: Mapping[str, FeatureDrift], *, p_value: float) -> list[str]:
    """Features whose KS p-value is below the significance threshold."""
    return [name for name, d in report.items() if d.ks_p_value < p_value]


def decide_retrain(
    *,
    accuracy: float,
    reference_accuracy: float,
    drift: Mapping[str, FeatureDrift] | None,
    max_accuracy_drop: float,
    min_accuracy: float,
    drift_p_value: float,
    psi_threshold: float | None = None,
) -> RetrainDecision:
    """Retrain when the champion's accuracy on fresh labelled data falls more than
    ``max_accuracy_drop`` below its own held-out accuracy, or below ``min_accuracy``,
    or when any feature's KS p-value is below ``drift_p_value``.

    PSI above ``psi_threshold`` is reported in the reasons but does not by itself
    trigger a retrain (the KS test is the significance test; PSI measures size).
    """
    reasons: list[str] = []
    floor = reference_accuracy - max_accuracy_drop
    if accuracy < floor:
        reasons.append(
            f"accuracy {accuracy:.4f} < champion held-out {reference_accuracy:.4f} "
            f"- {max_accuracy_drop:g}"
        )
    if accuracy < min_accuracy:
        reasons.append(f"accuracy {accuracy:.4f} < minimum {min_accuracy:g}")
    drifted = drifted_features(drift or {}, p_value=drift_p_value)
    for name in drifted:
        assert drift is not None
        reasons.append(f"{name} KS p-value {drift[name].ks_p_value:.2e} < {drift_p_value:g}")
    retrain = bool(reasons)
    if psi_threshold is not None and drift:
        for name, d in drift.items():
            if d.psi > psi_threshold:
                reasons.append(f"{name} PSI {d.psi:.3f} > {psi_threshold:g}")
    return RetrainDecision(retrain=retrain, drift_detected=bool(drifted), reasons=tuple(reasons))


def should_promote(*, challenger_accuracy: float, champion_accuracy: float, margin: float) -> bool:
    """The challenger wins when its held-out accuracy is at least the champion's accuracy
    on the same held-out rows plus ``margin``."""
    if not (math.isfinite(challenger_accuracy) and math.isfinite(champion_accuracy)):
        return False
    # A tiny tolerance: equal accuracies computed two ways must compare as equal.
    return challenger_accuracy >= champion_accuracy + margin - 1e-12


def report_to_dict(report: Mapping[str, FeatureDrift] | None) -> dict[str, dict[str, float]] | None:
    if report is None:
        return None
    return {name: d.as_dict() for name, d in report.items()}


def report_from_dict(data: Mapping[str, Mapping[str, float]] | None) -> DriftReport | None:
    if data is None:
        return None
    return {
        name: FeatureDrift(
            ks_statistic=float(v["ks_statistic"]),
            ks_p_value=float(v["ks_p_value"]),
            psi=float(v["psi"]),
        )
        for name, v in data.items()
    }
