"""The ``ia-continu`` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from ia_continu.config import Settings, get_settings

app = typer.Typer(
    name="ia-continu",
    help="Continuous-learning ML service: serve, generate, retrain, monitor.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
registry_app = typer.Typer(help="MLflow model registry.", no_args_is_help=True)
app.add_typer(registry_app, name="registry")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _settings(**overrides: object) -> Settings:
    clean = {k: v for k, v in overrides.items() if v is not None}
    return get_settings(**clean)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (IA_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (IA_PORT)")] = None,
    workers: Annotated[int | None, typer.Option(help="worker processes (IA_WORKERS)")] = None,
) -> None:
    """Run the HTTP API with uvicorn."""
    import uvicorn

    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database

    settings = _settings(host=host, port=port, workers=workers)
    _setup_logging(settings.log_level)
    metrics_dir = _prepare_serving(settings)
    try:
        _migrate_or_exit(settings, create_db_engine, upgrade_database)
        _run_uvicorn(uvicorn, settings)
    finally:  # the multiprocess files are memory on a tmpfs: give it back
        from ia_continu.api.metrics import remove_multiprocess_dir

        remove_multiprocess_dir(metrics_dir)


def _migrate_or_exit(settings: Settings, create_db_engine: Any, upgrade_database: Any) -> None:
    """Migrate once here so that N workers do not all race to do it; a database that
    cannot be written is one line and exit 1, not a traceback."""
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_db_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine)
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        typer.echo(
            f"ia-continu serve: cannot migrate the database "
            f"{engine.url.render_as_string(hide_password=True)}: {cause}",
            err=True,
        )
        raise typer.Exit(1) from None
    finally:
        engine.dispose()


def _run_uvicorn(uvicorn: Any, settings: Settings) -> None:
    uvicorn.run(
        "ia_continu.api.asgi:create_app_from_env",
        # Header size, slow clients and connection cap (api/server.py); a partial of a
        # module-level class survives the pickling of the config to spawned workers.
        http=_guarded_http_protocol(settings),
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        loop="uvloop",
        access_log=False,
        timeout_graceful_shutdown=30,
        timeout_keep_alive=settings.keep_alive_timeout,
        env_file=None,
    )


def _guarded_http_protocol(settings: Settings) -> Any:
    from functools import partial

    from ia_continu.api.server import GuardedHttpToolsProtocol, HttpLimits

    limits = HttpLimits(
        max_header_bytes=settings.max_header_bytes,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        max_connections=settings.max_connections,
    )
    return partial(GuardedHttpToolsProtocol, limits=limits)


def _prepare_serving(settings: Settings) -> Path:
    """Security guard, writable data directory and metrics directory, before any worker
    starts. Returns the metrics directory."""
    import os

    from ia_continu.api.metrics import prepare_multiprocess_dir
    from ia_continu.api.security import SecurityConfigError, check_startup_security

    try:
        check_startup_security(settings)
    except SecurityConfigError as exc:
        typer.echo(f"ia-continu serve: {exc}", err=True)
        raise typer.Exit(2) from None
    _check_data_dirs_or_exit("serve", settings)
    # Workers rebuild their settings from the environment: give them the options'
    # values, so their own start-up check sees the address really bound.
    os.environ["IA_HOST"] = settings.host
    os.environ["IA_PORT"] = str(settings.port)
    try:
        return prepare_multiprocess_dir(settings)
    except OSError as exc:
        from ia_continu.ops.disk import DataDirError

        path = Path(exc.filename) if exc.filename else settings.data_dir
        typer.echo(f"ia-continu serve: metrics: {DataDirError(path, exc)}", err=True)
        raise typer.Exit(1) from None


def _check_data_dirs_or_exit(command: str, settings: Settings) -> None:
    """A read-only or full data directory: one line naming the path and errno, exit 1."""
    from ia_continu.ops.disk import DataDirError, check_data_dirs

    try:
        check_data_dirs(settings)
    except DataDirError as exc:
        typer.echo(f"ia-continu {command}: data directory: {exc}", err=True)
        raise typer.Exit(1) from None


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply the schema migrations (also done automatically at start)."""
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import current_revision, upgrade_database

    settings = _settings()
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine, revision=revision)
    typer.echo(f"database at revision {current_revision(engine)}")
    engine.dispose()


