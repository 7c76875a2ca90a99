"""`ia-continu generate`: a dataset of any size, streamed in chunks into one generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from ia_continu.db import datasets as db_datasets
from ia_continu.db.engine import create_db_engine
from ia_continu.ml.data import iter_dataset_chunks


def test_cli_generate_streams_chunks_into_one_generation(tmp_path: Path) -> None:
    from ia_continu.cli import app

    env = {"IA_DATA_DIR": str(tmp_path / "d"), "IA_DATABASE_URL": ""}
    args = ["generate", "--samples", "2500", "--chunk-size", "1000", "--seed", "3"]
    result = CliRunner().invoke(app, [*args, "--hour", "5", "--no-progress"], env=env)
    assert result.exit_code == 0, result.output
    assert "samples=2500" in result.output and "peak RSS" in result.output

    engine = create_db_engine(f"sqlite:///{tmp_path / 'd' / 'ia_continu_solution.db'}")
    gid = db_datasets.get_latest_generation_id(engine)
    assert gid is not None
    record = db_datasets.get_dataset_record(engine, gid)
    assert record is not None
    assert (record.samples_count, record.hour_generated, record.source) == (2500, 5, "cli")
    assert record.seed == 3
    stored = db_datasets.load_dataset(engine, gid)
    assert stored is not None and len(stored) == 2500
    # Exactly the rows of the chunked generator, in order (three chunks: 1000, 1000, 500).
    chunks = list(iter_dataset_chunks(2500, hour=5, seed=3, chunk_size=1000))
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    np.testing.assert_array_equal(stored.features, np.concatenate([c.features for c in chunks]))
    np.testing.assert_array_equal(stored.target, np.concatenate([c.target for c in chunks]))
    engine.dispose()


def test_cli_generate_rejects_non_positive_samples(tmp_path: Path) -> None:
    from ia_continu.cli import app

    env = {"IA_DATA_DIR": str(tmp_path / "d"), "IA_DATABASE_URL": ""}
    result = CliRunner().invoke(app, ["generate", "--samples", "0"], env=env)
    assert result.exit_code != 0
    assert "samples" in result.output
