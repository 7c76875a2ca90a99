from __future__ import annotations

import numpy as np
import pytest

from ia_continu.ml.data import generate_dataset
from ia_continu.ml.predictor import LinearModel
from ia_continu.ml.train import Hyperparameters, train_model


@pytest.fixture(scope="module")
def fitted() -> tuple[object, LinearModel]:
    result = train_model(generate_dataset(2000, hour=0, seed=1), hyperparameters=Hyperparameters())
    return result.estimator, LinearModel.from_estimator(result.estimator, version="v7")


def test_linear_model_matches_sklearn_predict_proba(fitted: tuple[object, LinearModel]) -> None:
    estimator, model = fitted
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 3, (20_000, 2)), rng.normal(0, 50, (2_000, 2))])
    proba = estimator.predict_proba(x)  # type: ignore[attr-defined]
    expected_class = estimator.predict(x)  # type: ignore[attr-defined]
    np.testing.assert_allclose(model.predict_proba(x), proba[:, 1], rtol=0, atol=1e-12)
    classes, confidence = model.predict_batch(x)
    np.testing.assert_array_equal(classes, expected_class)
    np.testing.assert_allclose(confidence, proba.max(axis=1), rtol=0, atol=1e-12)
    for row, p, c in zip(x[:3000], proba[:3000], expected_class[:3000], strict=True):
        pred, conf = model.predict_one(float(row[0]), float(row[1]))
        assert pred == c
        assert abs(conf - p.max()) <= 1e-12


def test_linear_model_json_round_trip(fitted: tuple[object, LinearModel]) -> None:
    _, model = fitted
    assert LinearModel.from_json(model.to_json()) == model


def test_linear_model_confidence_in_half_to_one(fitted: tuple[object, LinearModel]) -> None:
    _, model = fitted
    for x1, x2 in [(0.0, 0.0), (1e6, -1e6), (-1e300, 1e300), (3.0, 4.0)]:
        pred, conf = model.predict_one(x1, x2)
        assert pred in (0, 1)
        assert 0.5 <= conf <= 1.0
