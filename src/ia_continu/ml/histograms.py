"""Feature histograms of two samples on common bin edges (the dashboard's overlay).

Shared edges are what make the overlay honest: two histograms binned separately can look
alike while their data differ by a shift of one bin width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FEATURES = ("feature1", "feature2")
MIN_BINS = 2
MAX_BINS = 200


@dataclass(frozen=True, slots=True)
class FeatureHistogram:
    edges: list[float]  # bins + 1 increasing values
    reference: list[int] | None  # counts per bin, None when there is no reference sample
    latest: list[int] | None
    reference_mean: float | None
    latest_mean: float | None


def compute_feature_histograms(
    reference: NDArray[np.float64] | None,
    latest: NDArray[np.float64] | None,
    *,
    bins: int,
    features: tuple[str, ...] = FEATURES,
) -> dict[str, FeatureHistogram]:
    """Per feature (column), the counts of both (n, k) samples on edges spanning both.

    A missing or empty sample gives ``None`` counts; with no data at all the result is
    empty. Non-finite values are left out.
    """
    if not MIN_BINS <= bins <= MAX_BINS:
        raise ValueError(f"bins must be in {MIN_BINS}..{MAX_BINS}")
    samples = [s for s in (reference, latest) if s is not None and len(s) > 0]
    if not samples:
        return {}
    for sample in samples:
        if sample.ndim != 2 or sample.shape[1] != len(features):
            raise ValueError(f"samples must have shape (n, {len(features)})")
    result: dict[str, FeatureHistogram] = {}
    for i, name in enumerate(features):
        ref_col = _finite_column(reference, i)
        cur_col = _finite_column(latest, i)
        pooled = np.concatenate([c for c in (ref_col, cur_col) if c is not None])
        if pooled.size == 0:
            continue
        edges = _bin_edges(pooled, bins)
        result[name] = FeatureHistogram(
            edges=[float(e) for e in edges],
            reference=_counts(ref_col, edges),
            latest=_counts(cur_col, edges),
            reference_mean=_mean(ref_col),
            latest_mean=_mean(cur_col),
        )
    return result


def _finite_column(sample: NDArray[np.float64] | None, index: int) -> NDArray[np.float64] | None:
    if sample is None or len(sample) == 0:
        return None
    column = np.asarray(sample[:, index], dtype=np.float64)
    return column[np.isfinite(column)]


def _bin_edges(pooled: NDArray[np.float64], bins: int) -> NDArray[np.float64]:
    """Equal-width edges over the data. numpy refuses spans a float cannot divide into
    ``bins`` finite widths: near ±1.8e308 the span overflows, below ~1e-300 the widths
    vanish (a ValueError: the route answered 500 for an uploaded dataset)."""
    lo, hi = float(pooled.min()), float(pooled.max())
    with np.errstate(all="ignore"):
        if np.isfinite(hi - lo) and hi - lo > abs(lo) * 1e-12:
            edges = np.linspace(lo, hi, bins + 1)
        else:  # halve the ends, then double the edges: no intermediate overflows
            edges = np.linspace(lo / 2, hi / 2, bins + 1) * 2
    if np.all(np.isfinite(edges)) and np.all(np.diff(edges) > 0):
        return edges
    # A span too small to split (or a single value): one unit around it.
    return np.linspace(lo - 0.5, lo + 0.5, bins + 1)


def _counts(column: NDArray[np.float64] | None, edges: NDArray[np.float64]) -> list[int] | None:
    if column is None:
        return None
    # Bin by comparison, not by (x - first edge) / width as np.histogram does (which
    # overflows near ±1.8e308); the last bin includes its right edge, as numpy's does.
    index = np.searchsorted(edges, column, side="right") - 1
    index = np.clip(index, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    return [int(c) for c in counts]


def _mean(column: NDArray[np.float64] | None) -> float | None:
    if column is None or column.size == 0:
        return None
    return float(column.mean())
