"""``ia-continu kuma`` and ``ia-continu worker``: Uptime Kuma and the Prefect worker
(compose services)."""

from __future__ import annotations

from typing import Annotated

import typer

from ia_continu.cli.app import _settings, app

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
