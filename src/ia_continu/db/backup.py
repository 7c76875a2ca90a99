"""``ia-continu db backup`` / ``db restore``: a consistent copy of the database while
the API serves, and a restore into an empty instance.

- SQLite: SQLite's online backup API (``sqlite3.Connection.backup``) copies the whole
  database in one step, inside one read transaction: a consistent snapshot, and in WAL
  mode the API's writers are not blocked meanwhile. The copy is a single self-contained
  file (journal mode DELETE), checked with ``PRAGMA quick_check`` before it is renamed
  into place.
- PostgreSQL: ``pg_dump --format=custom`` of the project's tables (one snapshot by
  design), restored with ``pg_restore``. Without ``pg_dump`` on PATH the command refuses
  and says so.

Model files (``data/models/<version>.json``) are NOT part of the backup: the ``models``
table stores every version's coefficients in ``parameters``, and the restore rebuilds
the files from it (the API would also rebuild a missing file on first use).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ia_continu.db.tables import metadata


class BackupError(RuntimeError):
    """A backup or restore that cannot be done; the message is one line for the user."""


@dataclass(frozen=True, slots=True)
class RestoreSummary:
    champion: str | None
    models: int
    datasets: int
    predictions: int
    model_files: int
    models_without_parameters: tuple[str, ...] = ()

    def describe(self) -> str:
        text = (
            f"restored: champion {self.champion or 'none'}, {self.models} models, "
            f"{self.datasets} datasets, {self.predictions} predictions; "
            f"{self.model_files} model files rebuilt from the database"
        )
        if self.models_without_parameters:
            text += "; no stored parameters (retrain or fetch from MLflow): " + ", ".join(
                self.models_without_parameters
            )
        return text


# --- backup ------------------------------------------------------------------------------------


def backup_database(database_url: str, destination: Path) -> int:
    """Write a consistent copy of the database to ``destination``; its size in bytes."""
    url = sa.make_url(database_url)
    backend = url.get_backend_name()
    destination = destination.expanduser()
    if destination.is_dir():
        raise BackupError(f"{destination} is a directory; give a file name")
    if not destination.parent.is_dir():
        raise BackupError(f"directory {destination.parent} does not exist")
    if backend == "sqlite":
        _backup_sqlite(_sqlite_path(url), destination)
    elif backend == "postgresql":
        _backup_postgres(url, destination)
    else:
        raise BackupError(f"backup of a {backend} database is not supported")
    return destination.stat().st_size


def _sqlite_path(url: sa.URL) -> Path:
    if not url.database or url.database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up or restored")
    return Path(url.database)


def _backup_sqlite(source: Path, destination: Path) -> None:
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    tmp = destination.with_name(f".{destination.name}.partial")
    tmp.unlink(missing_ok=True)
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(tmp)
        try:
            # pages=-1: the whole database in one step, one read snapshot. A paged copy
            # restarts whenever another connection writes, which under steady /predict
            # traffic could never finish.
            src.backup(dst, pages=-1)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            check = dst.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise BackupError(f"the copy failed its integrity check: {check}")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"SQLite backup failed: {exc}") from exc
    finally:
        src.close()
    os.replace(tmp, destination)


def _pg_env(url: sa.URL) -> dict[str, str]:
    """libpq's environment for ``url``: the password never appears on a command line."""
    env = dict(os.environ)
    for var, value in (
        ("PGHOST", url.host),
        ("PGPORT", str(url.port) if url.port else None),
        ("PGUSER", url.username),
        ("PGPASSWORD", url.password),
        ("PGDATABASE", url.database),
    ):
        if value:
            env[var] = str(value)
    options = url.query.get("options")
    if options:
        env["PGOPTIONS"] = options if isinstance(options, str) else " ".join(options)
    return env


def _pg_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} is not on PATH: install the PostgreSQL client tools "
            f"(Debian: apt-get install postgresql-client), or use {name} directly"
        )
    return path


def _current_schema(url: sa.URL) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(sa.text("SELECT current_schema()")).scalar_one())
    finally:
        engine.dispose()


