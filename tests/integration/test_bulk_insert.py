"""Bulk sample insertion (multi-row statements on SQLite, COPY on PostgreSQL) stores
every row exactly, whatever the size relative to the statement batch."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from ia_continu.db import datasets as db_datasets
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.ml.data import generate_dataset


@pytest.mark.parametrize("samples", [1, 248, 249, 250, 498, 10_001])
def test_insert_dataset_round_trips_every_row(database_url: str, samples: int) -> None:
    engine = create_db_engine(database_url)
    upgrade_database(engine)
    try:
        first = generate_dataset(samples, hour=3, seed=samples)
        other = generate_dataset(300, hour=4, seed=1)
        rec = db_datasets.insert_dataset(engine, first, created_at=datetime.now(UTC))
        db_datasets.insert_dataset(engine, other, created_at=datetime.now(UTC))
        back = db_datasets.load_dataset(engine, rec.generation_id)
        assert back is not None
        assert back.hour == 3
        np.testing.assert_array_equal(back.features, first.features)  # bit-exact floats
        np.testing.assert_array_equal(back.target, first.target)
        assert db_datasets.count_samples(engine, rec.generation_id) == samples
    finally:
        engine.dispose()
