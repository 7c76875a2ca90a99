from __future__ import annotations

import numpy as np
import pytest

from ia_continu.ml.data import (
    NOISE_SD,
    ODD_HOUR_SHIFT,
    WEIGHTS,
    generate_dataset,
    is_drifted_hour,
    iter_dataset_chunks,
)


def test_generate_dataset_shapes_and_binary_target() -> None:
    ds = generate_dataset(1234, hour=4, seed=1)
    assert ds.features.shape == (1234, 2)
    assert ds.target.shape == (1234,)
    assert set(np.unique(ds.target)) == {0, 1}
    assert ds.features.dtype == np.float64


def test_generate_dataset_reproducible_by_seed() -> None:
    a = generate_dataset(500, hour=3, seed=42)
    b = generate_dataset(500, hour=3, seed=42)
    c = generate_dataset(500, hour=3, seed=43)
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.target, b.target)
    assert not np.array_equal(a.features, c.features)


def test_generate_dataset_odd_hour_shifts_only_feature1() -> None:
    even = generate_dataset(1000, hour=10, seed=7)
    odd = generate_dataset(1000, hour=11, seed=7)
    np.testing.assert_allclose(odd.feature1, even.feature1 - ODD_HOUR_SHIFT)
    np.testing.assert_array_equal(odd.feature2, even.feature2)
    # The label is computed on latent features, before the shift.
    np.testing.assert_array_equal(odd.target, even.target)


@pytest.mark.parametrize(("hour", "drifted"), [(0, False), (1, True), (2, False), (23, True)])
def test_is_drifted_hour_follows_parity(hour: int, drifted: bool) -> None:
    assert is_drifted_hour(hour) is drifted


def test_generate_dataset_label_relation_is_learnable_but_noisy() -> None:
    ds = generate_dataset(200_000, hour=0, seed=0)
    rule = (ds.features @ np.asarray(WEIGHTS) > 0).astype(int)
    bayes = float(np.mean(rule == ds.target))
    assert 0.90 <= bayes <= 0.95, bayes
    expected = (
        1 - np.arccos(np.linalg.norm(WEIGHTS) / np.hypot(np.linalg.norm(WEIGHTS), NOISE_SD)) / np.pi
    )
    assert bayes == pytest.approx(expected, abs=0.005)
    assert 0.45 < ds.target.mean() < 0.55


def test_generate_dataset_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="hour"):
        generate_dataset(100, hour=24)
    with pytest.raises(ValueError, match="samples"):
        generate_dataset(0, hour=1)


def test_iter_dataset_chunks_counts_and_reproducible() -> None:
    chunks = list(iter_dataset_chunks(25_001, hour=1, seed=5, chunk_size=10_000))
    assert [len(c) for c in chunks] == [10_000, 10_000, 5_001]
    again = list(iter_dataset_chunks(25_001, hour=1, seed=5, chunk_size=10_000))
    for a, b in zip(chunks, again, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
