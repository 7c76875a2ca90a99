"""/predict is served by a plain ASGI endpoint (routes/core.py ``PredictEndpoint``) placed
first in the route list; the FastAPI route it shadows documents /predict. Both must answer
every request alike: the same statuses, headers, bodies (volatile fields aside), metrics
labels and logged rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ia_continu.api.app import create_app
from ia_continu.config import Settings
from ia_continu.ml.predictor import LinearModel

MODEL = LinearModel(version="v1", coef=(1.7, -0.9), intercept=0.2)
JSON = {"content-type": "application/json"}
CASES: list[tuple[str, str, dict[str, str], bytes | None]] = [
    ("POST", "/predict", JSON, b'{"features": [0.5, -1.2]}'),
    ("POST", "/predict", JSON, b'{"features": [-2.25, 3]}'),
    ("POST", "/predict", JSON, b'\xef\xbb\xbf{"features": [0.5, -1.2]}'),
    ("POST", "/predict", JSON, b""),
    ("POST", "/predict", JSON, b"   "),
    ("POST", "/predict", JSON, b'{"features": [0.5]}'),
    ("POST", "/predict", JSON, b'{"features": [0.5, "x"]}'),
    ("POST", "/predict", JSON, b'{"features": [1e400, 1]}'),
    ("POST", "/predict", JSON, b"{bad"),
    ("POST", "/predict", JSON, b"[]"),
    ("POST", "/predict", {"content-type": "text/plain"}, b'{"features": [0.5, -1.2]}'),
    ("POST", "/predict", JSON, b'{"features": [0.5, -1.2], "pad": "' + b"x" * 3000 + b'"}'),
    ("POST", "/predict/", JSON, b'{"features": [0.5, -1.2]}'),
    ("POST", "/predict?verbose=1", JSON, b'{"features": [0.5, -1.2]}'),
    ("GET", "/predict", {}, None),
    ("HEAD", "/predict", {}, None),
    ("PUT", "/predict", JSON, b"{}"),
    ("DELETE", "/predict", {}, None),
]
VOLATILE = ("timestamp", "prediction_id")


def _answers(client: Any) -> list[tuple[int, list[tuple[str, str]], Any]]:
    out = []
    for method, path, headers, body in CASES:
        r = client.request(method, path, headers=headers, content=body, follow_redirects=False)
        try:
            content: Any = r.json()
        except ValueError:
            content = r.content
        if isinstance(content, dict):
            for key in VOLATILE:
                if key in content:
                    assert isinstance(content[key], str) and content[key]
                    content[key] = "<volatile>"
        # The timestamp's length varies (no fraction on a whole second).
        shown = [(k, v) for k, v in r.headers.items() if not (k == "content-length" and body)]
        out.append((r.status_code, sorted(shown), content))
    return out


def _request_counts(client: Any) -> list[str]:
    text = client.get("/metrics").text
    return sorted(
        line
        for line in text.splitlines()
        if line.startswith(("ia_http_requests_total{", "ia_predictions_total{"))
        and "/metrics" not in line
    )


@pytest.fixture
def make_client(make_settings: Callable[..., Settings], tmp_path: Any) -> Iterator[Any]:
    opened: list[TestClient] = []

    def _make(name: str, *, via_fastapi: bool, with_model: bool) -> TestClient:
        settings = make_settings(
            database_url=f"sqlite:///{tmp_path / (name + '.db')}",
            data_dir=tmp_path / name,
            max_body_bytes=2000,
        )
        app = create_app(settings)
        hot = app.router.routes[0]
        assert getattr(hot, "path", None) == "/predict"
        assert type(hot.endpoint).__name__ == "PredictEndpoint"  # type: ignore[attr-defined]
        if via_fastapi:  # the documented FastAPI route answers instead
            app.router.routes.remove(hot)
        client = TestClient(app)
        client.__enter__()
        opened.append(client)
        if with_model:
            app.state.ia.serve(MODEL)
        return client

    yield _make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.mark.parametrize("with_model", [True, False], ids=["model", "no-model"])
def test_asgi_endpoint_answers_like_the_fastapi_route(make_client: Any, with_model: bool) -> None:
    hot = make_client("hot", via_fastapi=False, with_model=with_model)
    reference = make_client("reference", via_fastapi=True, with_model=with_model)
    hot_answers, reference_answers = _answers(hot), _answers(reference)
    for case, mine, theirs in zip(CASES, hot_answers, reference_answers, strict=True):
        assert mine == theirs, case
    statuses = {status for status, _, _ in hot_answers}
    assert 200 in statuses if with_model else 503 in statuses
    assert {405, 413, 415, 422} <= statuses
    assert _request_counts(hot) == _request_counts(reference)


def test_asgi_endpoint_logs_what_it_answers(
    make_settings: Callable[..., Settings], tmp_path: Any
) -> None:
    import sqlalchemy as sa

    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'logged.db'}")
    app = create_app(settings)
    with TestClient(app) as client:
        app.state.ia.serve(MODEL)
        answers = [
            client.post("/predict", json={"features": [x / 10, -x / 7]}).json() for x in range(20)
        ]
        engine = app.state.ia.engine
    # The lifespan's shutdown wrote the queue; the engine is disposed, not unusable.
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT prediction_id, prediction, confidence, model_version FROM predictions")
        ).all()
    logged = {r.prediction_id: (r.prediction, r.confidence, r.model_version) for r in rows}
    assert len(logged) == 20
    for x, answer in enumerate(answers):
        expected = (*MODEL.predict_one(x / 10, -x / 7), "v1")
        assert (answer["prediction"], answer["confidence"], answer["model_version"]) == expected
        assert logged[answer["prediction_id"]] == expected