@registry_app.command("reconcile")
def registry_reconcile(
    dry_run: Annotated[bool, typer.Option(help="print what would change, change nothing")] = False,
    grace: Annotated[
        float | None,
        typer.Option(help="seconds a retrain may take (IA_MLFLOW_RECONCILE_GRACE)", min=0),
    ] = None,
) -> None:
    """Repair registry debris of failed retrains: versions without a models row tagged
    ia_continu.orphan=true, stale RUNNING runs marked FAILED, aliases on the active row's
    version (docs/mlflow.md). Prints every change."""
    from ia_continu.db.engine import create_db_engine
    from ia_continu.registry.core import RegistryUnavailableError
    from ia_continu.services.reconcile import reconcile_registry

    settings = _settings()
    engine = create_db_engine(settings.resolved_database_url)
    try:
        report = reconcile_registry(
            settings=settings, engine=engine, dry_run=dry_run, grace_seconds=grace
        )
    except RegistryUnavailableError as exc:
        typer.echo(f"ia-continu registry reconcile: {exc}", err=True)
        raise typer.Exit(1) from None
    finally:
        engine.dispose()
    verb = "would change" if dry_run else "changed"
    for change in report.changes:
        typer.echo(f"{'would ' if dry_run else ''}{change}")
    typer.echo(
        f"{report.versions_checked} version(s) and {report.runs_checked} running run(s) "
        f"checked; {verb} {len(report.changes)} thing(s)"
    )


@db_app.command("prune")
def db_prune(
    older_than: Annotated[
        str | None,
        typer.Option(
            help="remove predictions older than this: 7d, 12h, 90m "
            "(default: IA_PREDICTION_RETENTION_DAYS)"
        ),
    ] = None,
    keep_rows: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="then keep at most this many (default: IA_PREDICTION_MAX_ROWS; 0 = no limit)",
        ),
    ] = None,
    datasets_older_than: Annotated[
        str | None,
        typer.Option(
            help="also remove unused datasets older than this (default: IA_DATASET_RETENTION_DAYS)"
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="count what would go, change nothing")] = False,
    vacuum: Annotated[
        bool, typer.Option(help="give the space back (SQLite VACUUM; PostgreSQL VACUUM ANALYZE)")
    ] = False,
) -> None:
    """Apply the retention limits now and print what was removed (or would be)."""
    from dataclasses import replace
    from datetime import UTC, datetime

    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.db.retention import RetentionPolicy, parse_duration, prune

    settings = _settings()
    policy = RetentionPolicy.from_settings(settings)
    try:
        if older_than is not None:
            age = parse_duration(older_than)
            policy = replace(policy, older_than=age if age.total_seconds() > 0 else None)
        if datasets_older_than is not None:
            age = parse_duration(datasets_older_than)
            policy = replace(policy, datasets_older_than=age if age.total_seconds() > 0 else None)
    except ValueError as exc:
        typer.echo(f"ia-continu db prune: {exc}", err=True)
        raise typer.Exit(2) from None
    if keep_rows is not None:
        policy = replace(policy, max_rows=keep_rows or None)
    engine = create_db_engine(
        settings.resolved_database_url, busy_timeout_ms=settings.db_busy_timeout_ms
    )
    try:
        upgrade_database(engine)
        report = prune(
            engine,
            policy,
            now=datetime.now(UTC),
            dry_run=dry_run,
            batch_size=settings.prune_batch_size,
            vacuum=vacuum and not dry_run,
            wait_for_lock=True,
        )
    finally:
        engine.dispose()
    typer.echo(report.describe())


