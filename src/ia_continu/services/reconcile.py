"""Registry debris: make MLflow agree with the ``models`` table again.

A retrain that fails or gives up halfway (MLflow killed, frozen past its deadline, the
database refusing the row) can leave behind a run still RUNNING and a registered version
no ``models`` row knows. ``reconcile_registry`` (``ia-continu registry reconcile``, and
once per monitoring run) repairs that, idempotently:

- a version without a models row, older than the grace period, is tagged
  ``ia_continu.orphan=true`` (kept, not deleted: its files are evidence, and deleting is
  not undoable); its run is marked FAILED. A version tagged orphan that has a row after
  all loses the tag.
- ``champion`` points at the active row's version; ``challenger`` and any other alias
  pointing at a version without a row is removed.
- a run of the experiment RUNNING for longer than the grace period is marked FAILED.

The grace period (IA_MLFLOW_RECONCILE_GRACE) leaves a retrain in progress alone.
Every MLflow call has its own deadline (IA_MLFLOW_DEADLINE).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ia_continu.config import Settings
from ia_continu.db.tables import models
from ia_continu.registry import core as registry

T = TypeVar("T")
PAGE = 500


@dataclass(frozen=True, slots=True)
class Change:
    action: str  # tag_orphan, untag_orphan, fail_run, set_alias, delete_alias
    target: str
    detail: str

    def __str__(self) -> str:
        return f"{self.action} {self.target}: {self.detail}"


@dataclass(slots=True)
class ReconcileReport:
    dry_run: bool
    versions_checked: int = 0
    runs_checked: int = 0
    changes: list[Change] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Row:
    version: str
    is_active: bool


def reconcile_registry(
    *,
    settings: Settings,
    engine: Engine,
    dry_run: bool = False,
    grace_seconds: float | None = None,
    now_ms: int | None = None,
) -> ReconcileReport:
    """Find (and unless ``dry_run``, fix) registry debris; returns what was (or would
    be) changed. Raises RegistryUnavailableError when MLflow cannot be reached."""
    registry.check_tracking_server(settings)
    client = registry.prepare(settings)
    grace_ms = int(
        1000 * (settings.mlflow_reconcile_grace if grace_seconds is None else grace_seconds)
    )
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    report = ReconcileReport(dry_run=dry_run)
    rows = _registered_rows(engine)

    def call(what: str, fn: Callable[[], T]) -> T:
        return registry.run_with_deadline(
            registry.Deadline(settings.mlflow_deadline), what, lambda _: fn()
        )

    def apply(change: Change, fn: Callable[[], object]) -> None:
        report.changes.append(change)
        if not dry_run:
            call(str(change), fn)

    name = settings.model_name
    runs_to_fail: dict[str, str] = {}
    versions = call("listing the registered versions", lambda: _all_versions(client, name))
    report.versions_checked = len(versions)
    for mv in versions:
        number = int(mv.version)
        orphan = (mv.tags or {}).get(registry.ORPHAN_TAG) == "true"
        if number in rows and orphan:
            apply(
                Change("untag_orphan", f"version {number}", f"models row {rows[number].version}"),
                partial(client.delete_model_version_tag, name, str(number), registry.ORPHAN_TAG),
            )
        elif number not in rows and not orphan:
            age_ms = now_ms - int(mv.creation_timestamp or now_ms)
            if age_ms < grace_ms:
                continue  # a retrain may be about to store its row
            apply(
                Change("tag_orphan", f"version {number}", "no models row"),
                partial(
                    client.set_model_version_tag, name, str(number), registry.ORPHAN_TAG, "true"
                ),
            )
            if mv.run_id:
                runs_to_fail[mv.run_id] = f"its version {number} has no models row"

    if versions:
        aliases = call("reading the aliases", lambda: _aliases(client, name))
        active = next((n for n, row in rows.items() if row.is_active), None)
        for alias, number in sorted(aliases.items()):
            if alias == registry.CHAMPION and active is not None:
                if number != active:
                    apply(
                        Change("set_alias", alias, f"version {number} -> {active} (active row)"),
                        partial(
                            client.set_registered_model_alias, name, registry.CHAMPION, str(active)
                        ),
                    )
            elif number not in rows:
                apply(
                    Change("delete_alias", alias, f"version {number} has no models row"),
                    partial(client.delete_registered_model_alias, name, alias),
                )
        if active is not None and registry.CHAMPION not in aliases:
            apply(
                Change("set_alias", registry.CHAMPION, f"unset -> {active} (active row)"),
                partial(client.set_registered_model_alias, name, registry.CHAMPION, str(active)),
            )

    experiment = call(
        "looking up the experiment",
        lambda: client.get_experiment_by_name(settings.mlflow_experiment),
    )
    if experiment is not None:
        running = call(
            "listing running runs", lambda: _running_runs(client, str(experiment.experiment_id))
        )
        report.runs_checked = len(running)
        for run in running:
            if now_ms - int(run.info.start_time or now_ms) >= grace_ms:
                runs_to_fail.setdefault(run.info.run_id, "RUNNING past the grace period")
        for run_id, why in sorted(runs_to_fail.items()):
            status = call("reading a run", partial(_run_status, client, run_id))
            if status in (None, "FAILED", "KILLED"):
                continue
            apply(
                Change("fail_run", f"run {run_id}", f"{status} -> FAILED: {why}"),
                partial(client.set_terminated, run_id, status="FAILED"),
            )
    return report


def _registered_rows(engine: Engine) -> dict[int, _Row]:
    """registry_version -> models row (only rows that have one)."""
    query = sa.select(models.c.registry_version, models.c.version, models.c.is_active).where(
        models.c.registry_version.is_not(None)
    )
    with engine.connect() as conn:
        return {
            int(r.registry_version): _Row(version=r.version, is_active=bool(r.is_active))
            for r in conn.execute(query)
        }


def _all_versions(client: Any, name: str) -> list[Any]:
    found: list[Any] = []
    token: str | None = None
    while True:
        page = client.search_model_versions(
            filter_string=f"name = '{name}'", max_results=PAGE, page_token=token
        )
        found.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return found


def _aliases(client: Any, name: str) -> dict[str, int]:
    try:
        model = client.get_registered_model(name)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc):
            return {}
        raise
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


def _running_runs(client: Any, experiment_id: str) -> list[Any]:
    found: list[Any] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string="attributes.status = 'RUNNING'",
            max_results=PAGE,
            page_token=token,
        )
        found.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return found


def _run_status(client: Any, run_id: str) -> str | None:
    try:
        return str(client.get_run(run_id).info.status)
    except Exception as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc):
            return None
        raise
