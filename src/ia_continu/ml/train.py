"""Fitting a LogisticRegression with metrics measured on held-out rows only."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ia_continu.ml.data import Dataset
from ia_continu.ml.evaluate import Metrics, compute_metrics


class TrainingDataError(ValueError):
    """The data cannot train a binary classifier (one class only, too few rows)."""


@dataclass(frozen=True, slots=True)
class Hyperparameters:
    C: float = 1.0
    solver: str = "lbfgs"
    max_iter: int = 1000


@dataclass(frozen=True, slots=True)
class TrainingResult:
    estimator: Any  # sklearn LogisticRegression
    metrics: Metrics  # on the held-out rows
    training_samples: int
    test_samples: int
    hyperparameters: Hyperparameters
    x_test: NDArray[np.float64]
    y_test: NDArray[np.int64]
    # Seconds spent in "fit" (split + fit) and "metrics" (held-out predictions + scores).
    timings: dict[str, float] = field(default_factory=dict)


def train_model(
    dataset: Dataset,
    *,
    hyperparameters: Hyperparameters,
    test_size: float = 0.2,
    random_state: int = 42,
) -> TrainingResult:
    """Stratified split, fit on the training part, measure on the held-out part."""
    from ia_continu.ml.warm_gate import wait_until_warm

    wait_until_warm()  # never import sklearn while the warm-up thread does
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    classes, counts = np.unique(dataset.target, return_counts=True)
    if classes.size < 2:
        raise TrainingDataError(
            f"the dataset has a single class ({int(classes[0]) if classes.size else 'none'}); "
            "a classifier needs both 0 and 1"
        )
    if counts.min() < 2:
        raise TrainingDataError("each class needs at least 2 rows for a stratified split")
    started = time.perf_counter()
    x_train, x_test, y_train, y_test = train_test_split(
        dataset.features,
        dataset.target,
        test_size=test_size,
        stratify=dataset.target,
        random_state=random_state,
    )
    estimator = LogisticRegression(
        C=hyperparameters.C, solver=hyperparameters.solver, max_iter=hyperparameters.max_iter
    )
    estimator.fit(x_train, y_train)
    fitted = time.perf_counter()
    metrics = compute_metrics(y_test, estimator.predict(x_test))
    timings = {"fit": fitted - started, "metrics": time.perf_counter() - fitted}
    return TrainingResult(
        estimator=estimator,
        metrics=metrics,
        training_samples=int(y_train.shape[0]),
        test_samples=int(y_test.shape[0]),
        hyperparameters=hyperparameters,
        x_test=x_test,
        y_test=y_test,
        timings=timings,
    )


def warm_up_training() -> TrainingResult:
    """Import scikit-learn and run one tiny fit (~2 s of imports and lazy
    initialisation otherwise paid by the first retrain). See registry/warmup.py."""
    from ia_continu.ml.data import generate_dataset

    return train_model(generate_dataset(200, hour=0, seed=0), hyperparameters=Hyperparameters())
