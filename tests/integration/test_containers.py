"""The real image, built and run: the API, MLflow, the Prefect server and worker in containers.

`deploy/build-image.sh` (what `make image` runs) builds the image with the engine of this
machine (`deploy/engine.sh`: docker when its daemon answers, else podman with runc and
vfs storage). Containers use the host's network on free loopback ports (compose's fixed
ports may be taken on a shared machine); the commands and environments are read from
compose.yaml and the Dockerfile, with only the addresses and ports translated.

Skipped when no engine is installed, except with IA_TEST_REQUIRE_CONTAINERS=1 (CI), where
a missing engine fails. The first test builds the image (cached by the engine's layer
cache; a cold build on this machine takes several minutes, see docs/containers.md).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_port, wait_http

ROOT = Path(__file__).parents[2]
ENGINE = ROOT / "deploy" / "engine.sh"
BUILD = ROOT / "deploy" / "build-image.sh"
IMAGE = os.environ.get("IA_TEST_IMAGE", "ia-continu:2.0.0")
REQUIRE = os.environ.get("IA_TEST_REQUIRE_CONTAINERS") == "1"
KEY = "container-test-" + uuid.uuid4().hex
PREFIX = f"iatest-{uuid.uuid4().hex[:8]}"
# Compose's in-network addresses, replaced by the loopback ones of these containers.
COMPOSE_HOSTS = {"mlflow": 5000, "api": 9000, "prefect-server": 4200}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?[^}]*\}")

# Cold build (base from debootstrap + image) and container start-ups: well over the default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def _engine(
    *args: str, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(ENGINE), *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"engine {' '.join(args)} -> {result.returncode}: {result.stderr}")
    return result


def _engine_missing() -> str | None:
    which = subprocess.run([str(ENGINE), "--which"], capture_output=True, text=True)
    if which.returncode != 0:
        return which.stderr.strip() or "no container engine"
    info = subprocess.run([str(ENGINE), "info"], capture_output=True, text=True, timeout=120)
    if info.returncode != 0:
        return f"{which.stdout.strip()} does not work here: {info.stderr.strip()[-300:]}"
    return None


# --- compose.yaml and the Dockerfile, read (never copied) ------------------------------------


@cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _interpolate(value: str) -> str:
    """Compose's interpolation with no .env: defaults kept, required variables empty."""
    return VARIABLE.sub(lambda m: m.group("default") or "", value)


def _translate(value: str, ports: dict[str, int]) -> str:
    """http://mlflow:5000 -> http://127.0.0.1:<mlflow's free port>, and so on."""
    for host, port in COMPOSE_HOSTS.items():
        if host in ports:
            value = value.replace(f"http://{host}:{port}", f"http://127.0.0.1:{ports[host]}")
    return value


def _service_command(service: str, ports: dict[str, int]) -> list[str]:
    """compose's command with `--host 0.0.0.0` -> 127.0.0.1 and `--port N` -> the free port."""
    argv = [_interpolate(str(part)) for part in _compose()["services"][service]["command"]]
    for i, part in enumerate(argv[:-1]):
        if part == "--host":
            argv[i + 1] = "127.0.0.1"
        elif part == "--port":
            argv[i + 1] = str(ports[service])
    return argv


def _service_environment(service: str, ports: dict[str, int]) -> dict[str, str]:
    env = _compose()["services"][service].get("environment", {})
    return {k: _translate(_interpolate(str(v)), ports) for k, v in env.items()}


def _service_volumes(service: str) -> list[tuple[str, str]]:
    """(named volume, mount point) of a service, in compose's order."""
    result = []
    for spec in _compose()["services"][service].get("volumes", []):
        source, target = str(spec).split(":")[:2]
        result.append((source, target))
    return result


