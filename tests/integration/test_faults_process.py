"""The API process killed or stopped: SIGKILL during large /generate calls leaves no partial
dataset; SIGTERM lets in-flight requests finish and exits 0."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.integration.processes import (
    ApiProcess,
    count_predictions,
    dataset_integrity,
    post,
    server_connections,
)

pytestmark = pytest.mark.slow


def _generate_until(url: str, stop: threading.Event, outcomes: list[object]) -> None:
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            try:
                r = http.post(f"{url}/generate", json={"samples": 10_000})
                outcomes.append(r.status_code)
                if r.status_code == 200:
                    outcomes.append(("id", r.json()["generation_id"]))
            except httpx.HTTPError as exc:
                outcomes.append(type(exc).__name__)
                return  # the server is gone


def test_sigkill_during_large_generate_leaves_no_partial_dataset(
    database_url: str, mlflow_server: str, tmp_path: Path
) -> None:
    api = ApiProcess(root=tmp_path, database_url=database_url, mlflow_url=mlflow_server)
    figures = []
    try:
        for round_ in range(3):
            api.start()
            if round_ == 0:
                assert post(api.url, "/generate", {"samples": 100}).status_code == 200
            stop = threading.Event()
            outcomes: list[object] = []
            threads = [
                threading.Thread(target=_generate_until, args=(api.url, stop, outcomes))
                for _ in range(8)
            ]
            for t in threads:
                t.start()
            # Let some finish, then kill every process while others are mid-insert.
            deadline = time.monotonic() + 30
            while outcomes.count(200) < 3 and time.monotonic() < deadline:
                time.sleep(0.05)
            api.kill()
            stop.set()
            for t in threads:
                t.join(timeout=60)
            cut = [o for o in outcomes if isinstance(o, str)]
            ok = [o[1] for o in outcomes if isinstance(o, tuple)]
            assert cut, "no request was in flight when the server was killed"
            assert all(o in (200, *cut) for o in outcomes if not isinstance(o, tuple))

            api.start()  # a restart finds only whole datasets
            datasets, orphans = dataset_integrity(database_url)
            assert orphans == 0
            assert all(count == stored for _, count, stored in datasets), datasets
            assert set(ok) <= {gid for gid, _, _ in datasets}
            # Datasets committed just before the kill (answer lost) are whole too.
            r = post(api.url, "/generate", {"samples": 100})
            assert r.status_code == 200
            assert r.json()["generation_id"] not in {gid for gid, _, _ in datasets}
            figures.append(
                f"round {round_}: {len(ok)} answered, {len(cut)} cut by SIGKILL, "
                f"{len(datasets)} datasets stored, all whole"
            )
            api.stop()
    finally:
        api.stop()
    print("\n" + "\n".join(figures))


def workers_warm(api: ApiProcess) -> bool:
    """Every worker process has loaded scikit-learn and MLflow (protobuf) already."""
    assert api.proc is not None
    children = Path(f"/proc/{api.proc.pid}/task/{api.proc.pid}/children").read_text().split()
    workers = [pid for pid in children if "spawn_main" in _cmdline(pid)]
    assert len(workers) == api.workers, children
    for pid in workers:
        maps = Path(f"/proc/{pid}/maps").read_text()
        if "sklearn" not in maps or "_upb" not in maps:
            return False
    return True


def _cmdline(pid: str) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


def test_sigterm_finishes_in_flight_requests_and_exits_zero(
    database_url: str, mlflow_server: str, tmp_path: Path
) -> None:
    api = ApiProcess(
        root=tmp_path,
        database_url=database_url,
        mlflow_url=mlflow_server,
        env={
            "IA_LOG_LEVEL": "info",  # uvicorn's shutdown steps in the log
            # Logged predictions stay queued until shutdown: only the final flush writes them.
            "IA_PREDICTION_LOG_FLUSH_INTERVAL": "3600",
        },
    )
    api.start()
    try:
        assert post(api.url, "/generate", {"samples": 1000, "seed": 1}).status_code == 200
        assert post(api.url, "/retrain", timeout=300).status_code == 200
        # Warm both workers: a worker importing scikit-learn and MLflow for its first
        # retrain does not read new requests for seconds (GIL), and uvicorn's shutdown
        # closes connections whose request it has not started reading.
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(10):
                if workers_warm(api):
                    break
                warm = pool.map(
                    lambda path: post(api.url, path, timeout=300).status_code,
                    ["/retrain", "/evaluate"] * 4,
                )
                assert set(warm) == {200}
        assert workers_warm(api)
        with httpx.Client(timeout=60) as http:
            predicted = sum(
                http.post(f"{api.url}/predict", json={"features": [i / 100, -1.0]}).status_code
                == 200
                for i in range(400)
            )
        assert predicted == 400 and count_predictions(database_url) == 0
        answered_at: dict[str, float] = {}

        def timed(name: str, call: Callable[[], httpx.Response]) -> Callable[[], int | str]:
            def run() -> int | str:
                try:
                    status: int | str = call().status_code
                except httpx.HTTPError as exc:
                    status = f"{type(exc).__name__}: {exc}"
                answered_at[name] = time.monotonic()
                return status

            return run

        with ThreadPoolExecutor(max_workers=16) as pool:
            calls = {
                **{
                    f"retrain{i}": timed(
                        f"retrain{i}", lambda: post(api.url, "/retrain", timeout=300)
                    )
                    for i in range(2)
                },
                **{
                    f"generate{i}": timed(
                        f"generate{i}", lambda: post(api.url, "/generate", {"samples": 10_000})
                    )
                    for i in range(6)
                },
                **{
                    f"evaluate{i}": timed(f"evaluate{i}", lambda: post(api.url, "/evaluate", {}))
                    for i in range(4)
                },
            }
            futures: dict[str, Future[int | str]] = {
                name: pool.submit(fn) for name, fn in calls.items()
            }
            # In flight = accepted by a worker. Under GIL contention a worker can take
            # over a second to accept; a connection still in the backlog at the signal is
            # reset by uvicorn (not this test's subject: see the report).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                accepted, waiting = server_connections(api.port)
                if accepted + len(answered_at) >= len(calls) and waiting == 0:
                    break
                time.sleep(0.02)
            sent_sigterm = time.monotonic()
            assert api.proc is not None
            api.proc.send_signal(signal.SIGTERM)
            statuses = {name: f.result(timeout=120) for name, f in futures.items()}
            code = api.proc.wait(timeout=60)
        late = {n: round(t - sent_sigterm, 2) for n, t in answered_at.items() if t > sent_sigterm}
        print(f"\nSIGTERM: {statuses}; exit {code}; answered s after the signal: {late}")
        assert statuses == {name: 200 for name in calls}, api.log()[-4000:]
        assert late, "every request had finished before the signal: nothing tested"
        assert code == 0, api.log()[-3000:]
        # The workers' own log lines come out formatted, at the configured level.
        assert "INFO ia_continu.api.routes.core: retrained v" in api.log()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{api.url}/health", timeout=2)
        # Every logged prediction of both workers was written at shutdown.
        assert count_predictions(database_url) == predicted
        # The work those requests did is stored whole.
        datasets, orphans = dataset_integrity(database_url)
        assert orphans == 0 and all(count == stored for _, count, stored in datasets)
    finally:
        api.stop()


def test_idle_keep_alive_connection_outlives_client_pool_expiry(
    mlflow_server: str, tmp_path: Path
) -> None:
    """A connection idle for longer than httpx's 5 s pool expiry is still open: the client
    closes it first, never the server while the client reuses it (at uvicorn's default of
    5 s, about 1 request in 500 reusing a connection right then failed under load)."""
    import socket

    api = ApiProcess(
        root=tmp_path, database_url=f"sqlite:///{tmp_path / 'ia.db'}", mlflow_url=mlflow_server
    )
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

    def read_response(sock: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return data  # closed by the server
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
        return head

    with api, socket.create_connection(("127.0.0.1", api.port), timeout=10) as sock:
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(6)  # idle past the 5 s of uvicorn's default keep-alive
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
