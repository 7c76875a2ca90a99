"""Feature histograms on common bin edges (the dashboard's overlay)."""

from __future__ import annotations

import numpy as np
import pytest

from ia_continu.ml.data import generate_dataset
from ia_continu.ml.histograms import compute_feature_histograms


def test_compute_feature_histograms_uses_common_edges_spanning_both_samples() -> None:
    reference = generate_dataset(2000, hour=2, seed=7).features
    latest = generate_dataset(500, hour=5, seed=8).features
    result = compute_feature_histograms(reference, latest, bins=25)
    assert set(result) == {"feature1", "feature2"}
    for i, name in enumerate(("feature1", "feature2")):
        h = result[name]
        assert len(h.edges) == 26
        assert all(a < b for a, b in zip(h.edges, h.edges[1:], strict=False))
        pooled = np.concatenate([reference[:, i], latest[:, i]])
        assert h.edges[0] == pytest.approx(pooled.min())
        assert h.edges[-1] == pytest.approx(pooled.max())
        assert h.reference is not None and h.latest is not None
        assert sum(h.reference) == 2000 and sum(h.latest) == 500
        assert h.reference_mean == pytest.approx(reference[:, i].mean())


def test_compute_feature_histograms_shows_the_odd_hour_shift() -> None:
    # Same seed: identical latent draws, so the odd hour moves feature1 by exactly -0.5.
    even = generate_dataset(1000, hour=2, seed=3).features
    odd = generate_dataset(1000, hour=3, seed=3).features
    result = compute_feature_histograms(even, odd, bins=30)
    f1, f2 = result["feature1"], result["feature2"]
    assert f1.latest_mean is not None and f1.reference_mean is not None
    assert f1.latest_mean - f1.reference_mean == pytest.approx(-0.5)
    assert f2.reference == f2.latest  # feature2 does not drift
    assert f1.reference != f1.latest


def test_compute_feature_histograms_handles_missing_sides() -> None:
    latest = generate_dataset(300, hour=1, seed=1).features
    only_latest = compute_feature_histograms(None, latest, bins=10)
    assert only_latest["feature1"].reference is None
    assert only_latest["feature1"].reference_mean is None
    assert sum(only_latest["feature1"].latest or []) == 300
    assert compute_feature_histograms(None, None, bins=10) == {}
    assert compute_feature_histograms(np.empty((0, 2)), None, bins=10) == {}


def test_compute_feature_histograms_constant_feature_gets_a_nonempty_range() -> None:
    sample = np.column_stack([np.full(50, 1.5), np.arange(50, dtype=float)])
    h = compute_feature_histograms(sample, None, bins=4)["feature1"]
    assert h.edges[0] < 1.5 < h.edges[-1]
    assert sum(h.reference or []) == 50


@pytest.mark.parametrize("bins", [0, 1, 201])
def test_compute_feature_histograms_rejects_bins_out_of_range(bins: int) -> None:
    with pytest.raises(ValueError, match="bins"):
        compute_feature_histograms(np.zeros((3, 2)), None, bins=bins)


def test_compute_feature_histograms_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        compute_feature_histograms(np.zeros((3, 3)), None, bins=5)


@pytest.mark.parametrize(
    "values",
    [
        [1.7e308, -1.7e308, 0.0],  # the span overflows a float
        [1e-300, 5e-324, 2e-300],  # widths below the smallest float
        [-4.8e16, -4.8e16],  # one value
    ],
)
def test_extreme_values_get_finite_edges_and_every_row_counted(values: list[float]) -> None:
    """An uploaded dataset with such values made /dashboard/histograms answer 500
    (numpy: "Too many bins for data range"); found by the schema fuzzer."""
    sample = np.array([[v, 0.0] for v in values])
    result = compute_feature_histograms(sample, sample, bins=30)
    edges = result["feature1"].edges
    assert len(edges) == 31 and all(np.isfinite(edges))
    assert sum(result["feature1"].reference or []) == len(values)
    assert sum(result["feature1"].latest or []) == len(values)