def _dockerfile_healthcheck() -> list[str]:
    """The exec-form CMD of the Dockerfile's HEALTHCHECK instruction."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    [line] = [ln for ln in text.splitlines() if ln.lstrip().startswith("HEALTHCHECK")]
    argv = json.loads(line.split(" CMD ", 1)[1].strip())
    assert isinstance(argv, list)
    return [str(a) for a in argv]


# --- containers ------------------------------------------------------------------------------


class Containers:
    """Containers and named volumes of one test module; all removed at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.volumes: set[str] = set()

    def volume(self, name: str) -> str:
        full = f"{PREFIX}-{name}"
        if full not in self.volumes:
            _engine("volume", "create", full)
            self.volumes.add(full)
        return full

    def run(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        volumes: Sequence[tuple[str, str]] = (),
    ) -> str:
        full = f"{PREFIX}-{name}"
        args = ["run", "-d", "--name", full, "--network", "host", "--init"]
        for key, value in env.items():
            args += ["-e", f"{key}={value}"]
        for source, target in volumes:
            args += ["-v", f"{self.volume(source)}:{target}"]
        self.names.append(full)
        _engine(*args, IMAGE, *argv)
        return full

    def remove(self, full: str) -> None:
        _engine("rm", "-f", full, check=False)

    def logs(self, full: str) -> str:
        result = _engine("logs", full, check=False)
        return (result.stdout + result.stderr)[-4000:]

    def cleanup(self) -> None:
        for full in self.names:
            _engine("rm", "-f", full, check=False)
        for volume in self.volumes:
            _engine("volume", "rm", "-f", volume, check=False)


def _wait(containers: Containers, name: str, url: str, timeout: float = 240) -> None:
    try:
        wait_http(url, timeout=timeout)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- {name} logs ---\n{containers.logs(name)}") from exc


