"""``ia-continu generate``, ``retrain`` and ``datasets import``: data in, models out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ia_continu.cli.app import _settings, app


@app.command()
def retrain(
    generation_id: Annotated[int | None, typer.Option(help="default: latest dataset")] = None,
) -> None:
    """Retrain on a stored dataset and make the model the champion."""
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.services import lifecycle

    settings = _settings()
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    outcome = lifecycle.retrain(settings=settings, engine=engine, generation_id=generation_id)
    m = outcome.result.metrics
    typer.echo(
        f"{outcome.record.version}: accuracy={m.accuracy:.4f} f1={m.f1_score:.4f} "
        f"trained on {outcome.record.training_samples} rows of generation {outcome.generation_id}"
    )


@app.command()
def generate(
    samples: Annotated[
        int, typer.Option(min=1, max=100_000_000, help="rows to generate (any size: streamed)")
    ] = 1000,
    hour: Annotated[
        int | None, typer.Option(min=0, max=23, help="hour for the drift rule (default: now)")
    ] = None,
    seed: Annotated[int | None, typer.Option(min=0, help="for reproducible data")] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="rows generated and written at once")] = (
        100_000
    ),
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Generate a labelled dataset of any size into the database, chunk by chunk.

    Memory stays bounded by the chunk size; the dataset is stored in one transaction
    (visible whole or not at all) and can be retrained on like any other.
    """
    import resource
    import time
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ia_continu.db import datasets as db_datasets
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.ml.data import iter_dataset_chunks

    settings = _settings()
    now = datetime.now(UTC)
    if hour is None:
        tz = ZoneInfo(settings.timezone) if settings.timezone else None
        hour = now.astimezone(tz).hour
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    started = time.perf_counter()
    columns = (
        TextColumn("generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("rows", total=samples)
        record = db_datasets.insert_dataset_chunks(
            engine,
            iter_dataset_chunks(samples, hour=hour, seed=seed, chunk_size=chunk_size),
            samples_count=samples,
            hour=hour,
            created_at=now,
            seed=seed,
            source="cli",
            on_chunk=lambda n: bar.advance(task, n),
        )
    elapsed = time.perf_counter() - started
    engine.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    typer.echo(
        f"generation_id={record.generation_id} samples={record.samples_count} "
        f"hour={hour} in {elapsed:.2f} s ({record.samples_count / elapsed:,.0f} rows/s), "
        f"peak RSS {peak_mb:.0f} MB"
    )


datasets_app = typer.Typer(help="Labelled datasets.", no_args_is_help=True)


app.add_typer(datasets_app, name="datasets")


@datasets_app.command("import")
def datasets_import(
    file: Annotated[Path, typer.Argument(help="CSV (header feature1,feature2,target) or Parquet")],
    file_format: Annotated[
        str, typer.Option("--format", help="auto (by extension), csv or parquet")
    ] = "auto",
    hour: Annotated[
        int | None, typer.Option(min=0, max=23, help="hour the rows were observed (default: now)")
    ] = None,
    chunk_size: Annotated[int, typer.Option(min=1, help="rows read and written at once")] = (
        100_000
    ),
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Import labelled rows from a file of any size as one dataset (source "upload"),
    streamed in chunks into one transaction: a bad value stops the import, names its row
    and column, and nothing is stored. /retrain trains on it like a generated dataset."""
    import time
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ia_continu.db import datasets as db_datasets
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.ml import labelled
    from ia_continu.ml.data import MIN_SAMPLES, Dataset

    def fail(message: str) -> NoReturn:
        typer.echo(f"ia-continu datasets import: {file}: {message}", err=True)
        raise typer.Exit(1)

    kind = file_format.lower()
    if kind == "auto":
        kind = "parquet" if file.suffix.lower() in (".parquet", ".pq") else "csv"
    if kind not in ("csv", "parquet"):
        fail(f"unknown format {file_format!r}: csv or parquet")
    if not file.is_file():
        fail("no such file")
    settings = _settings()
    now = datetime.now(UTC)
    if hour is None:
        tz = ZoneInfo(settings.timezone) if settings.timezone else None
        hour = now.astimezone(tz).hour
    observed_hour = hour
    total: int | None = None
    try:
        if kind == "parquet":
            total = labelled.count_parquet_rows(file)
            chunks = labelled.iter_parquet_file(file, chunk_size=chunk_size)
        else:
            chunks = labelled.iter_csv_file(file, chunk_size=chunk_size)
    except (OSError, ValueError) as exc:
        fail(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError) else str(exc))

    def datasets() -> Any:
        written = 0
        for features, target in chunks:
            written += len(target)
            yield Dataset(features=features, target=target, hour=observed_hour)
        if written < MIN_SAMPLES:
            raise labelled.LabelledRowError(f"{written} rows: at least {MIN_SAMPLES} are needed")

    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    started = time.perf_counter()
    columns = (
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task("rows", total=total)
            record = db_datasets.insert_dataset_chunks(
                engine,
                datasets(),
                samples_count=total,
                hour=observed_hour,
                created_at=now,
                source="upload",
                on_chunk=lambda n: bar.advance(task, n),
            )
    except (labelled.LabelledRowError, UnicodeDecodeError, OSError) as exc:
        fail(str(exc) if isinstance(exc, labelled.LabelledRowError) else repr(exc))
    except ValueError as exc:  # pyarrow: not a Parquet file, corrupt page, ...
        fail(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    finally:
        engine.dispose()
    elapsed = time.perf_counter() - started
    typer.echo(
        f"generation_id={record.generation_id} samples={record.samples_count} "
        f"hour={observed_hour} source=upload in {elapsed:.2f} s "
        f"({record.samples_count / max(elapsed, 1e-9):,.0f} rows/s)"
    )
