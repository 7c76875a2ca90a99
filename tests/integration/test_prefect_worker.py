"""The compose service prefect-worker: process work pool, deployment, a real worker."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from ia_continu.ops import prefect_worker
from tests.integration.prefect_probe_flow import probe_flow

pytestmark = pytest.mark.slow
REPO = Path(__file__).parents[2]


def test_ensure_work_pool_creates_a_process_pool_once(prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client

    assert prefect_worker.ensure_work_pool(name="ops-pool-once") is True
    assert prefect_worker.ensure_work_pool(name="ops-pool-once") is False
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("ops-pool-once").type == "process"


def test_ensure_work_pool_rejects_a_pool_of_another_type(prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="ops-pool-other", type="prefect-agent"))
    with pytest.raises(ValueError, match="expected 'process'"):
        prefect_worker.ensure_work_pool(name="ops-pool-other")


def test_deploy_flow_twice_updates_one_scheduled_deployment(prefect_harness: None) -> None:
    from prefect.client.orchestration import get_client

    prefect_worker.ensure_work_pool(name="ops-pool-deploy")
    first = prefect_worker.deploy_flow(
        probe_flow, name="probe-deploy", pool="ops-pool-deploy", interval_seconds=600
    )
    second = prefect_worker.deploy_flow(
        probe_flow, name="probe-deploy", pool="ops-pool-deploy", interval_seconds=120
    )
    assert first == second
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(second)
    assert deployment.work_pool_name == "ops-pool-deploy"
    assert deployment.entrypoint == "tests.integration.prefect_probe_flow.probe_flow"
    assert deployment.path is None  # nothing to download: the module is installed
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    [schedule] = deployment.schedules
    assert schedule.schedule.interval.total_seconds() == 120


@pytest.mark.timeout(240)
def test_worker_command_runs_a_deployed_flow_run(prefect_harness: None, tmp_path: Path) -> None:
    """What a worker on another machine does: poll the pool, run the flow by module path."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    pool = "ops-pool-run"
    prefect_worker.ensure_work_pool(name=pool)
    prefect_worker.deploy_flow(probe_flow, name="probe-run", pool=pool, interval_seconds=3600)
    marker = tmp_path / "marker"
    flow_run = run_deployment(
        name="ia-continu-probe/probe-run", parameters={"marker": str(marker)}, timeout=0
    )

    argv = prefect_worker.worker_command(pool=pool, name="ops-test", healthcheck=False)
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONPATH": str(REPO),  # the probe flow lives in tests/, not in the package
    }
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        code = subprocess.run(
            [*argv, "--run-once"], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=200
        ).returncode
    assert code == 0, log.read_text()
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state is not None and state.is_completed(), log.read_text()
    assert marker.read_text() == "ran"


def test_worker_command_names_the_pool_and_never_installs() -> None:
    argv = prefect_worker.worker_command(pool="p", name="w1")
    assert argv[1:] == [
        "worker", "start", "--pool", "p", "--type", "process",
        "--install-policy", "never", "--name", "w1", "--with-healthcheck",
    ]  # fmt: skip
    assert Path(argv[0]).name == "prefect" and Path(argv[0]).exists()
