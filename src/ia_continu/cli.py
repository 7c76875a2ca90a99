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
    from ia_continu.monitoring.flows import DEPLOYMENT_NAME, monitoring_flow
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
