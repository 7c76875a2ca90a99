"""Synthetic labelled data and the seed's hour-parity drift rule.

The label depends on two *latent* features; what the model sees is the observed
features, where ``feature1 = latent1 - 0.5`` during odd hours. Because the label is
computed before the shift, the relation between observed features and label really
changes with the hour parity: a model fitted on one parity loses accuracy on the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

# Fixed linear rule on the latent features. With noise sd 0.3 the Bayes accuracy is
# 1 - arccos(|w| / sqrt(|w|^2 + sd^2)) / pi ~= 0.917.
WEIGHTS = (1.0, 0.5)
NOISE_SD = 0.3
ODD_HOUR_SHIFT = 0.5
MIN_SAMPLES = 100
MAX_SAMPLES = 10_000


@dataclass(frozen=True, slots=True)
class Dataset:
    """Observed features (n, 2) float64 and binary targets (n,) int64."""

    features: NDArray[np.float64]
    target: NDArray[np.int64]
    hour: int

    def __len__(self) -> int:
        return int(self.target.shape[0])

    @property
    def feature1(self) -> NDArray[np.float64]:
        return self.features[:, 0]

    @property
    def feature2(self) -> NDArray[np.float64]:
        return self.features[:, 1]


def is_drifted_hour(hour: int) -> bool:
    """The seed's rule: feature1 is shifted during odd hours."""
    return hour % 2 == 1


def generate_dataset(samples: int, *, hour: int, seed: int | None = None) -> Dataset:
    """Draw ``samples`` labelled rows as they would be observed at ``hour`` (0-23)."""
    if samples < 1:
        raise ValueError("samples must be positive")
    if not 0 <= hour <= 23:
        raise ValueError("hour must be in 0..23")
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((samples, 2))
    noise = rng.normal(0.0, NOISE_SD, samples)
    score = latent @ np.asarray(WEIGHTS) + noise
    target = (score > 0).astype(np.int64)
    features = latent  # shifted in place below; latent is not used afterwards
    if is_drifted_hour(hour):
        features[:, 0] -= ODD_HOUR_SHIFT
    return Dataset(features=features, target=target, hour=hour)


def iter_dataset_chunks(
    samples: int, *, hour: int, seed: int | None = None, chunk_size: int = 100_000
) -> Iterator[Dataset]:
    """Generate a large dataset chunk by chunk, with bounded memory.

    Chunks draw from independent child streams of one seed, so the result is
    reproducible for a given (samples, seed, chunk_size).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    seeds = np.random.SeedSequence(seed).spawn((samples + chunk_size - 1) // chunk_size)
    remaining = samples
    for child in seeds:
        n = min(chunk_size, remaining)
        child_seed = int(child.generate_state(1, dtype=np.uint64)[0])
        yield generate_dataset(n, hour=hour, seed=child_seed)
        remaining -= n
