"""Classification metrics in numpy (no scikit-learn import on the API path).

They match ``sklearn.metrics`` with ``zero_division=0`` for binary targets (tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True, slots=True)
class Metrics:
    accuracy: float
    precision: float
    recall: float
    f1_score: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def compute_metrics(y_true: NDArray[np.integer], y_pred: NDArray[np.integer]) -> Metrics:
    """Accuracy, precision, recall and F1 of the positive class (1)."""
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred differ in shape")
    if y_true.size == 0:
        raise ValueError("no samples to evaluate")
    tp = int(np.count_nonzero((y_pred == 1) & (y_true == 1)))
    fp = int(np.count_nonzero((y_pred == 1) & (y_true == 0)))
    fn = int(np.count_nonzero((y_pred == 0) & (y_true == 1)))
    accuracy = float(np.count_nonzero(y_pred == y_true)) / y_true.size
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return Metrics(accuracy=accuracy, precision=precision, recall=recall, f1_score=f1)
