"""``ia-continu up``: the local stack (MLflow server, API, Prefect) in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ia_continu.cli.app import _settings, _setup_logging, app
from ia_continu.cli.serve import _check_data_dirs_or_exit


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
