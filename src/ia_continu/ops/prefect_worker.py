"""The compose service `prefect-worker`: a process work pool, the monitoring deployment, a worker.

A deployment on a *work pool* (rather than ``flow.serve``) lets any number of workers,
on any machine that can reach the Prefect server, pick up the scheduled runs:

    ensure_work_pool  -> the pool ``ia-continu`` of type ``process`` (created when missing)
    deploy_flow       -> upsert the deployment (schedule every IA_MONITOR_INTERVAL seconds)
    worker_command    -> ``prefect worker start --pool ia-continu`` (exec'd by the CLI)

The deployment's entrypoint is a module path, so a worker needs no code download: the
``ia-continu`` package installed (the image, or ``uv sync``) is enough.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

POOL_NAME = "ia-continu"
POOL_TYPE = "process"


def ensure_work_pool(*, name: str = POOL_NAME) -> bool:
    """Create the process work pool when missing. True when this call created it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            pass
        else:
            if pool.type != POOL_TYPE:
                raise ValueError(
                    f"work pool {name!r} exists with type {pool.type!r}, expected {POOL_TYPE!r}"
                )
            return False
        try:
            client.create_work_pool(
                WorkPoolCreate(
                    name=name,
                    type=POOL_TYPE,
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="ia-continu monitoring runs (any `prefect worker` may join)",
                )
            )
        except ObjectAlreadyExists:  # another worker created it between the two calls
            return False
        return True


def deploy_flow(
    flow: Any,
    *,
    name: str,
    pool: str = POOL_NAME,
    interval_seconds: float,
    description: str | None = None,
    tags: list[str] | None = None,
) -> UUID:
    """Create or update (same flow + name) the scheduled deployment of ``flow`` on ``pool``."""
    from prefect.deployments.runner import EntrypointType

    deployment = flow.to_deployment(
        name=name,
        interval=timedelta(seconds=interval_seconds),
        description=description,
        tags=tags,
        concurrency_limit=1,  # one monitoring run at a time, whichever worker takes it
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    deployment_id: UUID = deployment.apply(work_pool_name=pool)
    return deployment_id


def worker_command(
    *,
    pool: str = POOL_NAME,
    name: str | None = None,
    healthcheck: bool = True,
    run_once: bool = False,
) -> list[str]:
    """The ``prefect worker start`` command line for the pool."""
    argv = [
        _venv_executable("prefect"),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        POOL_TYPE,
        # The process worker ships with prefect: never try to pip-install anything.
        "--install-policy",
        "never",
    ]
    if name:
        argv += ["--name", name]
    if healthcheck:  # serves GET :8080/health (PREFECT_WORKER_WEBSERVER_PORT)
        argv.append("--with-healthcheck")
    if run_once:
        argv.append("--run-once")
    return argv


def _venv_executable(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name
