"""``ia-continu serve``: the API under uvicorn (migrations, data directories, workers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ia_continu.cli.app import _settings, _setup_logging, app
from ia_continu.config import Settings


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
        from ia_continu.api.metrics_multiprocess import remove_multiprocess_dir

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

    from ia_continu.api.metrics_multiprocess import prepare_multiprocess_dir
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
