"""Property tests (hypothesis): data generation and the fast prediction path."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ia_continu.ml.data import (
    MAX_SAMPLES,
    MIN_SAMPLES,
    ODD_HOUR_SHIFT,
    generate_dataset,
    is_drifted_hour,
)
from ia_continu.ml.predictor import LinearModel
from ia_continu.ml.train import Hyperparameters, train_model

# The fixture is read-only: sharing it between examples is safe.
shared_fixture = [HealthCheck.function_scoped_fixture]
samples = st.integers(MIN_SAMPLES, MAX_SAMPLES)
hours = st.integers(0, 23)
seeds = st.integers(0, 2**63 - 1)
# Any finite float, with extra weight near the float maximum where products overflow.
finite = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(1e300, 1.7976931348623157e308).flatmap(lambda v: st.sampled_from([v, -v])),
)
# Values whose products with the coefficients cannot overflow: sklearn's own arithmetic
# is only defined there (it answers NaN or the wrong class near 1e308).
moderate = st.floats(-1e150, 1e150, allow_nan=False)
row_lists = st.lists(st.tuples(moderate, moderate), min_size=1, max_size=50)


# --- generation ---------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(n=samples, hour=hours, seed=seeds)
def test_generate_dataset_has_requested_count_and_binary_labels(
    n: int, hour: int, seed: int
) -> None:
    ds = generate_dataset(n, hour=hour, seed=seed)
    assert len(ds) == n
    assert ds.features.shape == (n, 2) and ds.features.dtype == np.float64
    assert ds.hour == hour
    assert set(np.unique(ds.target).tolist()) <= {0, 1}
    assert np.isfinite(ds.features).all()


@settings(max_examples=60, deadline=None)
@given(n=samples, hour=hours, seed=seeds)
def test_generate_dataset_is_deterministic_by_seed(n: int, hour: int, seed: int) -> None:
    a = generate_dataset(n, hour=hour, seed=seed)
    b = generate_dataset(n, hour=hour, seed=seed)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.target, b.target)


@settings(max_examples=60, deadline=None)
@given(n=samples, seed=seeds, even=st.integers(0, 11), odd=st.integers(0, 11))
def test_generate_dataset_shifts_feature1_in_odd_hours_only(
    n: int, seed: int, even: int, odd: int
) -> None:
    even_hour, odd_hour = 2 * even, 2 * odd + 1
    assert not is_drifted_hour(even_hour) and is_drifted_hour(odd_hour)
    base = generate_dataset(n, hour=even_hour, seed=seed)
    drifted = generate_dataset(n, hour=odd_hour, seed=seed)
    # Same draws, feature1 observed 0.5 lower; feature2 and the labels untouched.
    np.testing.assert_allclose(drifted.feature1, base.feature1 - ODD_HOUR_SHIFT, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(drifted.feature2, base.feature2)
    np.testing.assert_array_equal(drifted.target, base.target)
    # Any two even hours (or two odd hours) give identical data for one seed.
    np.testing.assert_array_equal(
        generate_dataset(n, hour=(even_hour + 2) % 24, seed=seed).features, base.features
    )


@settings(max_examples=30, deadline=None)
@given(n=samples, hour=hours, a=seeds, b=seeds)
def test_generate_dataset_differs_between_seeds(n: int, hour: int, a: int, b: int) -> None:
    if a == b:
        return
    x = generate_dataset(n, hour=hour, seed=a)
    y = generate_dataset(n, hour=hour, seed=b)
    assert not np.array_equal(x.features, y.features)


# --- prediction -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_models() -> list[tuple[Any, LinearModel]]:
    """A few real fits (both parities, several seeds): coefficients of different sizes."""
    out = []
    for i, (hour, seed) in enumerate([(0, 1), (1, 2), (4, 3), (7, 4)]):
        result = train_model(
            generate_dataset(300 + 200 * i, hour=hour, seed=seed),
            hyperparameters=Hyperparameters(C=[1.0, 0.01, 100.0, 1.0][i]),
        )
        out.append((result.estimator, LinearModel.from_estimator(result.estimator, version="v1")))
    return out


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(which=st.integers(0, 3), x1=moderate, x2=moderate)
def test_predict_one_equals_sklearn_predict_proba(
    fitted_models: list[tuple[Any, LinearModel]], which: int, x1: float, x2: float
) -> None:
    estimator, model = fitted_models[which]
    proba = estimator.predict_proba(np.array([[x1, x2]]))[0]
    expected = int(estimator.predict(np.array([[x1, x2]]))[0])
    prediction, confidence = model.predict_one(x1, x2)
    assert confidence == pytest.approx(float(proba.max()), rel=0, abs=1e-12)
    if abs(proba[1] - 0.5) > 1e-12:  # exactly on the boundary, rounding may pick either
        assert prediction == expected


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    which=st.integers(0, 3), rows=st.lists(st.tuples(moderate, moderate), min_size=1, max_size=50)
)
def test_predict_batch_equals_sklearn_predict_proba(
    fitted_models: list[tuple[Any, LinearModel]], which: int, rows: list[tuple[float, float]]
) -> None:
    estimator, model = fitted_models[which]
    x = np.array(rows, dtype=np.float64)
    np.testing.assert_allclose(
        model.predict_proba(x), estimator.predict_proba(x)[:, 1], rtol=0, atol=1e-12
    )
    classes, confidence = model.predict_batch(x)
    for (a, b), cls, conf in zip(rows, classes.tolist(), confidence.tolist(), strict=True):
        assert (cls, conf) == pytest.approx(model.predict_one(a, b), abs=1e-12)


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(which=st.integers(0, 3), x1=finite, x2=finite)
def test_predict_confidence_in_half_to_one_for_any_finite_input(
    fitted_models: list[tuple[Any, LinearModel]], which: int, x1: float, x2: float
) -> None:
    _, model = fitted_models[which]
    prediction, confidence = model.predict_one(x1, x2)
    assert prediction in (0, 1)
    assert 0.5 <= confidence <= 1.0  # also false for NaN
    classes, confidences = model.predict_batch(np.array([[x1, x2]]))
    assert (int(classes[0]), float(confidences[0])) == (prediction, confidence)
    # The class is the sign of the exact score, even where float products overflow.
    c1, c2 = model.coef
    exact = Fraction(c1) * Fraction(x1) + Fraction(c2) * Fraction(x2) + Fraction(model.intercept)
    if abs(exact) > 1e-9:
        assert prediction == (1 if exact > 0 else 0)


def test_predict_near_float_max_uses_exact_sign_not_nan() -> None:
    model = LinearModel(version="v1", coef=(2.0, 2.0), intercept=0.0)
    # Both products overflow: in floats the score is inf - inf = NaN (was a null
    # confidence in the JSON answer); the exact score is +-1e308.
    assert model.predict_one(1.5e308, -1e308) == (1, 1.0)
    assert model.predict_one(-1.5e308, 1e308) == (0, 1.0)
    classes, confidence = model.predict_batch(np.array([[1.5e308, -1e308], [-1.5e308, 1e308]]))
    assert classes.tolist() == [1, 0] and confidence.tolist() == [1.0, 1.0]