def _backup_postgres(url: sa.URL, destination: Path) -> None:
    pg_dump = _pg_tool("pg_dump")
    schema = _current_schema(url)
    tmp = destination.with_name(f".{destination.name}.partial")
    # --table 'schema.*': the tables with their sequences, indexes and constraints, not
    # the schema itself (restoring "CREATE SCHEMA public" into a database that has one
    # fails).
    result = subprocess.run(
        [
            pg_dump,
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            f"--table={schema}.*",
            f"--file={tmp}",
        ],
        env=_pg_env(url),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BackupError(f"pg_dump failed: {_first_line(result.stderr)}")
    os.replace(tmp, destination)


# --- restore -----------------------------------------------------------------------------------


def existing_tables(engine: Engine) -> list[str]:
    """The project's tables already present in the target database (current schema)."""
    names = set(sa.inspect(engine).get_table_names())
    return sorted(names & (set(metadata.tables) | {"alembic_version"}))


def restore_database(
    database_url: str, source: Path, *, data_dir: Path, force: bool = False
) -> RestoreSummary:
    """Restore ``source`` (made by :func:`backup_database`) into the database of
    ``database_url`` and rebuild the model files under ``data_dir/models``.

    Refuses a non-empty target (files in ``data_dir``, or project tables in the
    database) unless ``force``. Stop the API of the target instance first.
    """
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database

    source = source.expanduser()
    if not source.is_file():
        raise BackupError(f"no backup file at {source}")
    url = sa.make_url(database_url)
    backend = url.get_backend_name()
    if data_dir.exists() and any(data_dir.iterdir()) and not force:
        raise BackupError(f"data directory {data_dir} is not empty (use --force to overwrite)")
    if backend == "sqlite":
        target = _sqlite_path(url)
        # IA_DATABASE_URL may put the file outside the data directory.
        if target.exists() and target.stat().st_size > 0 and not force:
            raise BackupError(f"database {target} already exists (use --force to overwrite)")
        _restore_sqlite(source, target)
    elif backend == "postgresql":
        _restore_postgres(url, source, force=force)
    else:
        raise BackupError(f"restore into a {backend} database is not supported")
    engine = create_db_engine(database_url)
    try:
        upgrade_database(engine)  # a backup of an older revision is brought up to date
        return _rebuild_model_files(engine, data_dir / "models")
    finally:
        engine.dispose()


def _restore_sqlite(source: Path, target: Path) -> None:
    try:
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        try:
            check = src.execute("PRAGMA quick_check").fetchone()
            tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master")}
        finally:
            src.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{source} is not a SQLite backup: {exc}") from exc
    if check is None or check[0] != "ok":
        raise BackupError(f"{source} failed its integrity check: {check}")
    if "models" not in tables:
        raise BackupError(f"{source} is not an ia-continu database (no models table)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.restoring")
    shutil.copyfile(source, tmp)
    for suffix in ("-wal", "-shm"):  # a forced restore: the old file's journal must go
        with contextlib.suppress(FileNotFoundError):
            Path(f"{target}{suffix}").unlink()
    os.replace(tmp, target)


def _restore_postgres(url: sa.URL, source: Path, *, force: bool) -> None:
    pg_restore = _pg_tool("pg_restore")
    engine = sa.create_engine(url)
    try:
        present = existing_tables(engine)
    finally:
        engine.dispose()
    if present and not force:
        raise BackupError(
            f"the database already has tables ({', '.join(present)}); use --force to replace them"
        )
    args = [pg_restore, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction"]
    if present:
        args += ["--clean", "--if-exists"]
    result = subprocess.run(
        [*args, f"--dbname={url.database}", str(source)],
        env=_pg_env(url),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BackupError(f"pg_restore failed: {_first_line(result.stderr)}")


def _rebuild_model_files(engine: Engine, models_dir: Path) -> RestoreSummary:
    from ia_continu.db import models as db_models
    from ia_continu.db import predictions as db_predictions
    from ia_continu.db.model_files import model_from_record, save_model_file

    records = db_models.list_models(engine)
    written = 0
    missing: list[str] = []
    for record in records:
        if not record.parameters:
            missing.append(record.version)
            continue
        save_model_file(models_dir, model_from_record(record))
        written += 1
    with engine.connect() as conn:
        datasets_count = conn.execute(sa.text("SELECT COUNT(*) FROM datasets")).scalar_one()
    return RestoreSummary(
        champion=db_models.get_active_version(engine),
        models=len(records),
        datasets=int(datasets_count),
        predictions=db_predictions.count_predictions(engine),
        model_files=written,
        models_without_parameters=tuple(missing),
    )


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no message"
