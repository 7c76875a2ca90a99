"""compose.yaml, the Dockerfile and deploy/: what can be checked without a Docker engine.

Nothing is built or started here (no engine on this machine). The files are parsed; every
command is parsed by the real command-line parser of the program it names (Typer for
ia-continu, click for mlflow, cyclopts for prefect); the healthcheck one-liners are run
against a real loopback HTTP server.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import cache
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port

ROOT = Path(__file__).parents[2]
VENV_BIN = Path(sys.executable).parent
SEED_VOLUMES = {"app_data", "app_models", "mlflow_data", "uptime-kuma-data", "prefect_data"}
APP_IMAGE_SERVICES = {"api", "mlflow", "prefect-server", "prefect-worker", "kuma-setup"}
DEFAULT_SERVICES = APP_IMAGE_SERVICES | {"uptime-kuma"}
ONE_SHOT = {"kuma-setup"}
OBSERVABILITY = {"prometheus", "alertmanager", "grafana"}
# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


@cache
def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


def _with_defaults(value: str) -> str:
    """Compose's interpolation with an empty environment: defaults, required ones filled."""

    def _one(match: re.Match[str]) -> str:
        op, arg = match.group("op"), match.group("arg")
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            return f"<{match.group('name')}>"
        return ""

    return VARIABLE.sub(_one, value)


def _command(service: str) -> list[str]:
    command = _services()[service]["command"]
    assert isinstance(command, list), f"{service}: exec form (a list), no shell parsing"
    return [_with_defaults(str(part)) for part in command]


def _published(service: str) -> list[tuple[str, str]]:
    """(host part with defaults, container port) of each published port."""
    result = []
    for spec in _services()[service].get("ports", []):
        host, _, container = _with_defaults(str(spec)).rpartition(":")
        result.append((host, container))
    return result


# --- services, ports, volumes -------------------------------------------------------------


def test_compose_defines_the_seed_services_and_the_two_profiles() -> None:
    services = _services()
    default = {name for name, s in services.items() if not s.get("profiles")}
    assert default == DEFAULT_SERVICES
    assert services["postgres"]["profiles"] == ["postgres"]
    for name in OBSERVABILITY:
        assert services[name]["profiles"] == ["observability"], name
    assert set(services) == DEFAULT_SERVICES | {"postgres"} | OBSERVABILITY


def test_compose_publishes_the_seed_ports() -> None:
    assert _published("api") == [("9000", "9000")]
    assert _published("mlflow") == [("127.0.0.1:5000", "5000")]
    assert _published("prefect-server") == [("127.0.0.1:4200", "4200")]
    assert _published("uptime-kuma") == [("3001", "3001")]
    assert _published("prometheus") == [("127.0.0.1:9090", "9090")]
    assert _published("alertmanager") == [("127.0.0.1:9093", "9093")]
    assert _published("grafana") == [("127.0.0.1:3000", "3000")]
    for name in ("prefect-worker", "kuma-setup", "postgres"):
        assert "ports" not in _services()[name], name


def test_compose_api_can_scale_without_conflicts() -> None:
    services = _services()
    assert not [n for n, s in services.items() if "container_name" in s]
    # The host side of the API's port is a variable (a range such as 9000-9002 when
    # scaled), and no other service takes a host port of that range.
    [spec] = services["api"]["ports"]
    assert spec.startswith("${API_PUBLISH_PORTS:-9000}:")
    others = [host for name in services if name != "api" for host, _ in _published(name)]
    assert not [h for h in others if h.rsplit(":", 1)[-1] in {"9000", "9001", "9002"}]


def test_compose_declares_and_mounts_the_named_volumes() -> None:
    declared = set(_compose()["volumes"])
    assert declared >= SEED_VOLUMES
    used = {
        mount.split(":")[0]
        for s in _services().values()
        for mount in s.get("volumes", [])
        if not mount.startswith((".", "/"))
    }
    assert used == declared  # nothing undeclared, nothing unused
    mounts = {name: set(s.get("volumes", [])) for name, s in _services().items()}
    app = {"app_data:/app/data", "app_models:/app/data/models"}
    assert app <= mounts["api"] and app <= mounts["prefect-worker"]
    assert "mlflow_data:/mlflow" in mounts["mlflow"]
    assert "prefect_data:/prefect" in mounts["prefect-server"]
    assert "uptime-kuma-data:/app/data" in mounts["uptime-kuma"]
    assert "postgres_data:/var/lib/postgresql/data" in mounts["postgres"]


