"""The ``ia-continu`` command line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

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
    # Migrate once here so that N workers do not all race to do it.
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    engine.dispose()
    uvicorn.run(
        "ia_continu.api.asgi:create_app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_level=settings.log_level,
        loop="uvloop",
        http="httptools",
        access_log=False,
        timeout_graceful_shutdown=30,
        env_file=None,
    )


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


@app.command()
def retrain(
    generation_id: Annotated[int | None, typer.Option(help="default: latest dataset")] = None,
) -> None:
    """Retrain on a stored dataset and make the model the champion."""
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.ml import lifecycle

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
def up(
    with_prefect: Annotated[bool, typer.Option(help="also start Prefect")] = True,
    mlflow_port: int = 5000,
    mlflow_dir: Path = Path("mlflow"),
) -> None:
    """Start the local stack (MLflow server, API, ...) and stop it on Ctrl-C."""
    from ia_continu.stack import run_stack

    settings = _settings()
    _setup_logging(settings.log_level)
    raise typer.Exit(
        run_stack(
            settings, mlflow_port=mlflow_port, mlflow_dir=mlflow_dir, with_prefect=with_prefect
        )
    )


if __name__ == "__main__":  # pragma: no cover
    app()