@pytest.fixture(scope="module")
def image() -> str:
    missing = _engine_missing()
    if missing is not None:
        if REQUIRE:
            pytest.fail(f"IA_TEST_REQUIRE_CONTAINERS=1 but {missing}")
        pytest.skip(f"no usable container engine: {missing}")
    build = subprocess.run(
        [str(BUILD)],
        env={**os.environ, "IA_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return IMAGE


@pytest.fixture(scope="module")
def containers(image: str) -> Iterator[Containers]:
    handle = Containers()
    try:
        yield handle
    finally:
        handle.cleanup()


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {service: free_port() for service in COMPOSE_HOSTS}


@pytest.fixture(scope="module")
def mlflow(containers: Containers, ports: dict[str, int]) -> str:
    name = containers.run(
        "mlflow",
        _service_command("mlflow", ports),
        env=_service_environment("mlflow", ports),
        volumes=_service_volumes("mlflow"),
    )
    url = f"http://127.0.0.1:{ports['mlflow']}"
    _wait(containers, name, f"{url}/health")
    return url


def _api_environment(ports: dict[str, int]) -> dict[str, str]:
    env = _service_environment("api", ports)
    env.update(
        IA_HOST="127.0.0.1",  # host network: loopback only (compose binds 0.0.0.0 inside its net)
        IA_PORT=str(ports["api"]),
        IA_API_KEYS=KEY,
        IA_MODEL_REFRESH_INTERVAL="0.5",
    )
    return env


class Api:
    def __init__(self, containers: Containers, ports: dict[str, int]) -> None:
        self.containers = containers
        self.ports = ports
        self.url = f"http://127.0.0.1:{ports['api']}"
        self.name = ""
        self.start()

    def start(self) -> None:
        self.name = self.containers.run(
            f"api-{len(self.containers.names)}",
            _service_command("api", self.ports),
            env=_api_environment(self.ports),
            volumes=_service_volumes("api"),
        )
        _wait(self.containers, self.name, f"{self.url}/health")

    def recreate(self) -> None:
        """`docker compose up --force-recreate api`: a new container, the same volumes."""
        self.containers.remove(self.name)
        self.start()

    def exec(
        self, *argv: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        flags = [x for k, v in (env or {}).items() for x in ("-e", f"{k}={v}")]
        return _engine("exec", *flags, self.name, *argv, check=False, timeout=120)


@pytest.fixture(scope="module")
def api(containers: Containers, ports: dict[str, int], mlflow: str) -> Api:
    return Api(containers, ports)


# --- the image ---------------------------------------------------------------------------------


def test_image_builds_with_a_non_root_user_and_the_dockerfile_healthcheck(image: str) -> None:
    config = json.loads(_engine("image", "inspect", "--format", "{{json .Config}}", image).stdout)
    assert config["User"] == "app"
    assert config["Cmd"] == ["ia-continu", "serve"]
    # podman keeps HEALTHCHECK only in the docker image format (build-image.sh asks for it).
    health = json.loads(
        _engine("image", "inspect", "--format", "{{json .Config.Healthcheck}}", image).stdout
    )
    assert health["Test"] == ["CMD", *_dockerfile_healthcheck()]


def test_api_refuses_to_start_on_all_interfaces_without_api_keys(
    containers: Containers, ports: dict[str, int]
) -> None:
    env = _api_environment(ports)
    env.update(IA_HOST="0.0.0.0", IA_PORT=str(free_port()))
    del env["IA_API_KEYS"]
    name = f"{PREFIX}-refuse"
    containers.names.append(name)
    args = ["run", "--name", name, "--network", "host", "--init"]
    args += [x for k, v in env.items() for x in ("-e", f"{k}={v}")]
    result = _engine(*args, IMAGE, *_service_command("api", ports), check=False, timeout=180)
    assert result.returncode != 0
    assert "IA_API_KEYS" in result.stdout + result.stderr


# --- the API container against an MLflow container --------------------------------------------


def test_readme_tour_in_containers(api: Api, mlflow: str) -> None:
    key = {"X-API-Key": KEY}
    with httpx.Client(base_url=api.url, timeout=120) as http:
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert http.post("/generate", json={"samples": 1000}).status_code == 401
        generated = http.post("/generate", json={"samples": 1000, "seed": 7}, headers=key)
        assert generated.status_code == 200, generated.text
        assert generated.json()["samples_created"] == 1000
        retrained = http.post("/retrain", headers=key)
        assert retrained.status_code == 200, retrained.text
        assert retrained.json()["status"] == "success"
        version = retrained.json()["model_version"]
        predicted = http.post("/predict", json={"features": [0.5, -1.2]})
        assert predicted.status_code == 200, predicted.text
        assert predicted.json()["model_version"] == version
        assert predicted.json()["prediction"] in (0, 1)
        models = http.get("/models")
        assert models.status_code == 200
        assert version in json.dumps(models.json())
    # The training run and the registered version live in the MLflow container.
    registered = httpx.get(
        f"{mlflow}/api/2.0/mlflow/registered-models/get",
        params={"name": "ia_continu_logistic_regression"},
        timeout=30,
    )
    assert registered.status_code == 200, registered.text
    aliases = {a["alias"]: a["version"] for a in registered.json()["registered_model"]["aliases"]}
    assert "champion" in aliases


def test_api_runs_as_uid_10001_and_writes_only_to_its_volumes(api: Api) -> None:
    uids = api.exec("sh", "-c", "for s in /proc/[0-9]*/status; do grep '^Uid:' $s; done")
    assert uids.returncode == 0, uids.stderr
    assert {line.split()[1] for line in uids.stdout.splitlines()} == {"10001"}
    refused = api.exec("touch", "/app/.venv/written")
    assert refused.returncode != 0  # the code is root-owned
    # Everything the API wrote (database, models, logs) is on the volumes: the container's
    # own filesystem is unchanged (`diff` does not list mounted volumes).
    # The engine itself touches /etc (hosts, resolv.conf, hostname mounts); /tmp holds
    # MLflow's temporary copies of a model while it is logged. Nothing else may change.
    changed = _engine("diff", api.name).stdout.split()
    paths = [p for p in changed if p.startswith("/")]
    assert [p for p in paths if p not in ("/etc", "/tmp") and not p.startswith("/tmp/")] == []


def test_dockerfile_healthcheck_passes_inside_the_api_container(api: Api) -> None:
    argv = _dockerfile_healthcheck()
    passed = api.exec(*argv)
    assert passed.returncode == 0, passed.stderr
    # The same command against a port nothing listens on fails: the check can fail.
    failed = api.exec(*argv, env={"IA_PORT": str(free_port())})
    assert failed.returncode != 0


# --- Prefect server and worker ----------------------------------------------------------------


@pytest.mark.timeout(900)
def test_prefect_worker_container_runs_a_monitoring_flow_run(
    containers: Containers, ports: dict[str, int], api: Api
) -> None:
    server = containers.run(
        "prefect-server",
        _service_command("prefect-server", ports),
        env=_service_environment("prefect-server", ports),
        volumes=_service_volumes("prefect-server"),
    )
    prefect = f"http://127.0.0.1:{ports['prefect-server']}/api"
    _wait(containers, server, f"{prefect}/health")

    health_port = free_port()
    env = _service_environment("prefect-worker", ports)
    env.update(PREFECT_WORKER_WEBSERVER_PORT=str(health_port), IA_MONITOR_INTERVAL="3600")
    worker = containers.run(
        "prefect-worker",
        [_interpolate(str(p)) for p in _compose()["services"]["prefect-worker"]["command"]],
        env=env,
        volumes=_service_volumes("prefect-worker"),
    )
    # compose's worker healthcheck, its port translated.
    check = _compose()["services"]["prefect-worker"]["healthcheck"]["test"][1:]
    check = [str(a).replace(":8080/", f":{health_port}/") for a in check]
    deadline = time.monotonic() + 240
    while _engine("exec", worker, *check, check=False).returncode != 0:
        assert time.monotonic() < deadline, containers.logs(worker)
        time.sleep(2)

    with httpx.Client(base_url=prefect, timeout=30) as http:
        deployment = http.get("/deployments/name/ia-continu-monitoring/ia-continu-monitoring")
        assert deployment.status_code == 200, deployment.text
        deadline = time.monotonic() + 120
        while True:  # the server's SQLite may answer 503 while the worker's start-up writes
            created = http.post(f"/deployments/{deployment.json()['id']}/create_flow_run", json={})
            if created.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert created.status_code in (200, 201), created.text
        flow_run_id = created.json()["id"]
        deadline = time.monotonic() + 600
        while True:
            state = http.get(f"/flow_runs/{flow_run_id}").json()["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                break
            assert time.monotonic() < deadline, containers.logs(worker)
            time.sleep(3)
    assert state["type"] == "COMPLETED", containers.logs(worker)
    # The run was recorded in the database the API container serves (shared volume).
    history = httpx.get(f"{api.url}/monitoring/history", params={"limit": 50}, timeout=30).json()
    assert flow_run_id in {run["flow_run_id"] for run in history["items"]}
    # No scheduled run may change the champion while the next test recreates the API.
    containers.remove(worker)


# --- the same champion after the container is recreated ---------------------------------------


def test_recreated_api_container_serves_the_same_champion(api: Api) -> None:
    features = {"features": [0.5, -1.2]}
    before = httpx.post(f"{api.url}/predict", json=features, timeout=60).json()
    active_before = httpx.get(f"{api.url}/models", timeout=60).json()["active_version"]
    assert active_before == before["model_version"]
    api.recreate()
    after = httpx.post(f"{api.url}/predict", json=features, timeout=60).json()
    assert after["model_version"] == before["model_version"]
    assert after["prediction"] == before["prediction"]
    assert after["confidence"] == pytest.approx(before["confidence"])
    assert httpx.get(f"{api.url}/models", timeout=60).json()["active_version"] == active_before