def test_compose_bind_mounts_exist_in_the_repository() -> None:
    for name, service in _services().items():
        for mount in service.get("volumes", []):
            if mount.startswith("."):
                assert (ROOT / mount.split(":")[0]).exists(), (name, mount)


# --- healthchecks and start order -------------------------------------------------------------


def test_compose_every_long_running_service_has_a_healthcheck() -> None:
    for name, service in _services().items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            assert "healthcheck" not in service
            continue
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), name


def test_compose_depends_on_waits_for_healthy_services() -> None:
    services = _services()
    edges = {}
    for name, service in services.items():
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: long syntax, with a condition"
        for dep, spec in deps.items():
            assert spec["condition"] == "service_healthy", (name, dep)
            assert "healthcheck" in services[dep], (name, dep)
            # A profile service is only optional for the services that run without it.
            dep_profiles = services[dep].get("profiles")
            optional = bool(dep_profiles) and dep_profiles != service.get("profiles")
            assert spec.get("required", True) is (not optional), (name, dep)
        edges[name] = set(deps)
    assert edges["api"] == {"mlflow", "postgres"}
    assert edges["mlflow"] == {"postgres"}
    assert edges["prefect-worker"] == {"prefect-server", "mlflow", "api", "postgres"}
    assert edges["kuma-setup"] == {"uptime-kuma", "api"}
    assert edges["prometheus"] == {"api"}
    assert edges["grafana"] == {"prometheus"}
    _assert_acyclic(edges)


def _assert_acyclic(edges: dict[str, set[str]]) -> None:
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, f"dependency cycle: {' -> '.join((*path, node))}"
        if node not in done:
            for nxt in edges.get(node, ()):
                visit(nxt, (*path, node))
            done.add(node)

    for node in edges:
        visit(node, ())


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"status":"ok"}'
        self.send_response(200 if self.path.endswith(("/health", "/api/health")) else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def health_server() -> Iterator[int]:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("service", ["api", "mlflow", "prefect-server", "prefect-worker"])
def test_compose_python_healthchecks_pass_on_200_and_fail_when_down(
    service: str, health_server: int
) -> None:
    expected_port = {"api": 9000, "mlflow": 5000, "prefect-server": 4200, "prefect-worker": 8080}
    test = _services()[service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    code = test[3]
    assert f"http://127.0.0.1:{expected_port[service]}/" in code
    # The same one-liner, pointed at a live server, then at a port where nothing listens.
    up = code.replace(f":{expected_port[service]}/", f":{health_server}/")
    down = code.replace(f":{expected_port[service]}/", f":{free_port()}/")
    assert subprocess.run([sys.executable, "-c", up], capture_output=True).returncode == 0
    assert subprocess.run([sys.executable, "-c", down], capture_output=True).returncode != 0


# --- commands: real subcommands of real executables ---------------------------------------------


@pytest.mark.parametrize("service", sorted(APP_IMAGE_SERVICES))
def test_compose_commands_use_executables_of_the_image(service: str) -> None:
    assert _services()[service]["image"] == "${APP_IMAGE:-ia-continu:2.0.0}"
    executable = _command(service)[0]
    assert executable in {"ia-continu", "mlflow", "prefect"}
    assert (VENV_BIN / executable).exists(), f"{executable} is not installed by uv.lock"


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("api", ["serve"]),
        ("prefect-worker", ["worker", "start"]),
        ("kuma-setup", ["kuma", "setup"]),
    ],
)
def test_compose_ia_continu_commands_parse_with_the_cli(service: str, path: list[str]) -> None:
    import click
    import typer.main

    from ia_continu.cli import app

    argv = _command(service)
    assert argv[0] == "ia-continu" and argv[1 : 1 + len(path)] == path
    command: click.Command = typer.main.get_command(app)
    rest = argv[1:]
    while isinstance(command, click.Group):
        command = command.commands[rest.pop(0)]
    # Parsing validates every option name and value type; nothing is run.
    with command.make_context(" ".join(argv[:3]), rest) as ctx:
        assert ctx.params is not None


