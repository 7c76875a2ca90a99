"""POST /datasets and `ia-continu datasets import` on SQLite and PostgreSQL: labelled rows
stored as one 'upload' dataset, a bad value named by row and column with nothing stored,
and an uploaded dataset retrained like a generated one (real MLflow server)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from ia_continu.config import Settings
from ia_continu.db import datasets as db_datasets
from ia_continu.db.tables import dataset_samples, datasets
from ia_continu.ml.data import generate_dataset


@pytest.fixture
def settings(
    make_settings: Callable[..., Settings], database_url: str, mlflow_server: str
) -> Settings:
    # No background ML warm-up: each test's app would start one, and the threads left
    # running by this module's many short tests imported mlflow concurrently (a
    # partially initialised module broke the retrain test).
    return make_settings(
        database_url=database_url, mlflow_tracking_uri=mlflow_server, warm_up_ml=False
    )


def _rows(n: int, *, hour: int = 3, seed: int = 7) -> list[list[float | int]]:
    data = generate_dataset(n, hour=hour, seed=seed)
    return [
        [float(a), float(b), int(t)] for (a, b), t in zip(data.features, data.target, strict=True)
    ]


def _csv(rows: list[list[float | int]]) -> str:
    return "feature1,feature2,target\n" + "".join(f"{a!r},{b!r},{t}\n" for a, b, t in rows)


def _counts(client: Any) -> tuple[int, int]:
    engine = client.app.state.ia.engine
    with engine.connect() as conn:
        return (
            conn.execute(sa.select(sa.func.count()).select_from(datasets)).scalar_one(),
            conn.execute(sa.select(sa.func.count()).select_from(dataset_samples)).scalar_one(),
        )


def _stored(client: Any, generation_id: int) -> Any:
    dataset = db_datasets.load_dataset(client.app.state.ia.engine, generation_id)
    assert dataset is not None
    return dataset


def test_json_upload_is_stored_as_an_upload_dataset(client: Any) -> None:
    rows = _rows(300)
    r = client.post("/datasets", json={"rows": rows, "hour": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["samples_created"] == 300 and body["hour_generated"] == 5
    assert body["source"] == "upload"
    ones = sum(int(t) for _, _, t in rows)
    assert body["class_counts"] == {"0": 300 - ones, "1": ones}
    record = db_datasets.get_dataset_record(client.app.state.ia.engine, body["generation_id"])
    assert record is not None and record.source == "upload" and record.samples_count == 300
    stored = _stored(client, body["generation_id"])
    np.testing.assert_array_equal(stored.features, np.array(rows)[:, :2])  # exact floats
    np.testing.assert_array_equal(stored.target, np.array(rows)[:, 2].astype(int))
    # JSON Schema's integer: 1.0 is a target too (what the fuzzer sends as valid).
    rows[0][2] = float(rows[0][2])
    assert client.post("/datasets", json={"rows": rows}).status_code == 200


def test_csv_upload_is_stored_the_same_way(client: Any) -> None:
    rows = _rows(150, seed=8)
    r = client.post(
        "/datasets?hour=9",
        content=_csv(rows),
        headers={"content-type": "text/csv; charset=utf-8"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["samples_created"] == 150 and r.json()["source"] == "upload"
    assert r.json()["hour_generated"] == 9
    stored = _stored(client, r.json()["generation_id"])
    np.testing.assert_array_equal(stored.features, np.array(rows)[:, :2])


@pytest.mark.parametrize(
    ("row", "column", "value", "needle"),
    [
        (17, 1, "x", "valid number"),
        (0, 0, True, "valid number"),
        (99, 2, 2, "less than or equal to 1"),
        (42, 2, 0.5, "valid integer"),
        (150, 0, 1e400, "finite"),
    ],
)
def test_json_bad_value_is_422_naming_row_and_column_and_stores_nothing(
    client: Any, row: int, column: int, value: Any, needle: str
) -> None:
    rows: list[Any] = _rows(200)
    rows[row][column] = value
    before = _counts(client)
    raw = json.dumps({"rows": rows}).replace("Infinity", "1e400")
    r = client.post("/datasets", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    name = ("feature1", "feature2", "target")[column]
    assert error["loc"] == ["body", "rows", row, name]
    assert error["msg"].startswith(f"row {row + 1} (rows[{row}]), column {name}: ")
    assert needle in error["msg"]
    assert _counts(client) == before


def test_json_row_count_and_shape_are_checked(client: Any) -> None:
    before = _counts(client)
    r = client.post("/datasets", json={"rows": _rows(99)})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "rows"]
    rows: list[Any] = _rows(100)
    rows[5] = [0.1, 0.2]
    r = client.post("/datasets", json={"rows": rows})
    assert r.status_code == 422
    assert r.json()["detail"][0]["msg"].startswith("row 6 (rows[5])")
    assert _counts(client) == before


@pytest.mark.parametrize(
    ("line", "text", "expected"),
    [
        (12, "0.1,abc,1", "row 11 (line 12), column feature2: not a number: 'abc'"),
        (3, "nan,0.5,0", "row 2 (line 3), column feature1: must be a finite number"),
        (101, "0.1,0.2,3", "row 100 (line 101), column target: must be 0 or 1, got '3'"),
        (50, "0.1,0.2", "row 49 (line 50), column target: expected 3 values"),
    ],
)
def test_csv_bad_value_is_422_naming_row_line_and_column(
    client: Any, line: int, text: str, expected: str
) -> None:
    lines = _csv(_rows(150)).splitlines()
    lines[line - 1] = text
    before = _counts(client)
    r = client.post("/datasets", content="\n".join(lines), headers={"content-type": "text/csv"})
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["msg"].startswith(expected), error
    assert error["loc"][:3] == ["body", "rows", line - 2]
    assert _counts(client) == before


def test_csv_header_and_media_type_are_checked(client: Any) -> None:
    body = _csv(_rows(120)).replace("feature1,feature2,target", "x,y,label", 1)
    r = client.post("/datasets", content=body, headers={"content-type": "text/csv"})
    assert r.status_code == 422 and "header" in r.json()["detail"][0]["msg"]
    r = client.post("/datasets", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415


def test_ten_thousand_pretty_printed_rows_fit_the_upload_limit(client: Any) -> None:
    settings: Settings = client.app.state.ia.settings
    raw = json.dumps({"rows": _rows(10_000)}, indent=6).encode()
    assert len(raw) > settings.max_body_bytes  # over the general limit ...
    r = client.post("/datasets", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text[:300]  # ... but not over /datasets' own
    assert r.json()["samples_created"] == 10_000
    too_big = b" " * (settings.max_upload_bytes + 1)
    r = client.post("/datasets", content=too_big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    # The other routes keep the general limit.
    r = client.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_uploaded_dataset_retrains_like_a_generated_one(client: Any) -> None:
    r = client.post("/datasets", json={"rows": _rows(500, hour=3, seed=11)})
    generation_id = r.json()["generation_id"]
    client.post("/generate", json={"samples": 200, "seed": 1})  # newer: not the default
    r = client.post("/retrain", json={"generation_id": generation_id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["generation_id"] == generation_id
    assert body["training_samples"] + body["test_samples"] == 500
    assert body["accuracy"] > 0.8
    r = client.post("/predict", json={"features": [0.1, 0.2]})
    assert r.json()["model_version"] == body["model_version"]


def test_upload_needs_an_api_key_when_keys_are_configured(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app

    key = "k" * 32
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'k.db'}", api_keys=key)
    with TestClient(create_app(settings)) as c:
        assert c.post("/datasets", json={"rows": _rows(100)}).status_code == 401
        r = c.post("/datasets", json={"rows": _rows(100)}, headers={"X-API-Key": key})
        assert r.status_code == 200


# --- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, tmp_path: Path
) -> Callable[..., Any]:
    from ia_continu.cli import app
    from ia_continu.db.engine import create_db_engine

    monkeypatch.setenv("IA_DATABASE_URL", database_url)
    monkeypatch.setenv("IA_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("IA_TIMEZONE", "UTC")
    engine = create_db_engine(database_url)

    def run(*args: str) -> Any:
        result = CliRunner().invoke(app, ["datasets", "import", *args, "--no-progress"])
        result.engine = engine  # type: ignore[attr-defined]
        return result

    return run


def _all_samples(engine: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.count()).select_from(dataset_samples)).scalar_one()
        )


def test_cli_imports_a_big_csv_in_chunks_into_one_dataset(
    cli_env: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ia_continu.ml import labelled

    rows = _rows(30_000, seed=3)
    path = tmp_path / "big.csv"
    path.write_text(_csv(rows))
    chunk_rows: list[int] = []
    original = labelled.validate_arrays

    def spy(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        chunk_rows.append(len(out[1]))
        return out

    monkeypatch.setattr(labelled, "validate_arrays", spy)
    result = cli_env(str(path), "--chunk-size", "4000", "--hour", "7")
    assert result.exit_code == 0, result.output
    assert "samples=30000" in result.output and "source=upload" in result.output
    assert len(chunk_rows) > 3 and sum(chunk_rows) == 30_000  # streamed, not read whole
    generation_id = int(result.output.split("generation_id=")[1].split()[0])
    stored = db_datasets.load_dataset(result.engine, generation_id)
    assert stored is not None and stored.hour == 7
    np.testing.assert_array_equal(stored.features, np.array(rows)[:, :2])
    record = db_datasets.get_dataset_record(result.engine, generation_id)
    assert record is not None and record.source == "upload" and record.samples_count == 30_000


def test_cli_imports_parquet(cli_env: Callable[..., Any], tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = np.array(_rows(2_500, seed=4))
    path = tmp_path / "rows.parquet"
    table = pa.table(
        {"target": rows[:, 2].astype(np.int8), "feature1": rows[:, 0], "feature2": rows[:, 1]}
    )
    pq.write_table(table, path, row_group_size=1000)
    result = cli_env(str(path), "--chunk-size", "700")
    assert result.exit_code == 0, result.output
    generation_id = int(result.output.split("generation_id=")[1].split()[0])
    stored = db_datasets.load_dataset(result.engine, generation_id)
    assert stored is not None
    np.testing.assert_array_equal(stored.features, rows[:, :2])
    np.testing.assert_array_equal(stored.target, rows[:, 2].astype(int))


def test_cli_bad_row_is_one_line_naming_row_and_column_and_stores_nothing(
    cli_env: Callable[..., Any], tmp_path: Path
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = _csv(_rows(20_000, seed=5)).splitlines()
    lines[15_001] = "0.5,oops,1"  # data row 15001, far into a later chunk
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("\n".join(lines) + "\n")
    rows = np.array(_rows(1_000, seed=6))
    rows[321, 2] = 0.5
    bad_parquet = tmp_path / "bad.parquet"
    pq.write_table(
        pa.table({"feature1": rows[:, 0], "feature2": rows[:, 1], "target": rows[:, 2]}),
        bad_parquet,
    )
    for path, expected in (
        (bad_csv, "row 15001 (line 15002), column feature2: not a number: 'oops'"),
        (bad_parquet, "row 322, column target: must be 0 or 1, got 0.5"),
    ):
        result = cli_env(str(path), "--chunk-size", "3000")
        assert result.exit_code == 1
        lines_out = result.output.strip().splitlines()
        assert lines_out == [f"ia-continu datasets import: {path}: {expected}"]
        assert _all_samples(result.engine) == 0
        assert db_datasets.list_datasets(result.engine) == []
