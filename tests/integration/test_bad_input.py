"""Hostile input: oversized bodies, malformed JSON, wrong types, unknown routes."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer

MIB = 1 << 20


def _raw_http(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send raw bytes and read the answer's status line and body (no client library)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        # The server may answer and close before reading it all: fine.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("route", ["/generate", "/predict", "/retrain", "/evaluate"])
def test_body_over_limit_is_413_before_parsing(client: Any, route: str) -> None:
    from ia_continu.db import datasets as db_datasets

    # Valid JSON padded past 1 MiB: refused on size, so nothing is generated.
    body = b'{"samples": 100' + b" " * MIB + b"}"
    r = client.post(route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "bytes" in r.json()["detail"]
    assert db_datasets.get_latest_generation_id(client.app.state.ia.engine) is None


def test_body_at_limit_is_accepted(client: Any) -> None:
    body = b'{"samples": 100}'
    body = body[:-1] + b" " * (MIB - len(body)) + b"}"
    assert len(body) == MIB
    r = client.post("/generate", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text


def test_chunked_body_over_limit_is_413(client: Any) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"samples": 100'
        for _ in range(12):
            yield b" " * 100_000

    r = client.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_body_limit_on_real_server_declared_and_streamed(live_server: LiveServer) -> None:

    from ia_continu.db import datasets as db_datasets

    port = live_server.port
    # Declared too large: the answer comes without the server reading the body.
    head = (
        b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (50 * MIB)
    )
    status, body = _raw_http(port, head, b'{"samples": 100' + b" " * 100)
    assert status == 413 and b"bytes" in body
    # Chunked transfer, no Content-Length: counted as it streams.
    head = (
        b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * 65536
    stream = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(20)) + b"0\r\n\r\n"
    status, _ = _raw_http(port, head, b'10\r\n{"samples": 100 \r\n' + stream)
    assert status == 413
    engine = live_server.server.config.app.state.ia.engine  # type: ignore[attr-defined]
    assert db_datasets.get_latest_generation_id(engine) is None
    # The server is still fine afterwards.
    assert httpx.post(f"{live_server.url}/generate", json={"samples": 100}).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",  # not UTF-8 (was a 400 "error parsing the body")
        b"[" * 100_000,  # nesting too deep for the parser (was a 400)
        b'{"samples": 100',
        b"",
    ],
)
@pytest.mark.parametrize("route", ["/predict", "/generate", "/retrain", "/evaluate"])
def test_malformed_json_is_422(client: Any, route: str, raw: bytes) -> None:
    r = client.post(route, content=raw, headers={"content-type": "application/json"})
    if raw == b"" and route != "/predict":
        return  # an empty body means "defaults" on the routes whose body is optional
    assert r.status_code == 422, r.text
    assert "body" in str(r.json()["detail"])


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/predict", {"features": [False, 0]}, "features"),
        ("/predict", {"features": ["1", 2]}, "features"),
        ("/generate", {"samples": True}, "samples"),
        ("/generate", {"samples": "500"}, "samples"),
        ("/generate", {"hour": False}, "hour"),
        ("/retrain", {"generation_id": True}, "generation_id"),
        ("/evaluate", {"generation_id": "1"}, "generation_id"),
    ],
)
def test_booleans_and_strings_are_not_numbers(
    client: Any, route: str, body: dict[str, Any], field: str
) -> None:
    r = client.post(route, json=body)
    assert r.status_code == 422, r.text
    assert field in str(r.json()["detail"])


@pytest.mark.parametrize("route", ["/retrain", "/evaluate"])
@pytest.mark.parametrize("generation_id", [2**31, 2**63, 10**30])
def test_generation_id_beyond_column_range_is_422(
    client: Any, route: str, generation_id: int
) -> None:
    # SQLite's driver raised OverflowError past 2**63: a 500.
    r = client.post(route, json={"generation_id": generation_id})
    assert r.status_code == 422, r.text
    assert "generation_id" in str(r.json()["detail"])


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/nope", "/predict/extra", "/generate/1", "/../etc/passwd"])
def test_unknown_route_is_json_404(client: Any, method: str, path: str) -> None:
    r = client.request(method, path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"detail": "Not Found"}


def test_wrong_method_is_json_405_with_allow(client: Any) -> None:
    r = client.get("/predict")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json() == {"detail": "Method Not Allowed"}


def test_openapi_documents_413_on_every_operation_with_a_body(client: Any) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    with_body = [op for item in paths.values() for op in item.values() if "requestBody" in op]
    assert len(with_body) >= 4
    assert all("413" in op["responses"] for op in with_body)


def _integer_inputs(openapi: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(method, path, "query"|"body", name) of every integer input of every operation."""
    found = []
    schemas = openapi.get("components", {}).get("schemas", {})
    for path, item in openapi["paths"].items():
        if "{" in path:
            continue
        for method, op in item.items():
            for param in op.get("parameters", []):
                if param.get("in") == "query" and _is_integer(param.get("schema", {})):
                    found.append((method.upper(), path, "query", param["name"]))
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            body = content.get("schema", {})
            for option in body.get("anyOf", [body]):  # optional bodies: anyOf [$ref, null]
                if "$ref" in option:
                    body = schemas[option["$ref"].rsplit("/", 1)[1]]
            for name, prop in body.get("properties", {}).items():
                if _is_integer(prop):
                    found.append((method.upper(), path, "body", name))
    return found


def _is_integer(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(o.get("type") == "integer" for o in options)


def test_every_integer_input_beyond_64_bits_is_422(client: Any) -> None:
    """Every integer a client may send, on every route present and future: a number past
    the database's integer range is a client mistake (it was a 500 on SQLite and a 503
    on PostgreSQL for /monitoring/history's offset)."""
    inputs = _integer_inputs(client.get("/openapi.json").json())
    assert len(inputs) >= 10
    for method, path, where, name in inputs:
        if where == "query":
            r = client.request(method, path, params={name: str(10**30)})
        else:
            r = client.request(method, path, json={name: 10**30})
        assert r.status_code == 422, (method, path, name, r.status_code, r.text[:200])
        assert name in str(r.json()["detail"])


def test_prediction_stats_survive_features_near_float_max(client: Any) -> None:
    """Any finite features are valid input, and they are logged: the traffic summary must
    not break on them (PostgreSQL's float SUM overflowed: 503 for the whole window)."""
    client.post("/generate", json={"samples": 300, "seed": 1})
    assert client.post("/retrain").status_code == 200
    rows = [[1.7e308, 1.0], [1.7e308, 3.0], [-1.0e308, 5.0]]
    for features in rows:
        assert client.post("/predict", json={"features": features}).status_code == 200
    r = client.get("/predictions/stats")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == 3
    assert body["feature_means"]["feature2"] == pytest.approx(3.0)
    mean1 = body["feature_means"]["feature1"]
    # Finite on both databases (the rollup's sums are scaled by 2**-64: db/rollup.py).
    assert mean1 == pytest.approx(1.7e308 / 3 + 1.7e308 / 3 - 1.0e308 / 3)
