"""API keys through the real app: every write needs X-API-Key, reads and /predict stay open.

The protected operations are enumerated from the app's own OpenAPI document, so routes
added later by other modules are checked by the same tests.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ia_continu.config import Settings
from tests.conftest import free_port

KEY = "test-key-4f1c9a0e7b2d4c55"
OTHER_KEY = "second-key-a8d3e6b1f09c27"
WRONG_KEY = "wrong-key-0000000000000000"
OPEN_WRITES = {("post", "/predict"), ("post", "/predict/batch")}


def _client(settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def keyed_settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    return make_settings(
        database_url=f"sqlite:///{tmp_path / 'keys.db'}", api_keys=f"{KEY},{OTHER_KEY}"
    )


@pytest.fixture
def keyed_client(keyed_settings: Settings) -> Iterator[Any]:
    yield from _client(keyed_settings)


def _operations(client: Any) -> list[tuple[str, str, dict[str, Any]]]:
    paths = client.get("/openapi.json").json()["paths"]
    return [
        (method, path, operation)
        for path, item in paths.items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def _expected_protected(method: str, path: str, *, protect_predict: bool = False) -> bool:
    if method == "get":
        return False
    return protect_predict or (method, path) not in OPEN_WRITES


def _call(client: Any, method: str, path: str, key: str | None) -> Any:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    # A malformed body: an accepted key gets a 422 (or the route's own error) without the
    # route doing any work for routes that read a body.
    content = None if method == "get" else "{not json"
    return client.request(method.upper(), _concrete(path), content=content, headers=headers)


def test_api_keys_protect_every_write_route(keyed_client: Any) -> None:
    operations = _operations(keyed_client)
    protected = [(m, p) for m, p, _ in operations if _expected_protected(m, p)]
    assert {("post", "/generate"), ("post", "/retrain"), ("post", "/evaluate")} <= set(protected)
    assert ("post", "/models/{version}/activate") in protected
    for method, path in protected:
        missing = _call(keyed_client, method, path, None)
        assert missing.status_code == 401, (method, path)
        assert missing.json() == {"detail": "missing API key: send it in the X-API-Key header"}
        wrong = _call(keyed_client, method, path, WRONG_KEY)
        assert wrong.status_code == 401, (method, path)
        assert wrong.json() == {"detail": "invalid API key in the X-API-Key header"}
        for key in (KEY, OTHER_KEY):
            assert _call(keyed_client, method, path, key).status_code != 401, (method, path)


def test_api_keys_leave_reads_and_predict_open(keyed_client: Any) -> None:
    for method, path, _ in _operations(keyed_client):
        if not _expected_protected(method, path):
            assert _call(keyed_client, method, path, None).status_code != 401, (method, path)
    for path in ("/health", "/docs", "/openapi.json", "/metrics", "/models"):
        assert keyed_client.get(path).status_code == 200, path
    r = keyed_client.post("/predict", json={"features": [0.1, 0.2]})
    assert r.status_code == 503  # no model yet, but not refused
    assert keyed_client.post("/predict/", json={"features": [0.1, 0.2]}).status_code != 401


def test_api_keys_allow_real_write_with_key(keyed_client: Any) -> None:
    r = keyed_client.post("/generate", json={"samples": 200}, headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json()["samples_created"] == 200
    r = keyed_client.post("/generate", json={"samples": 200}, headers={"X-API-Key": KEY[:-1]})
    assert r.status_code == 401


def test_api_keys_protect_routes_added_after_the_app_is_built(keyed_settings: Settings) -> None:
    from fastapi import APIRouter
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app

    app = create_app(keyed_settings)
    late = APIRouter()
    calls: list[str] = []

    @late.post("/late/{item}/trigger")
    def trigger(item: str) -> dict[str, str]:
        calls.append(item)
        return {"item": item}

    @late.delete("/late/{item}")
    def remove(item: str) -> dict[str, str]:
        calls.append(item)
        return {"item": item}

    app.include_router(late)
    with TestClient(app) as client:
        assert client.post("/late/a/trigger").status_code == 401
        assert client.delete("/late/b").status_code == 401
        assert calls == []
        assert client.post("/late/c/trigger", headers={"X-API-Key": KEY}).json() == {"item": "c"}
        assert calls == ["c"]
        operation = client.get("/openapi.json").json()["paths"]["/late/{item}/trigger"]["post"]
        assert "401" in operation["responses"]


def test_api_keys_leave_404_and_405_to_the_router(keyed_client: Any) -> None:
    # No endpoint would run: the answer is the same as without keys, and no key is asked.
    assert keyed_client.put("/generate").status_code == 405
    assert keyed_client.delete("/models").status_code == 405
    assert keyed_client.request("TRACE", "/health").status_code == 405
    assert keyed_client.post("/nope").status_code == 404
    redirect = keyed_client.post("/generate/", follow_redirects=False)
    assert redirect.status_code == 307
    assert keyed_client.post("/generate/", json={"samples": 200}).status_code == 401


def test_api_keys_openapi_documents_401_on_exactly_protected(keyed_client: Any) -> None:
    schema = keyed_client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["ApiKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schema["components"]["securitySchemes"]["ApiKeyHeader"]["description"],
    }
    for method, path, operation in _operations(keyed_client):
        protected = _expected_protected(method, path)
        assert ("401" in operation["responses"]) is protected, (method, path)
        assert (operation.get("security") == [{"ApiKeyHeader": []}]) is protected, (method, path)


def test_api_keys_protect_predict_when_asked(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'p.db'}", api_keys=KEY, protect_predict=True
    )
    for client in _client(settings):
        assert client.post("/predict", json={"features": [0.1, 0.2]}).status_code == 401
        ok = client.post("/predict", json={"features": [0.1, 0.2]}, headers={"X-API-Key": KEY})
        assert ok.status_code == 503  # accepted; no model yet
        assert client.get("/health").status_code == 200
        assert client.get("/metrics").status_code == 200
        predict = client.get("/openapi.json").json()["paths"]["/predict"]["post"]
        assert "401" in predict["responses"]


def test_api_keys_from_file(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    keys_file = tmp_path / "api_keys"
    keys_file.write_text(f"# ops team\n{OTHER_KEY}\n")
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'f.db'}", api_keys_file=keys_file)
    for client in _client(settings):
        assert client.post("/generate", json={"samples": 200}).status_code == 401
        r = client.post("/generate", json={"samples": 200}, headers={"X-API-Key": OTHER_KEY})
        assert r.status_code == 200
        r = client.post("/generate", json={"samples": 200}, headers={"X-API-Key": "# ops team"})
        assert r.status_code == 401


def test_api_keys_unset_leaves_everything_open_and_undocumented(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'o.db'}", api_keys="")
    for client in _client(settings):
        assert client.post("/generate", json={"samples": 200}).status_code == 200
        schema = client.get("/openapi.json").json()
        assert "securitySchemes" not in schema.get("components", {})
        for method, path, operation in _operations(client):
            assert "401" not in operation["responses"], (method, path)


def test_api_keys_never_logged(keyed_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        keyed_client.post("/generate", json={"samples": 200}, headers={"X-API-Key": KEY})
        keyed_client.post("/generate", json={"samples": 200}, headers={"X-API-Key": WRONG_KEY})
        keyed_client.post("/retrain", headers={"X-API-Key": WRONG_KEY})
    assert any("401" in r.getMessage() for r in caplog.records)  # refusals are logged...
    text = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for key in (KEY, OTHER_KEY, WRONG_KEY):
        assert key not in text  # ...without the key


def test_serve_refuses_non_loopback_without_key(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IA_")}
    env["IA_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.run(
        [sys.executable, "-m", "ia_continu", "serve", "--host", "0.0.0.0", "--port", str(port)],
        cwd=tmp_path,  # no .env here
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "refusing to start" in proc.stderr
    assert "IA_ALLOW_ANONYMOUS=true" in proc.stderr
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
