"""``ia-continu monitor``: one monitoring run, or the flow served by Prefect."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from ia_continu.cli.app import _settings, _setup_logging, app
from ia_continu.config import Settings

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
        from ia_continu.services import monitoring_types

        engine = create_db_engine(settings.resolved_database_url)
        upgrade_database(engine)
        try:
            outcome = asyncio.run(
                service.execute_run(
                    settings=settings,
                    engine=engine,
                    request=monitoring_types.RunRequest(hour=hour, samples=samples),
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
