"""``ia-continu simulate``: the loop over simulated hours, on generated batches or on traffic."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ia_continu.cli.app import _settings, app
from ia_continu.config import Settings


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

    workdir, settings = _throwaway_settings(prefix="ia-continu-sim-", mlflow_uri=mlflow_uri)
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


def _throwaway_settings(*, prefix: str, mlflow_uri: str, **extra: object) -> tuple[Path, Settings]:
    """A temporary directory and settings on it (SQLite database, MLflow store unless
    ``mlflow_uri``, experiment and model suffixed ``_simulation``, no Discord, UTC), plus
    ``extra``: a simulation never touches the real database, registry or channel."""
    base = _settings()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    settings = base.model_copy(
        update={
            "data_dir": workdir / "data",
            "database_url": f"sqlite:///{workdir / 'simulation.db'}",
            "mlflow_tracking_uri": mlflow_uri or f"sqlite:///{workdir / 'mlflow.db'}",
            "mlflow_experiment": f"{base.mlflow_experiment}_simulation",
            "model_name": f"{base.model_name}_simulation",
            "discord_webhook_url": None,
            "timezone": "UTC",
            **extra,
        }
    )
    return workdir, settings


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

    if drift_at > hours:
        raise typer.BadParameter("must be at most --hours", param_hint="--drift-at")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    logging.basicConfig(level=logging.ERROR)
    from ia_continu.cli.simulate_traffic import SliceRow, run_traffic_simulation

    workdir, settings = _throwaway_settings(
        prefix="ia-continu-simtraffic-",
        mlflow_uri=mlflow_uri,
        host="127.0.0.1",  # in-process app, never bound
        api_keys=None,
        api_keys_file=None,
        monitor_generate=False,  # the loop learns from the traffic's labels only
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
