from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ks_2samp

from ia_continu.ml import checks
from ia_continu.ml.checks import FeatureDrift
from ia_continu.ml.data import generate_dataset


def test_compute_ks_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=500), rng.normal(0.3, 1.0, size=400)
    expected = ks_2samp(a, b)
    assert checks.compute_ks(a, b) == (
        pytest.approx(expected.statistic),
        pytest.approx(expected.pvalue),
    )


def test_compute_psi_zero_for_identical_samples() -> None:
    x = np.random.default_rng(1).normal(size=2000)
    assert checks.compute_psi(x, x) == pytest.approx(0.0, abs=1e-12)


def test_compute_psi_matches_hand_computation_on_reference_quantile_bins() -> None:
    ref = np.arange(100, dtype=float)  # deciles: edges at 9.9, 19.8, ...
    cur = np.concatenate([np.full(50, 5.0), np.full(50, 95.0)])  # only the outer bins
    eps = 1e-4
    ref_share = np.full(10, 0.1)
    cur_share = np.array([0.5] + [eps] * 8 + [0.5])
    expected = float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))
    assert checks.compute_psi(ref, cur, bins=10, epsilon=eps) == pytest.approx(expected)


def test_compute_psi_counts_values_beyond_the_reference_range_in_outer_bins() -> None:
    ref = np.random.default_rng(2).normal(size=1000)
    far = ref + 100.0  # every value above the reference's maximum
    psi = checks.compute_psi(ref, far)
    assert np.isfinite(psi)
    assert psi > 5  # all mass in one bin that held 10 %


def test_compute_psi_grows_with_the_shift() -> None:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=5000)
    small = checks.compute_psi(ref, rng.normal(0.1, 1.0, size=5000))
    large = checks.compute_psi(ref, rng.normal(0.5, 1.0, size=5000))
    assert 0 <= small < 0.05 < large


def test_compute_psi_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError):
        checks.compute_psi([], [1.0])
    with pytest.raises(ValueError):
        checks.compute_psi([1.0, np.nan], [1.0])


def test_compute_drift_report_flags_only_the_shifted_feature() -> None:
    even = generate_dataset(1000, hour=2, seed=10)
    odd = generate_dataset(1000, hour=3, seed=11)
    report = checks.compute_drift_report(even.features, odd.features)
    assert set(report) == {"feature1", "feature2"}
    assert report["feature1"].ks_p_value < 1e-10
    assert report["feature1"].psi > 0.1
    assert report["feature2"].ks_p_value > 1e-3
    assert checks.drifted_features(report, p_value=0.01) == ["feature1"]


def test_compute_drift_report_same_parity_has_no_significant_drift() -> None:
    a = generate_dataset(1000, hour=4, seed=20)
    b = generate_dataset(1000, hour=6, seed=21)
    report = checks.compute_drift_report(a.features, b.features)
    assert checks.drifted_features(report, p_value=0.01) == []


def test_compute_drift_report_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        checks.compute_drift_report(np.zeros((10, 2)), np.zeros((10, 3)))


def _drift(p1: float = 0.5, p2: float = 0.5, psi: float = 0.0) -> dict[str, FeatureDrift]:
    return {
        "feature1": FeatureDrift(ks_statistic=0.1, ks_p_value=p1, psi=psi),
        "feature2": FeatureDrift(ks_statistic=0.1, ks_p_value=p2, psi=0.0),
    }


RULES = {"max_accuracy_drop": 0.05, "min_accuracy": 0.80, "drift_p_value": 0.01}


def test_decide_retrain_no_action_when_every_check_passes() -> None:
    d = checks.decide_retrain(accuracy=0.90, reference_accuracy=0.92, drift=_drift(), **RULES)
    assert not d.retrain and not d.drift_detected
    assert d.reason == "no threshold crossed"


def test_decide_retrain_on_accuracy_drop_beyond_margin() -> None:
    d = checks.decide_retrain(accuracy=0.86, reference_accuracy=0.92, drift=_drift(), **RULES)
    assert d.retrain and not d.drift_detected
    assert "held-out" in d.reason
    # Exactly at the margin is not a drop beyond it.
    d = checks.decide_retrain(accuracy=0.875, reference_accuracy=0.925, drift=_drift(), **RULES)
    assert not d.retrain


def test_decide_retrain_below_minimum_accuracy() -> None:
    d = checks.decide_retrain(accuracy=0.79, reference_accuracy=0.80, drift=_drift(), **RULES)
    assert d.retrain
    assert "minimum" in d.reason


def test_decide_retrain_on_significant_ks_drift_of_any_feature() -> None:
    d = checks.decide_retrain(
        accuracy=0.92, reference_accuracy=0.92, drift=_drift(p2=0.001), **RULES
    )
    assert d.retrain and d.drift_detected
    assert "feature2" in d.reason


def test_decide_retrain_psi_alone_is_reported_not_decisive() -> None:
    d = checks.decide_retrain(
        accuracy=0.92, reference_accuracy=0.92, drift=_drift(psi=0.5), psi_threshold=0.2, **RULES
    )
    assert not d.retrain
    assert "PSI" in d.reason


def test_decide_retrain_without_drift_report_uses_accuracy_only() -> None:
    assert not checks.decide_retrain(
        accuracy=0.92, reference_accuracy=0.92, drift=None, **RULES
    ).retrain


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "expected"),
    [
        (0.90, 0.80, 0.0, True),
        (0.80, 0.80, 0.0, True),  # a tie promotes with no margin
        (0.80, 0.80, 0.01, False),
        (0.79, 0.80, 0.0, False),
        (0.85, 0.80, 0.05, True),
        (0.84, 0.80, 0.05, False),
        (float("nan"), 0.8, 0.0, False),
    ],
)
def test_should_promote_requires_margin_over_champion_on_holdout(
    challenger: float, champion: float, margin: float, expected: bool
) -> None:
    assert (
        checks.should_promote(
            challenger_accuracy=challenger, champion_accuracy=champion, margin=margin
        )
        is expected
    )


def test_report_dict_round_trip() -> None:
    report = _drift(p1=0.001, psi=0.3)
    assert checks.report_from_dict(checks.report_to_dict(report)) == report
    assert checks.report_to_dict(None) is None
