"""Server-level limits against a real `ia-continu serve` (uvicorn + httptools + the guard
of api/server.py), with raw sockets: an HTTP client would never send these requests.

Each test stands for one row of the outside attack run of issue 14: a 300 MiB header,
requests that never finish, connections piling up past the open-file limit, clients that
disconnect mid-body, HEAD. Deadlines are shortened here (1 s / 2 s) to keep the suite
fast; nothing asserts on a duration.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_http
from tests.integration.processes import BIN, ApiProcess

MIB = 1 << 20
NO_MLFLOW = "http://127.0.0.1:9"  # nothing listens: no route here needs MLflow
CAP = 20


def _env(**extra: str) -> dict[str, str]:
    return {
        "IA_WARM_UP_ML": "false",
        "IA_LOG_LEVEL": "info",
        "IA_HEADER_TIMEOUT": "1",
        "IA_BODY_TIMEOUT": "2",
        **extra,
    }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    root = tmp_path_factory.mktemp("limits")
    api = ApiProcess(
        root=root,
        database_url=f"sqlite:///{root / 'ia.db'}",
        mlflow_url=NO_MLFLOW,
        workers=1,  # one worker: /proc/<pid> is the process that serves
        env=_env(IA_MAX_CONNECTIONS=str(CAP)),
    )
    with api:
        yield api


def _rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]


def _connect(api: ApiProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sends until it closes; (data, closed by the server)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data, True
        except TimeoutError:
            return data, False
        if not chunk:
            return data, True
        data += chunk


def _wait_for_log(api: ApiProcess, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = api.log()
        if needle in text:
            return text
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} not in the server log:\n{api.log()[-3000:]}")


def _health(api: ApiProcess) -> int:
    return httpx.get(f"{api.url}/health", timeout=30).status_code


# --- header size --------------------------------------------------------------------------------


def test_huge_header_is_refused_without_buffering_it(server: ApiProcess) -> None:
    assert server.proc is not None
    pid = server.proc.pid
    assert _health(server) == 200
    before = _rss_kib(pid)
    sent = 0
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        chunk = b"a" * MIB
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 300 * MIB:
                sock.sendall(chunk)
                sent += MIB
        _read_until_closed(sock)
    assert _health(server) == 200
    after = _rss_kib(pid)
    print(f"RSS before {before} KiB, after {after} KiB; {sent / MIB:.0f} MiB sent before refusal")
    # The server stopped reading long before 300 MiB (it was 798 MiB of RSS before).
    assert sent < 300 * MIB
    assert after - before < 16 * 1024, (before, after)


def test_header_over_limit_is_431_and_under_it_is_served(server: ApiProcess) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20_000)
        sock.sendall(b"\r\n\r\n")
        data, closed = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 431 "), data[:200]
    assert closed
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    with _connect(server) as sock:
        sock.sendall(head + b"X-Ok: " + b"a" * 15_000 + b"\r\n\r\n")
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200 "), data[:200]


# --- slow clients -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "answer"),
    [
        (b"", b""),  # nothing after connect
        (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ", b"HTTP/1.1 408 "),
        (
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"feat',
            b"",
        ),
    ],
    ids=["silent", "partial-headers", "partial-body"],
)
def test_incomplete_request_is_closed_after_its_deadline(
    server: ApiProcess, sent: bytes, answer: bytes
) -> None:
    with _connect(server) as sock:
        started = time.monotonic()
        sock.sendall(sent)
        data, closed = _read_until_closed(sock)  # 30 s socket timeout: not closed = failure
        print(f"closed by the server after {time.monotonic() - started:.2f} s")
    assert closed, "the server kept the incomplete request open"
    assert data.startswith(answer), data[:200]
    assert _health(server) == 200


def test_connection_cap_closes_idle_connections_for_new_ones(server: ApiProcess) -> None:
    socks = [_connect(server) for _ in range(3 * CAP)]
    try:
        # Every silent connection beyond the cap pushed out an older one; /health gets in.
        assert _health(server) == 200
    finally:
        for sock in socks:
            sock.close()
    line = _wait_for_log(server, "idle or slow connections closed to make room")
    assert f"cap IA_MAX_CONNECTIONS={CAP}" in line


def test_open_file_limit_lowers_the_cap_and_health_survives(tmp_path: Path) -> None:
    # The attack run: 1,100 silent connections against a 1,024-file limit broke /health.
    # Same shape, smaller: a 200-file limit and 300 connections.
    api = _LimitedApiProcess(
        root=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'ia.db'}",
        mlflow_url=NO_MLFLOW,
        workers=1,
        env=_env(IA_HEADER_TIMEOUT="30"),  # they must not simply expire during the test
    )
    with api:
        socks = []
        try:
            for _ in range(300):
                socks.append(_connect(api))
            assert _health(api) == 200
        finally:
            for sock in socks:
                sock.close()
        log = _wait_for_log(api, "IA_MAX_CONNECTIONS=1000 lowered to 136")
        assert "Too many open files" not in log


class _LimitedApiProcess(ApiProcess):
    """`ia-continu serve` under `prlimit --nofile=200`."""

    def start(self, timeout: float = 120) -> ApiProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - inherited by the child, closed below
        try:
            self.proc = subprocess.Popen(
                [
                    "prlimit",
                    "--nofile=200:200",
                    str(BIN / "ia-continu"),
                    "serve",
                    "--port",
                    str(self.port),
                    *self.extra_args,
                ],
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        wait_http(f"{self.url}/health", timeout=timeout, proc=self.proc)
        return self


# --- client disconnects -------------------------------------------------------------------------


def _status_counts(api: ApiProcess) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in httpx.get(f"{api.url}/metrics", timeout=30).text.splitlines():
        if line.startswith("ia_http_requests_total{"):
            status = re.search(r'status="(\d+)"', line).group(1)  # type: ignore[union-attr]
            counts[status] = counts.get(status, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_client_disconnect_is_one_info_line_and_499(server: ApiProcess) -> None:
    before = _status_counts(server)
    head = b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
    for path in (b"/predict", b"/generate"):
        # Short Content-Length: the client leaves mid-body.
        with _connect(server) as sock:
            sock.sendall(b"POST " + path + b" HTTP/1.1\r\n" + head)
            sock.sendall(b'Content-Length: 100\r\n\r\n{"features"')
            time.sleep(0.3)  # let the route start reading
    # Over the body limit, streamed (the 413 path): answered, the route's read abandoned.
    with _connect(server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\n" + head + b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b" " * 65536
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(20):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        data, _ = _read_until_closed(sock)
        assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    log = _wait_for_log(server, "disconnected before sending the whole body of POST /generate")
    assert "disconnected before sending the whole body of POST /predict" in log
    assert "Exception in ASGI application" not in log
    assert "Traceback" not in log
    after = _status_counts(server)
    assert after.get("499", 0) - before.get("499", 0) == 2, (before, after)
    assert after.get("413", 0) - before.get("413", 0) == 1, (before, after)
    assert after.get("500", 0) == 0, after


# --- HEAD and the keyless rules on the real server ----------------------------------------------


@pytest.mark.parametrize("path", [b"/health", b"/dashboard"])
def test_head_is_answered_without_a_body(server: ApiProcess, path: bytes) -> None:
    with _connect(server) as sock:
        sock.sendall(b"HEAD " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data, closed = _read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert b"content-length: " in head.lower()
    assert body == b"" and closed


def test_cross_site_write_of_the_attack_run_is_refused(server: ApiProcess) -> None:
    request = (
        b"POST /retrain HTTP/1.1\r\nHost: attacker.example\r\n"
        b"Origin: http://attacker.example\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    with _connect(server) as sock:
        sock.sendall(request)
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 400 "), data[:300]
    same_host = request.replace(b"attacker.example\r\nOrigin", b"127.0.0.1\r\nOrigin")
    with _connect(server) as sock:
        sock.sendall(same_host)
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 403 "), data[:300]
