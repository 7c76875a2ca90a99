"""Bounded answers (issue 11, part 4): GET /models is paged, /metrics does not grow with
the number of model versions. On SQLite and PostgreSQL where the database matters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ia_continu.config import Settings

BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _params(version: str, i: int) -> str:
    return json.dumps({"version": version, "coef": [1.0 + i / 1000, -1.0], "intercept": 0.1})


def _store_models(engine: Any, count: int, *, active: int, start: int = 1) -> None:
    """``count`` stored versions v<start>..; v<active> is the champion."""
    from ia_continu.db import models as db_models

    for i in range(start, start + count):
        version = f"v{i}"
        db_models.insert_model(
            engine,
            db_models.ModelRecord(
                version=version,
                accuracy=0.8 + (i % 100) / 1000,
                training_samples=800,
                test_samples=200,
                created_at=T0 + timedelta(minutes=i),
                is_active=False,
                parameters=_params(version, i),
            ),
            activate=i == active,
        )


@pytest.fixture
def api(make_settings: Callable[..., Settings], database_url: str) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app

    settings = make_settings(database_url=database_url, warm_up_ml=False)
    with TestClient(create_app(settings)) as client:
        yield client


@BOTH
def test_models_are_paged_newest_first_with_the_champion_always_given(api: Any) -> None:
    engine = api.app.state.ia.engine
    _store_models(engine, 120, active=7)

    first = api.get("/models").json()
    assert first["total"] == 120
    assert (first["limit"], first["offset"]) == (50, 0)
    assert [m["version"] for m in first["models"]] == [f"v{i}" for i in range(120, 70, -1)]
    # The champion is on no page of the first two, yet always named and given whole.
    assert first["active_version"] == "v7"
    assert first["active_model"]["version"] == "v7"
    assert first["active_model"]["is_active"] is True

    pages: list[str] = []
    for offset in range(0, 120, 50):
        body = api.get("/models", params={"limit": 50, "offset": offset}).json()
        pages += [m["version"] for m in body["models"]]
        assert body["active_version"] == "v7"
    assert pages == [f"v{i}" for i in range(120, 0, -1)]  # every version exactly once
    assert [m["is_active"] for m in api.get("/models?limit=500").json()["models"]].count(True) == 1

    last = api.get("/models", params={"limit": 3, "offset": 118}).json()
    assert [m["version"] for m in last["models"]] == ["v2", "v1"]
    past = api.get("/models", params={"offset": 1000}).json()
    assert past["models"] == [] and past["total"] == 120 and past["active_version"] == "v7"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
    ],
)
def test_models_paging_rejects_bad_parameters_naming_the_field(
    api: Any, query: str, field: str
) -> None:
    r = api.get(f"/models?{query}")
    assert r.status_code == 422, r.text
    assert [e["loc"] for e in r.json()["detail"]] == [["query", field]]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_models_without_any_version(api: Any) -> None:
    body = api.get("/models").json()
    assert body == {
        "models": [],
        "active_version": None,
        "total": 0,
        "limit": 50,
        "offset": 0,
        "active_model": None,
    }


def _served_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("ia_served_model{")]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metrics_size_is_flat_after_200_activated_versions(api: Any) -> None:
    engine = api.app.state.ia.engine
    _store_models(engine, 200, active=1)
    for version in ("v2", "v3"):
        assert api.post(f"/models/{version}/activate").status_code == 200
    api.get("/metrics")  # the scrape itself is then a counted route, as later
    before = api.get("/metrics").text
    for i in range(4, 201):
        assert api.post(f"/models/v{i}/activate").status_code == 200
    after = api.get("/metrics").text
    assert _served_lines(after) == ['ia_served_model{version="v200"} 1.0']
    # Same series; only numbers (request counts, the champion's label) change width.
    assert len(after.splitlines()) == len(before.splitlines())
    assert len(after) <= len(before) * 1.05


def test_multiprocess_served_model_keeps_one_series_per_live_worker(tmp_path: Path) -> None:
    """prometheus_client's multiprocess mode, as `ia-continu serve` runs it: a worker that
    served 200 versions in turn leaves one series, and a dead worker's goes away."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    script = """
import os, sys
from ia_continu.api.metrics import AppMetrics
m = AppMetrics()
assert m.multiprocess
for i in range(1, 201):
    m.set_served_version(f"v{i}")
# another worker, dead since: its file is left behind
open(os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], "served_999999.txt"), "w").write("v1")
sys.stdout.write(m.render(None).decode())
"""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout
    served = _served_lines(out)
    assert len(served) == 1, served
    assert served[0].endswith('version="v200"} 1.0')
    assert not (metrics_dir / "served_999999.txt").exists()