@db_app.command("backup")
def db_backup(
    file: Annotated[Path, typer.Argument(help="where to write the copy")],
) -> None:
    """Write a consistent copy of the database while the API serves (SQLite online
    backup; PostgreSQL: pg_dump). Model files are rebuilt from it at restore."""
    from ia_continu.db.backup import BackupError, backup_database

    settings = _settings()
    try:
        size = backup_database(settings.resolved_database_url, file)
    except BackupError as exc:
        typer.echo(f"ia-continu db backup: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"backup written to {file} ({size / 1e6:.1f} MB)")


@db_app.command("restore")
def db_restore(
    file: Annotated[Path, typer.Argument(help="a file written by `ia-continu db backup`")],
    force: Annotated[
        bool, typer.Option(help="overwrite a non-empty data directory or database")
    ] = False,
) -> None:
    """Restore a backup into an empty instance (stop its API first) and rebuild the
    model files from the restored models table."""
    from ia_continu.db.backup import BackupError, restore_database

    settings = _settings()
    try:
        summary = restore_database(
            settings.resolved_database_url, file, data_dir=settings.data_dir, force=force
        )
    except BackupError as exc:
        typer.echo(f"ia-continu db restore: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(summary.describe())


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


@app.command()
def up(
    with_prefect: Annotated[bool, typer.Option(help="also start Prefect")] = True,
    mlflow_port: int = 5000,
    mlflow_dir: Path = Path("mlflow"),
) -> None:
    """Start the local stack (MLflow server, API, ...) and stop it on Ctrl-C."""
    from ia_continu.stack import run_stack

    settings = _settings()
    _setup_logging(settings.log_level)
    _check_data_dirs_or_exit("up", settings)
    raise typer.Exit(
        run_stack(
            settings, mlflow_port=mlflow_port, mlflow_dir=mlflow_dir, with_prefect=with_prefect
        )
    )


# --- continuous-learning loop: monitor run / monitor serve / simulate ------------------------

monitor_app = typer.Typer(help="The monitoring flow (Prefect): drift, retrain, promote.")
app.add_typer(monitor_app, name="monitor", no_args_is_help=True)


def _use_prefect_server(settings: Settings) -> str:
    """Point Prefect at the configured server when it answers (before importing it);
    otherwise Prefect runs the flow against a temporary local server."""
    import os

    import httpx

    if os.environ.get("PREFECT_API_URL"):
        return f"Prefect server {os.environ['PREFECT_API_URL']}"
    url = settings.prefect_api_url.rstrip("/")
    try:
        if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
            os.environ["PREFECT_API_URL"] = url
            return f"Prefect server {url}"
    except httpx.HTTPError:
        pass
    return f"no Prefect server at {url}: a temporary local one records this run"


@monitor_app.command("run")
def monitor_run(
    hour: Annotated[
        int | None,
        typer.Option(min=0, max=23, help="generate a fresh batch as at this hour (0-23)"),
    ] = None,
    samples: Annotated[
        int | None, typer.Option(min=100, max=100_000, help="rows of that fresh batch")
    ] = None,
    in_process: Annotated[
        bool, typer.Option("--in-process", help="run the steps without Prefect")
    ] = False,
) -> None:
    """Run one monitoring run now (a Prefect flow run) and print its outcome."""
    import asyncio
    import os

    from rich.console import Console

    from ia_continu.db import monitoring_runs as db_runs

    settings = _settings()
    # Prefect prints the flow's and tasks' progress with its own handler.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ia_continu")
    console = Console()
    if in_process:
        from ia_continu.db.engine import create_db_engine
        from ia_continu.db.migrate import upgrade_database
        from ia_continu.services import monitoring as service

        engine = create_db_engine(settings.resolved_database_url)
        upgrade_database(engine)
        try:
            outcome = asyncio.run(
                service.execute_run(
                    settings=settings,
                    engine=engine,
                    request=service.RunRequest(hour=hour, samples=samples),
                )
            )
        finally:
            engine.dispose()
        run, url = outcome.run, outcome.mlflow_url
    else:
        console.print(f"[dim]{_use_prefect_server(settings)}[/dim]")

        from ia_continu.flows import flow_settings, monitoring_flow

        with flow_settings(settings):
            state: Any = asyncio.run(
                monitoring_flow(hour=hour, samples=samples, return_state=True)  # type: ignore[arg-type]
            )
        from ia_continu.db.engine import create_db_engine

        engine = create_db_engine(settings.resolved_database_url)
        try:
            latest = db_runs.get_latest_monitoring_run(engine)
        finally:
            engine.dispose()
        flow_run_id = str(state.state_details.flow_run_id)
        if latest is None or latest.flow_run_id != flow_run_id:
            console.print(f"[red]flow run {flow_run_id} ended {state.name}: {state.message}[/red]")
            raise typer.Exit(1)
        run, url = latest, None
        if run.mlflow_run_id:
            from ia_continu.registry import core as registry

            try:
                url = registry.run_url(
                    settings,
                    experiment_id=registry.get_experiment_id(settings),
                    run_id=run.mlflow_run_id,
                )
            except registry.RegistryUnavailableError:
                url = None
    console.print(_run_table(run, mlflow_url=url))
    raise typer.Exit(1 if run.status == "failed" else 0)


def _run_table(run: object, *, mlflow_url: str | None) -> object:
    from dataclasses import asdict

    from rich.table import Table

    data = asdict(run)  # type: ignore[call-overload]
    colour = {"ok": "green", "drift": "dark_orange", "failed": "red"}.get(data["status"], "white")
    table = Table(title=f"Monitoring run {data['id']}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()

    def fmt(value: object) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    table.add_row("status", f"[{colour}]{data['status']}[/{colour}]")
    table.add_row("decision", str(data["decision"]))
    table.add_row("reason", fmt(data["reason"]))
    table.add_row("champion", fmt(data["champion_version"]))
    table.add_row(
        "batch",
        f"generation {fmt(data['generation_id'])}, hour {fmt(data['hour_generated'])}, "
        f"{fmt(data['batch_samples'])} rows",
    )
    table.add_row(
        "labelled data",
        "none (no fresh data)"
        if not data.get("data_source")
        else f"{data['data_source']}, {fmt(data.get('labelled_samples'))} rows",
    )
    table.add_row("champion held-out accuracy", fmt(data["reference_accuracy"]))
    table.add_row(
        "champion on batch",
        f"accuracy {fmt(data['accuracy'])}  precision {fmt(data['precision'])}  "
        f"recall {fmt(data['recall'])}  f1 {fmt(data['f1_score'])}",
    )
    for label, key in (("drift (training vs batch)", "drift"), ("drift (vs live)", "live_drift")):
        report = data[key]
        if not report:
            table.add_row(label, "-")
            continue
        table.add_row(
            label,
            "\n".join(
                f"{name}: KS {d['ks_statistic']:.3f}  p {d['ks_p_value']:.2e}  PSI {d['psi']:.3f}"
                for name, d in report.items()
            ),
        )
    table.add_row("drift detected", "yes" if data["drift_detected"] else "no")
    table.add_row(
        "challenger",
        "-"
        if data["new_version"] is None
        else f"{data['new_version']}: {fmt(data['new_accuracy'])} vs champion "
        f"{fmt(data['champion_accuracy_on_holdout'])} on its held-out rows",
    )
    table.add_row("duration", f"{fmt(data['duration_seconds'])} s")
    table.add_row("MLflow run", mlflow_url or fmt(data["mlflow_run_id"]))
    table.add_row("Prefect flow run", fmt(data["flow_run_id"]))
    if data["error"]:
        table.add_row("error", f"[red]{data['error']}[/red]")
    return table


@monitor_app.command("serve")
def monitor_serve(
    interval: Annotated[
        int | None, typer.Option(min=10, help="seconds between runs (IA_MONITOR_INTERVAL)")
    ] = None,
    run_now: Annotated[bool, typer.Option(help="first run right away")] = True,
) -> None:
    """Serve the monitoring flow on a schedule (Prefect deployment "ia-continu-monitoring")."""
    import os

    settings = _settings()
    _setup_logging(settings.log_level)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "ia_continu")
    print(_use_prefect_server(settings), flush=True)
    # Prefect polls its server every few seconds: httpx would log each request.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    from ia_continu.flows import serve_monitoring

    serve_monitoring(interval=interval or settings.monitor_interval, run_now=run_now)


@app.command()
def simulate(
    hours: Annotated[int, typer.Option(min=1, max=24 * 14, help="simulated hours")] = 24,
    batch: Annotated[
        int, typer.Option(min=100, max=100_000, help="labelled rows per hour (and traffic)")
    ] = 1000,
    start_hour: Annotated[int, typer.Option(min=0, max=23)] = 0,
    seed: Annotated[int, typer.Option(min=0, help="reproducible batches and traffic")] = 0,
    mlflow_uri: Annotated[
        str,
        typer.Option(
            help="MLflow tracking server to log to (experiment/model *_simulation); "
            "default: a temporary local store"
        ),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object on stdout")] = False,
    source: Annotated[
        str,
        typer.Option(
            help="generate: a labelled batch per hour; traffic: inputs through /predict, "
            "late partial labels through /feedback (docs/loop.md)"
        ),
    ] = "generate",
    rate: Annotated[
        int, typer.Option(min=1, max=1_000_000, help="traffic: requests per simulated hour")
    ] = 2000,
    label_rate: Annotated[
        float, typer.Option(min=0.001, max=1.0, help="traffic: fraction of predictions labelled")
    ] = 0.3,
    label_delay: Annotated[
        str, typer.Option(help="traffic: simulated delay before a label arrives (30s, 10m, 2h)")
    ] = "10m",
    monitor_every: Annotated[
        int, typer.Option(min=1, max=24 * 60, help="traffic: simulated minutes between runs")
    ] = 30,
    drift_at: Annotated[
        int | None,
        typer.Option(
            min=0, help="traffic: hour the inputs switch to the other parity (default: hours/2)"
        ),
    ] = None,
) -> None:
    """Run the loop over simulated hours (parity alternating) on a throw-away database:
    per hour a labelled batch arrives, the monitoring run decides, then the served model
    is scored on fresh traffic; compared with a never-retrained model and an oracle.
    With --source traffic: see docs/loop.md, "Simulation on traffic"."""
    import json
    import os
    import shutil
    import tempfile

    if source not in ("generate", "traffic"):
        raise typer.BadParameter("must be generate or traffic", param_hint="--source")
    if source == "traffic":
        _simulate_traffic(
            hours=hours,
            rate=rate,
            label_rate=label_rate,
            label_delay_minutes=_parse_minutes(label_delay),
            monitor_every=monitor_every,
            drift_at=hours // 2 if drift_at is None else drift_at,
            seed=seed,
            mlflow_uri=mlflow_uri,
            as_json=as_json,
        )
        return

    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.ERROR)
    from ia_continu.services.simulate import HourRow, run_simulation

    base = _settings()
    workdir = Path(tempfile.mkdtemp(prefix="ia-continu-sim-"))
    settings = base.model_copy(
        update={
            "data_dir": workdir / "data",
            "database_url": f"sqlite:///{workdir / 'simulation.db'}",
            "mlflow_tracking_uri": mlflow_uri or f"sqlite:///{workdir / 'mlflow.db'}",
            "mlflow_experiment": f"{base.mlflow_experiment}_simulation",
            "model_name": f"{base.model_name}_simulation",
            "discord_webhook_url": None,
            "timezone": "UTC",
        }
    )
    line = (
        "{:>4}  {:>8}  {:>9}  {:>7}  {:>8}  {:>6}  {:>5}  {:<18} {:>6}  {:>9}  {:>7}  {:>6}  {:>5}"
    )

    def num(value: float | None, spec: str = ".3f") -> str:
        return "-" if value is None else format(value, spec)

    def show(row: HourRow) -> None:
        if as_json:
            return
        decision = row.decision + (f" {row.new_version}" if row.new_version else "")
        typer.echo(
            line.format(
                f"{row.hour:02d}",
                row.champion_version or "-",
                num(row.champion_batch_accuracy),
                num(row.ks_statistic_feature1),
                num(row.ks_p_value_feature1, ".1e"),
                num(row.psi_feature1),
                "yes" if row.drift_detected else "no",
                decision,
                row.served_version,
                num(row.served_accuracy),
                num(row.never_retrained_accuracy),
                num(row.oracle_accuracy),
                num(row.run_seconds, ".2f"),
            )
            + (f"  {row.error}" if row.error else "")
        )

    if not as_json:
        typer.echo(
            f"Simulating {hours} h from hour {start_hour:02d}, {batch} labelled rows per hour "
            f"(odd hours shift feature1); served / never retrained / oracle scored on "
            f"{batch} rows of fresh traffic of the same hour."
        )
        typer.echo(
            line.format(
                "hour",
                "champion",
                "acc.batch",
                "KS f1",
                "p-value",
                "PSI f1",
                "drift",
                "decision",
                "served",
                "acc.served",
                "never",
                "oracle",
                "run s",
            )
        )

    try:
        result = run_simulation(
            settings=settings,
            hours=hours,
            batch=batch,
            start_hour=start_hour,
            seed=seed,
            artifact_location=None if mlflow_uri else str(workdir / "artifacts"),
            on_hour=show,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    s = result.summary
    typer.echo(
        f"\nmean accuracy on the traffic over {s.hours} h: served by the loop "
        f"{s.mean_served_accuracy:.4f} | never retrained {s.mean_never_retrained_accuracy:.4f}"
        f" | oracle (trained on each hour's batch) {s.mean_oracle_accuracy:.4f}\n"
        f"{s.retrains} retrains, {s.promotions} promotions, {s.failed_runs} failed runs; "
        f"{s.mean_run_seconds:.2f} s per monitoring run, {s.total_seconds:.1f} s in all "
        f"(MLflow: {mlflow_uri or 'temporary local store'})"
    )


def _parse_minutes(text: str) -> float:
    """'90s', '10m', '2h' or a bare number of minutes, as minutes."""
    units = {"s": 1 / 60, "m": 1.0, "h": 60.0}
    raw = text.strip().lower()
    factor = units.get(raw[-1:])
    try:
        value = float(raw[:-1] if factor is not None else raw) * (factor or 1.0)
    except ValueError:
        raise typer.BadParameter(f"not a duration: {text!r}", param_hint="--label-delay") from None
    if not 0 <= value <= 7 * 24 * 60:
        raise typer.BadParameter("must be between 0 and 7 days", param_hint="--label-delay")
    return value


def _simulate_traffic(
    *,
    hours: int,
    rate: int,
    label_rate: float,
    label_delay_minutes: float,
    monitor_every: int,
    drift_at: int,
    seed: int,
    mlflow_uri: str,
    as_json: bool,
) -> None:
    """`simulate --source traffic` on a throw-away database and MLflow store."""
    import json
    import os
    import shutil
    import tempfile

    if drift_at > hours:
        raise typer.BadParameter("must be at most --hours", param_hint="--drift-at")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.ERROR)
    from ia_continu.services.simulate_traffic import SliceRow, run_traffic_simulation

    base = _settings()
    workdir = Path(tempfile.mkdtemp(prefix="ia-continu-simtraffic-"))
    settings = base.model_copy(
        update={
            "data_dir": workdir / "data",
            "database_url": f"sqlite:///{workdir / 'simulation.db'}",
            "mlflow_tracking_uri": mlflow_uri or f"sqlite:///{workdir / 'mlflow.db'}",
            "mlflow_experiment": f"{base.mlflow_experiment}_simulation",
            "model_name": f"{base.model_name}_simulation",
            "discord_webhook_url": None,
            "timezone": "UTC",
            "host": "127.0.0.1",  # in-process app, never bound
            "api_keys": None,
            "api_keys_file": None,
            "monitor_generate": False,  # the loop learns from the traffic's labels only
        }
    )
    line = "{:>5}  {:>6}  {:>5}  {:<14} {:>7}  {:>6}  {:>6}  {:>6}  {:>5}  {:<18} {:>6}"
    header = "time inputs reqs served_by served never oracle labels drift decision run_s"

    def show(row: SliceRow) -> None:
        if as_json:
            return
        decision = row.decision + (f" {row.new_version}" if row.new_version else "")
        typer.echo(
            line.format(
                f"{row.minute // 60:02d}:{row.minute % 60:02d}",
                "drift" if row.regime else "-",
                row.requests,
                ",".join(sorted(row.served_versions)),
                f"{row.served_accuracy:.3f}",
                f"{row.never_retrained_accuracy:.3f}",
                f"{row.oracle_accuracy:.3f}",
                row.labels_posted,
                "yes" if row.drift_detected else "no",
                decision,
                f"{row.run_seconds:.2f}",
            )
            + (f"  {row.error}" if row.error else "")
        )

    if not as_json:
        typer.echo(
            f"Simulating {hours} h of traffic, {rate} requests/h through /predict/batch, "
            f"inputs drift (feature1 - 0.5) from hour {drift_at}; {label_rate:g} of the "
            f"predictions labelled through /feedback after {label_delay_minutes:g} min; "
            f"a monitoring run every {monitor_every} min."
        )
        typer.echo(line.format(*(h.replace("_", " ") for h in header.split())))
    try:
        result = run_traffic_simulation(
            settings=settings,
            hours=hours,
            rate=rate,
            label_rate=label_rate,
            label_delay_minutes=label_delay_minutes,
            monitor_every_minutes=monitor_every,
            drift_at=drift_at,
            seed=seed,
            artifact_location=None if mlflow_uri else str(workdir / "artifacts"),
            on_slice=show,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
        return
    s = result.summary
    to_champion = (
        "no new champion after the drift"
        if s.drift_to_champion_minutes is None
        else f"{s.drift_to_champion_minutes:g} simulated min ({s.post_drift_champion})"
    )
    typer.echo(
        f"\nrealized accuracy on {s.requests} requests: served {s.served_accuracy:.4f} | "
        f"never retrained {s.never_retrained_accuracy:.4f} | oracle {s.oracle_accuracy:.4f}"
        f" | served/oracle {s.served_to_oracle:.4f}\n"
        f"drift to new champion served: {to_champion}; {s.labels_posted} labels posted, "
        f"{s.runs} runs, {s.promotions} promotions, {s.failed_runs} failed; "
        f"{s.total_seconds:.1f} s wall clock"
    )


# --- operations: Uptime Kuma and the Prefect worker (compose services) ----------------------

kuma_app = typer.Typer(help="Uptime Kuma provisioning.", no_args_is_help=True)
app.add_typer(kuma_app, name="kuma")


@kuma_app.command("setup")
def kuma_setup(
    url: Annotated[str | None, typer.Option(help="Uptime Kuma base URL (IA_KUMA_URL)")] = None,
    username: Annotated[
        str | None, typer.Option(help="admin user, created on a new instance (IA_KUMA_USERNAME)")
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(help="admin password; prefer IA_KUMA_PASSWORD (not in `ps`)"),
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="the API's base URL as Kuma sees it (IA_KUMA_TARGET_URL)")
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="seconds per Kuma call (IA_KUMA_TIMEOUT)")
    ] = None,
) -> None:
    """Set up Uptime Kuma: admin account when new, a monitor on /health every 30 s, Discord.

    Idempotent: run it again to update; nothing is duplicated.
    """
    from functools import partial

    from ia_continu.ops import kuma

    settings = _settings()
    kuma_url = url or settings.kuma_url
    user = username or settings.kuma_username
    secret = password or (
        settings.kuma_password.get_secret_value() if settings.kuma_password else None
    )
    if not user or not secret:
        missing = "--username / IA_KUMA_USERNAME" if not user else "--password / IA_KUMA_PASSWORD"
        typer.echo(f"ia-continu kuma setup: missing {missing}", err=True)
        raise typer.Exit(2)
    webhook = settings.discord_webhook_url
    try:
        result = kuma.provision_kuma(
            connect=partial(kuma.connect_kuma, timeout=timeout or settings.kuma_timeout),
            url=kuma_url,
            username=user,
            password=secret,
            target_url=target or settings.kuma_target_url,
            discord_webhook_url=webhook.get_secret_value() if webhook else None,
        )
    except kuma.KumaError as exc:
        typer.echo(f"ia-continu kuma setup: {exc}", err=True)
        raise typer.Exit(1) from None
    if result.initialised:
        typer.echo(f"Uptime Kuma at {result.url}: first-time setup done, admin {user!r}")
    typer.echo(
        f"monitor {kuma.MONITOR_NAME!r} (id {result.monitor_id}) {result.monitor_action}: "
        f"keyword {kuma.HEALTH_KEYWORD!r} on {result.monitor_url} "
        f"every {kuma.CHECK_INTERVAL_SECONDS} s"
    )
    if result.notification_id is None:
        typer.echo("no Discord notification (IA_DISCORD_WEBHOOK_URL is not set)")
    else:
        typer.echo(
            f"Discord notification {kuma.NOTIFICATION_NAME!r} (id {result.notification_id}) "
            f"{result.notification_action} and attached to the monitor"
        )


worker_app = typer.Typer(
    help="Prefect work pool worker running the monitoring flow.", no_args_is_help=True
)
app.add_typer(worker_app, name="worker")


@worker_app.command("deploy")
def worker_deploy(
    pool: Annotated[str, typer.Option(help="process work pool")] = "ia-continu",
    interval: Annotated[
        int | None, typer.Option(help="seconds between runs (IA_MONITOR_INTERVAL)")
    ] = None,
) -> None:
    """Create the work pool if missing and create/update the monitoring deployment."""
    _deploy_monitoring(pool=pool, interval=interval)


@worker_app.command("start")
def worker_start(
    pool: Annotated[str, typer.Option(help="process work pool")] = "ia-continu",
    deploy: Annotated[
        bool, typer.Option(help="register the deployment first (off on extra machines)")
    ] = True,
    interval: Annotated[
        int | None, typer.Option(help="seconds between runs (IA_MONITOR_INTERVAL)")
    ] = None,
    name: Annotated[str | None, typer.Option(help="worker name shown in Prefect")] = None,
    healthcheck: Annotated[
        bool, typer.Option(help="serve GET :8080/health (PREFECT_WORKER_WEBSERVER_PORT)")
    ] = True,
) -> None:
    """Deploy (optionally), then replace this process with `prefect worker start --pool`."""
    import os

    from ia_continu.ops.prefect_worker import ensure_work_pool, worker_command

    if deploy:
        _deploy_monitoring(pool=pool, interval=interval)
    else:
        ensure_work_pool(name=pool)
    argv = worker_command(pool=pool, name=name, healthcheck=healthcheck)
    typer.echo(f"exec {' '.join(argv)}")
    # exec: the worker gets this PID, so `docker stop` signals reach it directly.
    os.execv(argv[0], argv)


def _deploy_monitoring(*, pool: str, interval: int | None) -> None:
    from ia_continu.flows import DEPLOYMENT_NAME, monitoring_flow
    from ia_continu.ops.prefect_worker import deploy_flow, ensure_work_pool

    settings = _settings()
    seconds = interval or settings.monitor_interval
    created = ensure_work_pool(name=pool)
    deployment_id = deploy_flow(
        monitoring_flow,
        name=DEPLOYMENT_NAME,
        pool=pool,
        interval_seconds=seconds,
        description="Continuous-learning loop: drift detection, retraining, promotion.",
        tags=["ia-continu", "monitoring"],
    )
    typer.echo(
        f"work pool {pool!r} {'created' if created else 'found'}; deployment "
        f"{monitoring_flow.name}/{DEPLOYMENT_NAME} ({deployment_id}) every {seconds} s"
    )


if __name__ == "__main__":  # pragma: no cover
    app()
