from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from ia_continu.ml.data import Dataset, generate_dataset
from ia_continu.ml.evaluate import compute_metrics
from ia_continu.ml.predictor import LinearModel
from ia_continu.ml.train import Hyperparameters, TrainingDataError, train_model


def test_train_model_measures_on_held_out_rows_only() -> None:
    ds = generate_dataset(1000, hour=2, seed=3)
    result = train_model(ds, hyperparameters=Hyperparameters(), test_size=0.2, random_state=0)
    assert result.training_samples == 800
    assert result.test_samples == 200
    expected = skm.accuracy_score(result.y_test, result.estimator.predict(result.x_test))
    assert result.metrics.accuracy == pytest.approx(expected)
    # Stratified: the held-out class balance matches the whole dataset's.
    assert abs(result.y_test.mean() - ds.target.mean()) < 0.01
    assert 0.85 < result.metrics.accuracy <= 1.0


def test_train_model_uses_hyperparameters() -> None:
    ds = generate_dataset(500, hour=2, seed=3)
    hp = Hyperparameters(C=0.01, solver="liblinear", max_iter=50)
    result = train_model(ds, hyperparameters=hp)
    assert result.estimator.C == 0.01
    assert result.estimator.solver == "liblinear"
    assert result.estimator.max_iter == 50


def test_train_model_rejects_one_class() -> None:
    ds = generate_dataset(300, hour=2, seed=3)
    one_class = Dataset(features=ds.features, target=np.ones_like(ds.target), hour=2)
    with pytest.raises(TrainingDataError, match="single class"):
        train_model(one_class, hyperparameters=Hyperparameters())


def test_compute_metrics_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        y_true = rng.integers(0, 2, 200)
        y_pred = rng.integers(0, 2, 200)
        m = compute_metrics(y_true, y_pred)
        assert m.accuracy == pytest.approx(skm.accuracy_score(y_true, y_pred))
        assert m.precision == pytest.approx(skm.precision_score(y_true, y_pred, zero_division=0))
        assert m.recall == pytest.approx(skm.recall_score(y_true, y_pred, zero_division=0))
        assert m.f1_score == pytest.approx(skm.f1_score(y_true, y_pred, zero_division=0))
    zeros = np.zeros(10, dtype=int)
    assert compute_metrics(zeros, zeros).precision == 0.0


def test_drift_costs_an_even_trained_model_at_least_five_points() -> None:
    """The whole point of the system: odd-hour data really differs from even-hour data."""
    train = generate_dataset(5000, hour=8, seed=11)
    result = train_model(train, hyperparameters=Hyperparameters())
    model = LinearModel.from_estimator(result.estimator, version="v1")
    even = generate_dataset(20_000, hour=10, seed=12)
    odd = generate_dataset(20_000, hour=11, seed=13)
    acc_even = compute_metrics(even.target, model.predict_batch(even.features)[0]).accuracy
    acc_odd = compute_metrics(odd.target, model.predict_batch(odd.features)[0]).accuracy
    assert acc_even - acc_odd >= 0.05, (acc_even, acc_odd)
