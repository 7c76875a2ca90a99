"""``ia-continu registry``: repairs of the MLflow model registry."""

from __future__ import annotations

from typing import Annotated

import typer

from ia_continu.cli.app import _settings, app

registry_app = typer.Typer(help="MLflow model registry.", no_args_is_help=True)


app.add_typer(registry_app, name="registry")


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
