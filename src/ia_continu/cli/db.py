"""``ia-continu db``: schema upgrade, retention (prune), backup and restore."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ia_continu.cli.app import _settings, app

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


app.add_typer(db_app, name="db")


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