def test_compose_mlflow_server_command() -> None:
    from ia_continu.ml.warm_gate import wait_until_warm

    # An app made by an earlier test in this process may still be importing mlflow in its
    # warm-up thread: importing it here at the same time can meet a partially initialised
    # module (seen after tests/integration/test_dashboard.py).
    wait_until_warm()
    from mlflow.cli import cli
    from mlflow.server.security_utils import is_allowed_host_header

    argv = _command("mlflow")
    assert argv[:2] == ["mlflow", "server"]
    params = cli.commands["server"].make_context("server", argv[2:]).params
    assert params["host"] == "0.0.0.0"
    assert params["port"] == 5000
    assert params["workers"] == "1"
    assert params["backend_store_uri"] == "sqlite:////mlflow/mlflow.db"
    assert params["serve_artifacts"] is True
    assert params["artifacts_destination"] == "/mlflow/artifacts"
    assert _services()["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # MLflow's own Host-header check, with the hosts the other containers and users send.
    allowed = params["allowed_hosts"].split(",")
    for pattern in ("mlflow", "mlflow:*", "localhost:*", "127.0.0.1:*"):
        assert pattern in allowed
    for host in ("mlflow", "mlflow:5000", "localhost:5000", "127.0.0.1:5000", "localhost"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example:5000")


def test_compose_prefect_server_command() -> None:
    from prefect.cli.server import server_app

    argv = _command("prefect-server")
    assert argv[:3] == ["prefect", "server", "start"]
    _, bound, _ = server_app.parse_args(argv[2:], exit_on_error=False, print_error=False)
    assert bound.arguments == {"host": "0.0.0.0", "port": 4200}
    env = _services()["prefect-server"]["environment"]
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert env["PREFECT_HOME"] == "/prefect"


def test_compose_prefect_worker_execs_a_valid_prefect_worker_command() -> None:
    from prefect.cli.worker import worker_app

    from ia_continu.ops.prefect_worker import worker_command

    argv = worker_command(pool="ia-continu")
    _, bound, _ = worker_app.parse_args(argv[2:], exit_on_error=False, print_error=False)
    assert bound.arguments["work_pool_name"] == "ia-continu"
    assert bound.arguments["worker_type"] == "process"
    assert bound.arguments["with_healthcheck"] is True  # the compose healthcheck's :8080
    assert _command("prefect-worker")[-2:] == ["--pool", "ia-continu"]
    env = _services()["prefect-worker"]["environment"]
    assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_compose_api_binds_all_interfaces_and_requires_api_keys() -> None:
    env = _services()["api"]["environment"]
    assert env["IA_HOST"] == "0.0.0.0"
    assert env["IA_PORT"] == "9000"
    assert env["IA_DATA_DIR"] == "/app/data"
    assert env["IA_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["IA_API_KEYS"].startswith("${IA_API_KEYS:?")
    assert _services()["api"]["env_file"] == ".env"


def test_compose_kuma_setup_provisions_the_api_health_monitor() -> None:
    kuma = _services()["uptime-kuma"]
    assert kuma["image"] == "louislam/uptime-kuma:1"
    argv = _command("kuma-setup")
    assert argv[argv.index("--url") + 1] == "http://uptime-kuma:3001"
    assert argv[argv.index("--target") + 1] == "http://api:9000"
    env = _services()["kuma-setup"]["environment"]
    assert env["IA_KUMA_USERNAME"].startswith("${IA_KUMA_USERNAME:?")
    assert env["IA_KUMA_PASSWORD"].startswith("${IA_KUMA_PASSWORD:?")
    assert env["IA_DISCORD_WEBHOOK_URL"] == "${IA_DISCORD_WEBHOOK_URL:-}"


# --- profiles ---------------------------------------------------------------------------------


def _env_example_block(prefix: str) -> dict[str, str]:
    values = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#? ?([A-Z_]+)=(.*)", line.strip())
        if match and match.group(1).startswith(prefix):
            values[match.group(1)] = match.group(2).split("#")[0].strip()
    return values


def test_compose_postgres_profile_moves_both_databases() -> None:
    import sqlalchemy as sa

    services = _services()
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    # The switch: compose hands APP_DATABASE_URL to the app, MLFLOW_BACKEND_STORE_URI to MLflow.
    assert services["api"]["environment"]["IA_DATABASE_URL"] == "${APP_DATABASE_URL:-}"
    assert services["prefect-worker"]["environment"]["IA_DATABASE_URL"] == "${APP_DATABASE_URL:-}"
    raw = services["mlflow"]["command"]
    assert raw[raw.index("--backend-store-uri") + 1].startswith("${MLFLOW_BACKEND_STORE_URI:-")
    # .env.example's block points both at the postgres service, with the image's driver.
    example = _env_example_block("")
    env = {
        "POSTGRES_USER": example["POSTGRES_USER"],
        "POSTGRES_PASSWORD": "pw",
        "POSTGRES_DB": example["POSTGRES_DB"],
    }

    def expand(value: str) -> str:
        return VARIABLE.sub(lambda m: env[m.group("name")], value)

    app_url = sa.make_url(expand(example["APP_DATABASE_URL"]))
    mlflow_url = sa.make_url(expand(example["MLFLOW_BACKEND_STORE_URI"]))
    for url in (app_url, mlflow_url):
        assert (url.drivername, url.host, url.port, url.password) == (
            "postgresql+psycopg",
            "postgres",
            5432,
            "pw",
        )
    assert app_url.database == example["POSTGRES_DB"]
    # The second database exists because the image's init script creates it.
    [init] = (ROOT / "deploy/postgres/initdb").glob("*.sql")
    assert f"CREATE DATABASE {mlflow_url.database};" in init.read_text()


def test_compose_observability_profile_scrapes_every_api_replica() -> None:
    prometheus = _services()["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    config_mount = next(m for m in prometheus["volumes"] if "prometheus.yml" in m)
    source, target = config_mount.split(":")[:2]
    assert f"--config.file={target}" in prometheus["command"]
    config = yaml.safe_load((ROOT / source).read_text())
    [job] = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    [sd] = job["dns_sd_configs"]
    assert (sd["names"], sd["type"], sd["port"]) == (["api"], "A", 9000)
    # The job name the alert rules select on.
    assert job["job_name"] == "ia-continu-api"
    assert (
        'job="ia-continu-api"'
        in (ROOT / "deploy/prometheus/rules/ia-continu.rules.yml").read_text()
    )


def _mounts(service: str) -> dict[str, str]:
    """Container path -> repository path of a service's bind mounts."""
    result = {}
    for mount in _services()[service].get("volumes", []):
        if mount.startswith("."):
            source, target = mount.split(":")[:2]
            result[target] = source
    return result


def test_compose_prometheus_loads_the_rules_and_sends_to_alertmanager() -> None:
    from fnmatch import fnmatch

    mounts = _mounts("prometheus")
    config = yaml.safe_load((ROOT / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    # rule_files are relative to the config file: each glob, resolved in the container,
    # must land in a mounted directory holding the project's rules.
    [pattern] = config["rule_files"]
    in_container = f"/etc/prometheus/{pattern}"
    directory, _, glob = in_container.rpartition("/")
    rules_dir = ROOT / mounts[directory]
    matched = [p.name for p in rules_dir.iterdir() if fnmatch(p.name, glob)]
    assert matched == ["ia-continu.rules.yml"]
    [manager] = config["alerting"]["alertmanagers"]
    [targets] = [c["targets"] for c in manager["static_configs"]]
    assert targets == ["alertmanager:9093"]
    assert _published("alertmanager")[0][1] == "9093"


def test_compose_alertmanager_reads_the_discord_webhook_from_env() -> None:
    alertmanager = _services()["alertmanager"]
    assert alertmanager["image"].startswith("prom/alertmanager:v0.")
    # webhook_url_file for Discord needs Alertmanager 0.26 or later.
    minor = int(alertmanager["image"].split(":v0.")[1].split(".")[0])
    assert minor >= 26
    mounts = _mounts("alertmanager")
    config_path = next(
        a.split("=", 1)[1] for a in alertmanager["command"] if a.startswith("--config.file=")
    )
    config = yaml.safe_load((ROOT / mounts[config_path]).read_text())
    [discord] = config["receivers"][0]["discord_configs"]
    # The secret named in the service, created from .env's IA_DISCORD_WEBHOOK_URL, is
    # the file the config reads.
    [secret] = alertmanager["secrets"]
    assert discord["webhook_url_file"] == f"/run/secrets/{secret}"
    assert _compose()["secrets"][secret] == {"environment": "IA_DISCORD_WEBHOOK_URL"}
    assert re.search(r"^#? ?IA_DISCORD_WEBHOOK_URL=$", (ROOT / ".env.example").read_text(), re.M)


def test_compose_grafana_is_provisioned_from_files_with_a_required_password(tmp_path: Path) -> None:
    grafana = _services()["grafana"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "${GRAFANA_ANONYMOUS_ENABLED:-false}"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    mounts = _mounts("grafana")
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert datasource["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((provisioning / "dashboards/ia-continu.yml").read_text())[
        "providers"
    ]
    dashboards = ROOT / mounts[provider["options"]["path"]]
    assert sorted(p.name for p in dashboards.glob("*.json")) == [
        "ia-continu-loop.json",
        "ia-continu-model.json",
        "ia-continu-service.json",
    ]
    # The entrypoint refuses an empty password (never Grafana's admin/admin), run here
    # with a real sh; /run.sh (the image's own entrypoint) stands for a marker script.
    entrypoint = grafana["entrypoint"]
    assert entrypoint[:2] == ["/bin/sh", "-c"]
    script = entrypoint[2].replace("$$", "$").replace("/run.sh", f"{tmp_path}/run.sh")
    (tmp_path / "run.sh").write_text("#!/bin/sh\necho grafana started\n")
    (tmp_path / "run.sh").chmod(0o755)

    def run(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/sh", "-c", script],
            env={"GF_SECURITY_ADMIN_PASSWORD": password, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
        )

    refused = run("")
    assert refused.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr
    started = run("s3cret-pw")
    assert started.returncode == 0 and started.stdout == "grafana started\n"


# --- secrets --------------------------------------------------------------------------------------


SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEYS|WEBHOOK|_KEY$")


def test_compose_has_no_hard_coded_secrets() -> None:
    text = (ROOT / "compose.yaml").read_text()
    assert not re.search(r"://[^/\s:@${}]+:[^@\s${}]+@", text), "credentials in a URL"
    for name, service in _services().items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), name
        for key, value in environment.items():
            if SECRET_NAME.search(key):
                value = str(value)
                assert value == "" or re.fullmatch(r"\$\{[A-Z_]+(:?[-?][^}]*)?\}", value), (
                    name,
                    key,
                )


def test_compose_variables_are_documented_in_env_example() -> None:
    example = (ROOT / ".env.example").read_text()
    names = {m.group("name") for m in VARIABLE.finditer((ROOT / "compose.yaml").read_text())}
    assert names
    for name in names:
        assert re.search(rf"^#? ?{name}=", example, re.M), f"{name} missing from .env.example"


def test_env_example_leaves_every_secret_empty() -> None:
    for line in (ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"#? ?([A-Z_]+)=(.*)", line.strip())
        if match and SECRET_NAME.search(match.group(1)):
            assert match.group(2).strip() == "", line


# --- Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    result = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            result.append((instruction.upper(), " ".join(args.split())))
    return result


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for instruction, args in _dockerfile():
        if instruction == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            stages[current] = []
        elif current is not None:
            stages[current].append((instruction, args))
    return stages


def test_dockerfile_builds_with_uv_from_the_lockfile_in_a_separate_stage() -> None:
    stages = _stages()
    assert list(stages) == ["builder", "runtime"]
    builder = stages["builder"]
    runs = [args for instr, args in builder if instr == "RUN"]
    syncs = [r for r in runs if "uv sync" in r]
    assert syncs and all(
        {"--frozen", "--no-dev", "--compile-bytecode"} <= set(shlex.split(r)) for r in syncs
    )
    assert any(i == "COPY" and "uv.lock" in a for i, a in builder)
    assert not any(i == "RUN" and "uv" in a for i, a in stages["runtime"]), "no uv at run time"
    assert any(i == "COPY" and a.startswith("--from=builder") for i, a in stages["runtime"])


def test_dockerfile_runs_as_a_non_root_user_with_a_health_check() -> None:
    runtime = _stages()["runtime"]
    users = [a for i, a in runtime if i == "USER"]
    assert users and users[-1] not in {"root", "0", "0:0"}
    [health] = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert "/health" in health
    [cmd] = [a for i, a in runtime if i == "CMD"]
    assert json.loads(cmd) == ["ia-continu", "serve"]


def test_dockerfile_healthcheck_command_passes_on_200_and_fails_when_down(
    health_server: int,
) -> None:
    [health] = [a for i, a in _stages()["runtime"] if i == "HEALTHCHECK"]
    argv = json.loads(health.split(" CMD ", 1)[1])
    assert argv[0] == "python"

    def run(port: int) -> int:
        env = {"IA_PORT": str(port)}
        return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True).returncode

    assert run(health_server) == 0
    assert run(free_port()) != 0


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_image() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".env", ".venv", ".git", "data", "mlflow", "*.db"} <= ignored
    for needed in ("pyproject.toml", "uv.lock", "README.md", "src"):
        assert needed not in ignored
