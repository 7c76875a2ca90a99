"""Schemathesis against the app's own OpenAPI schema: every operation, valid and invalid
input, on a real uvicorn server with a trained model, on SQLite and PostgreSQL.

Checks: no 5xx, every status code documented, every body conforming to its schema,
invalid input rejected, valid input accepted. Operations added later are covered too:
the schema is read from the app, not listed here.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from ia_continu.api.app import create_app
from ia_continu.config import Settings
from tests.conftest import FIXED_NOW, POSTGRES_ADMIN_URL, LiveServer

EXAMPLES = 100
# A valid /retrain trains and registers a model in MLflow (~1 s each): full coverage on
# SQLite, a bounded share on PostgreSQL, whose retrain SQL is the same few statements.
RETRAIN_EXAMPLES_POSTGRES = 30
# Built without starting anything: create_app opens nothing until its lifespan runs.
schema = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())
calls: Counter[tuple[str, str]] = Counter()


def _too_many_buckets(query: dict[str, Any]) -> bool:
    minutes = int(query.get("minutes", 60))
    return minutes * 60 / int(query.get("bucket_seconds", 60)) > 10_080


def _performance_window_rule(query: dict[str, Any]) -> bool:
    # since < until and at most 90 days between them (stated in the description).
    return "since" in query or "until" in query


def _performance_buckets_rule(query: dict[str, Any]) -> bool:
    # The window rule, and at most 2,000 buckets (the default window is 7 days).
    buckets = 7 * 86_400 / int(query.get("bucket_seconds", 3600))
    return _performance_window_rule(query) or buckets > 2_000


# Rules OpenAPI cannot express (a relation between two parameters, stated in the
# operation's description): the only 422s a schema-valid request may get there.
CROSS_PARAMETER_RULES = {
    "GET /predictions/timeseries": _too_many_buckets,
    "GET /predictions/performance": _performance_window_rule,
    "GET /predictions/performance/timeseries": _performance_buckets_rule,
}


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def fuzz_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'ia.db'}"
        return
    if not request.getfixturevalue("postgres_available"):
        pytest.skip("PostgreSQL not reachable")
    # postgres_url is per test; one schema for the whole module here.
    name = f"t_fuzz_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    url = sa.make_url(POSTGRES_ADMIN_URL).update_query_dict({"options": f"-csearch_path={name}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module")
def fuzz_server(
    fuzz_database: str, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, LiveServer]]:
    data_dir: Path = tmp_path_factory.mktemp("fuzz-data")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=data_dir,
        database_url=fuzz_database,
        mlflow_tracking_uri=mlflow_server,
        model_name=f"fuzz_{uuid.uuid4().hex[:8]}",
        mlflow_experiment=f"fuzz_{uuid.uuid4().hex[:8]}",
        timezone="UTC",
    )
    with LiveServer(create_app(settings, clock=lambda: FIXED_NOW)) as server:
        # A dataset and a served model: the fuzzer then reaches the success paths too.
        assert httpx.post(f"{server.url}/generate", json={"samples": 500}).status_code == 200
        assert httpx.post(f"{server.url}/retrain", timeout=120).status_code == 200
        yield sa.make_url(fuzz_database).get_backend_name(), server


@schema.parametrize()
@hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    # The server fixture is shared on purpose; the data generated is mostly invalid.
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
    ],
)
def test_api_conforms_to_its_openapi_schema(
    case: schemathesis.Case, fuzz_server: tuple[str, LiveServer]
) -> None:
    backend, server = fuzz_server
    operation = f"{case.method} {case.path}"
    if (
        backend == "postgresql"
        and operation == "POST /retrain"
        and calls[(backend, operation)] >= RETRAIN_EXAMPLES_POSTGRES
    ):
        return
    calls[(backend, operation)] += 1
    rule = CROSS_PARAMETER_RULES.get(operation)
    if rule is None:
        response = case.call_and_validate(base_url=server.url, timeout=120)
    else:
        response = case.call_and_validate(
            base_url=server.url, timeout=120, excluded_checks=[positive_data_acceptance]
        )
        if case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE:
            # Schema-valid: accepted, unless it breaks the rule the schema cannot state.
            assert response.status_code == 200 or (
                response.status_code == 422 and rule(dict(case.query or {}))
            ), (case.query, response.text)
    assert response.status_code < 500


def test_fuzz_ran_enough_examples_per_operation_with_a_body() -> None:
    ran = {op for _, op in calls}
    with_body = {
        f"{method.upper()} {path}"
        for path, item in schema.raw_schema["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "requestBody" in op
    }
    if not ran:
        pytest.skip("the fuzz tests were not selected in this run")
    for backend in {b for b, _ in calls}:
        for op in with_body & ran:
            bounded = backend == "postgresql" and op == "POST /retrain"
            expected = RETRAIN_EXAMPLES_POSTGRES if bounded else EXAMPLES
            assert calls[(backend, op)] >= expected, (backend, op, calls[(backend, op)])
