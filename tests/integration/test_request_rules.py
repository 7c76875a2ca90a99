"""Request rules through the real app (api/guard.py, api/security.py): cross-site writes in
keyless mode, Content-Type, NUL bytes, key whitespace, HEAD, BOM, IA_PROTECT_READS.

Each test stands for one row of the outside attack run (issue 14); the server-level
limits (header size, slow clients, connection cap, disconnects) are in
test_http_limits.py, against a real `ia-continu serve`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ia_continu.config import Settings

KEY = "test-key-4f1c9a0e7b2d4c55"
JSON = {"content-type": "application/json"}
WRITES = [
    ("/generate", b'{"samples": 100}'),
    ("/retrain", b"{}"),
    ("/models/v1/activate", b""),
    ("/evaluate", b"{}"),
    ("/monitoring/run", b"{}"),
]


def _client(settings: Settings) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from ia_continu.api.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def keyless(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Any]:
    yield from _client(make_settings(database_url=f"sqlite:///{tmp_path / 'rules.db'}"))


@pytest.fixture
def keyed(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Any]:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'keyed.db'}", api_keys=KEY)
    yield from _client(settings)


def _datasets(client: Any) -> int | None:
    from ia_continu.db import datasets as db_datasets

    return db_datasets.get_latest_generation_id(client.app.state.ia.engine)


# --- keyless mode: cross-site writes -------------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_keyless_write_with_foreign_host_is_400(keyless: Any, path: str, body: bytes) -> None:
    # DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends it in Host.
    r = keyless.post(path, content=body, headers={**JSON, "Host": "attacker.example"})
    assert r.status_code == 400, r.text
    assert "IA_ALLOWED_HOSTS" in r.json()["detail"]
    assert _datasets(keyless) is None


@pytest.mark.parametrize(("path", "body"), WRITES)
def test_keyless_write_from_foreign_origin_is_403(keyless: Any, path: str, body: bytes) -> None:
    headers = {**JSON, "Host": "127.0.0.1:9000", "Origin": "http://attacker.example"}
    r = keyless.post(path, content=body, headers=headers)
    assert r.status_code == 403, r.text
    assert "IA_ALLOWED_ORIGINS" in r.json()["detail"]
    assert _datasets(keyless) is None


def test_keyless_attack_run_request_is_refused(keyless: Any) -> None:
    # The exact request of the attack run: foreign Host and Origin, text/plain body.
    r = keyless.post(
        "/retrain",
        content=b"{}",
        headers={
            "Host": "attacker.example",
            "Origin": "http://attacker.example",
            "Content-Type": "text/plain",
        },
    )
    assert r.status_code == 400


def test_keyless_same_origin_and_originless_writes_work(keyless: Any) -> None:
    # What the dashboard sends (its own origin), then what curl and scripts send (none).
    same = {**JSON, "Host": "127.0.0.1:9000", "Origin": "http://127.0.0.1:9000"}
    assert keyless.post("/generate", json={"samples": 100}, headers=same).status_code == 200
    for host in ("localhost:9000", "[::1]:9000", "127.0.0.1"):
        r = keyless.post("/generate", json={"samples": 100}, headers={"Host": host})
        assert r.status_code == 200, (host, r.text)
    # Reads from a foreign Origin are not writes; a foreign Host still is not served.
    assert keyless.get("/models", headers={"Origin": "http://a.example"}).status_code == 200
    assert keyless.get("/models", headers={"Host": "attacker.example"}).status_code == 400


def test_keyless_allowed_hosts_and_origins_extend_the_defaults(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'ext.db'}",
        allowed_hosts="testserver,api",
        allowed_origins="http://localhost:3000",
    )
    for client in _client(settings):
        headers = {"Host": "api:9000", "Origin": "http://localhost:3000"}
        r = client.post("/generate", json={"samples": 100}, headers=headers)
        assert r.status_code == 200, r.text
        headers = {"Host": "api:9000", "Origin": "http://localhost:3001"}
        assert client.post("/generate", json={}, headers=headers).status_code == 403
        assert client.get("/models", headers={"Host": "other:9000"}).status_code == 400
        # Liveness stays answerable whatever name a probe uses.
        assert client.get("/health", headers={"Host": "other:9000"}).status_code == 200


def test_keyed_mode_leaves_host_and_origin_to_the_key(keyed: Any) -> None:
    # Behind a proxy or in compose (Host api:9000): the key is the defence there.
    headers = {**JSON, "Host": "api:9000", "Origin": "https://ia.example.com"}
    assert keyed.post("/generate", content=b"{}", headers=headers).status_code == 401
    r = keyed.post("/generate", content=b"{}", headers={**headers, "X-API-Key": KEY})
    assert r.status_code == 200, r.text


# --- Content-Type ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
@pytest.mark.parametrize("path", ["/generate", "/predict", "/predict/batch", "/retrain"])
def test_body_not_sent_as_json_is_415(keyless: Any, path: str, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = keyless.post(path, content=b'{"samples": 100, "features": [1, 2]}', headers=headers)
    assert r.status_code == 415, r.text
    assert "application/json" in r.json()["detail"]
    assert _datasets(keyless) is None


def test_json_with_parameters_and_empty_posts_are_accepted(keyless: Any) -> None:
    r = keyless.post(
        "/generate",
        content=b'{"samples": 100}',
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert r.status_code == 200, r.text
    # `curl -X POST /retrain`: no body, no Content-Type; reaches the route (no MLflow: 503).
    r = keyless.post("/retrain")
    assert r.status_code not in (415, 422), r.text


def test_body_content_types_are_declared_per_path(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ia_continu.api import guard

    monkeypatch.setitem(guard.BODY_CONTENT_TYPES, "/generate", frozenset({guard.JSON, "text/csv"}))
    for client in _client(make_settings(database_url=f"sqlite:///{tmp_path / 'ct.db'}")):
        # Reaches the route (which parses JSON only: 422), not refused as 415.
        r = client.post("/generate", content=b"a,b\n1,2\n", headers={"content-type": "text/csv"})
        assert r.status_code == 422
        r = client.post("/predict", content=b"a,b\n", headers={"content-type": "text/csv"})
        assert r.status_code == 415
        doc = client.get("/openapi.json").json()["paths"]
        assert "415" in doc["/generate"]["post"]["responses"]
        assert "text/csv" in doc["/generate"]["post"]["responses"]["415"]["description"]


def test_utf8_bom_is_handled_the_same_on_every_route(keyless: Any) -> None:
    bom = b"\xef\xbb\xbf"
    assert (
        keyless.post("/generate", content=bom + b'{"samples": 100}', headers=JSON).status_code
        == 200
    )
    plain = keyless.post("/predict", content=b'{"features": [1, 2]}', headers=JSON)
    with_bom = keyless.post("/predict", content=bom + b'{"features": [1, 2]}', headers=JSON)
    # No model is served here (503 for both); what matters is that the BOM is not a 422.
    assert with_bom.status_code == plain.status_code != 422, with_bom.text


# --- NUL bytes (both databases) ------------------------------------------------------------------


@pytest.fixture
def any_db_client(make_settings: Callable[..., Settings], database_url: str) -> Iterator[Any]:
    yield from _client(make_settings(database_url=database_url))


def test_nul_bytes_are_404_or_422_on_every_database(any_db_client: Any) -> None:
    client = any_db_client
    # psycopg refuses NUL in text: this was a 503 "database unavailable" on PostgreSQL.
    assert client.post("/models/v1%00/activate").status_code == 404
    assert client.post("/models/%00/activate").status_code == 404
    assert client.get("/monitoring/history?limit=%00").status_code == 422
    assert client.get("/predictions/stats?minutes=1%00").status_code == 422
    for path, body in [
        ("/generate", b'{"samples": "1\\u0000"}'),
        ("/predict", b'{"features": ["\\u0000", 1]}'),
        ("/retrain", b'{"generation_id": "\\u0000"}'),
        ("/generate", b'{"samples": 100, "seed": "\x00"}'),
    ]:
        r = client.post(path, content=body, headers=JSON)
        assert r.status_code == 422, (path, body, r.text)
    # The database still answers normally afterwards.
    assert client.post("/models/v1/activate").status_code == 404


# --- API keys: whitespace, protected reads -------------------------------------------------------


@pytest.mark.parametrize("given", [KEY, f" {KEY}", f"{KEY} ", f"\t{KEY}\t", f"  {KEY}  "])
def test_api_key_surrounding_whitespace_is_ignored(keyed: Any, given: str) -> None:
    r = keyed.post("/generate", json={"samples": 100}, headers={"X-API-Key": given})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("given", [KEY[:-1], f"{KEY}x", KEY.replace("-", " ", 1)])
def test_api_key_other_changes_are_refused(keyed: Any, given: str) -> None:
    assert keyed.post("/generate", json={}, headers={"X-API-Key": given}).status_code == 401


def test_protect_reads_closes_every_get_but_health(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(
        database_url=f"sqlite:///{tmp_path / 'reads.db'}", api_keys=KEY, protect_reads=True
    )
    for client in _client(settings):
        assert client.get("/health").status_code == 200
        assert client.head("/health").status_code == 200
        paths = client.get("/openapi.json", headers={"X-API-Key": KEY}).json()["paths"]
        gets = [p for p, item in paths.items() if "get" in item and "{" not in p]
        assert {"/models", "/monitoring/latest", "/metrics", "/dashboard"} <= set(gets)
        for path in [*gets, "/openapi.json", "/docs"]:
            if path == "/health":
                continue
            assert client.get(path).status_code == 401, path
            assert client.head(path).status_code == 401, path
            assert client.get(path, headers={"X-API-Key": KEY}).status_code != 401, path


def test_protect_reads_without_a_key_refuses_to_start(
    make_settings: Callable[..., Settings],
) -> None:
    from ia_continu.api.app import create_app
    from ia_continu.api.security import SecurityConfigError

    with pytest.raises(SecurityConfigError, match="IA_PROTECT_READS"):
        create_app(make_settings(protect_reads=True))


# --- HEAD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/dashboard", "/models", "/dashboard/config"])
def test_head_works_wherever_get_does(keyless: Any, path: str) -> None:
    get = keyless.get(path)
    head = keyless.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    # Not for routes without GET: still 405 (Allow lists the real methods).
    r = keyless.head("/predict")
    assert r.status_code == 405 and "POST" in r.headers["allow"]
