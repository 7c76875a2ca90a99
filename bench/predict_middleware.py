"""/predict throughput with and without the Prometheus and API-key middlewares (wrk).

    .venv/bin/python bench/predict_middleware.py [--duration 10] [--rounds 2] [--port 9105]

Each variant runs one uvicorn worker (uvloop + httptools, no access log, as `ia-continu
serve` does) on a model stored without MLflow, and wrk posts the same JSON body on 32
connections. Variants run interleaved, `--rounds` times each; the table keeps each
variant's median. Results are also written to bench/results/predict_middleware.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key-0123456789abcdef"
VARIANTS = {
    # name: (instrument, api keys, protect /predict)
    "bare (no middleware)": (False, False, False),
    "metrics": (True, False, False),
    "metrics + keys (predict open)": (True, True, False),
    "metrics + keys (predict protected)": (True, True, True),
}
LUA = """
wrk.method = "POST"
wrk.body = '{"features": [0.3, -1.2]}'
wrk.headers["Content-Type"] = "application/json"
"""


def app_from_env():  # type: ignore[no-untyped-def]
    """uvicorn factory: the variant comes from BENCH_INSTRUMENT (bench code only)."""
    from ia_continu.api.app import create_app

    return create_app(instrument=os.environ["BENCH_INSTRUMENT"] == "1")


def _store_model(data_dir: Path) -> None:
    from ia_continu.config import get_settings
    from ia_continu.db import models as db_models
    from ia_continu.db import sql as db_sql
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.ml.data import generate_dataset
    from ia_continu.ml.predictor import LinearModel
    from ia_continu.ml.train import Hyperparameters, train_model

    settings = get_settings(data_dir=data_dir)
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)
    result = train_model(
        generate_dataset(1000, hour=2, seed=1),
        hyperparameters=Hyperparameters(C=1.0, solver="lbfgs", max_iter=1000),
        test_size=0.2,
        random_state=42,
    )
    model = LinearModel.from_estimator(result.estimator, version="v1")
    db_models.insert_model(
        engine,
        db_models.ModelRecord(
            version="v1",
            accuracy=result.metrics.accuracy,
            training_samples=result.training_samples,
            created_at=db_sql.utcnow(),
            is_active=True,
            parameters=model.to_json(),
        ),
        activate=True,
    )
    engine.dispose()


def _run_variant(
    name: str, *, data_dir: Path, port: int, duration: int, lua: Path
) -> dict[str, float]:
    instrument, keys, protect = VARIANTS[name]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IA_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        IA_DATA_DIR=str(data_dir),
        IA_API_KEYS=KEY if keys else "",
        IA_PROTECT_PREDICT="true" if protect else "false",
        IA_PREDICTION_LOG_ENABLED="false",
        BENCH_INSTRUMENT="1" if instrument else "0",
        PYTHONPATH=str(ROOT / "bench"),
    )
    if instrument:  # as `ia-continu serve` runs it: multiprocess files
        metrics_dir = data_dir / "prometheus-bench"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "predict_middleware:app_from_env",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        cwd=data_dir,
        start_new_session=True,
    )
    try:
        _wait(f"http://127.0.0.1:{port}/health", server)
        headers = ["-H", f"X-API-Key: {KEY}"] if protect else []
        url = f"http://127.0.0.1:{port}/predict"
        check = httpx.post(
            url, json={"features": [0.3, -1.2]}, headers={"X-API-Key": KEY} if protect else {}
        )
        assert check.status_code == 200, check.text
        subprocess.run(  # warm-up
            ["wrk", "-t1", "-c32", "-d2s", "-s", str(lua), *headers, url],
            check=True,
            capture_output=True,
        )
        cpu_before = _cpu_seconds(server.pid)
        out = subprocess.run(
            ["wrk", "-t1", "-c32", f"-d{duration}s", "--latency", "-s", str(lua), *headers, url],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        cpu = _cpu_seconds(server.pid) - cpu_before
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = _parse_wrk(out)
    # CPU time per request does not depend on what else the (shared) machine runs.
    result["cpu_us_per_req"] = cpu / result["requests"] * 1e6
    return result


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def _parse_wrk(out: str) -> dict[str, float]:
    def seconds(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = seconds(re.search(r"^\s*50%\s+(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = seconds(re.search(r"^\s*99%\s+(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses")
    return {"rps": rps, "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "requests": requests}


def run_micro(*, requests: int, rounds: int) -> dict[str, float]:
    """In-process: the same /predict request through each app's ASGI stack, no network.

    On a shared machine the HTTP figures move by +-30 % between rounds; the best of several
    interleaved in-process rounds isolates what the middlewares themselves cost."""
    import asyncio

    with tempfile.TemporaryDirectory(prefix="bench-mw-micro-") as tmp:
        data_dir = Path(tmp) / "data"
        _store_model(data_dir)
        metrics_dir = Path(tmp) / "prometheus"
        metrics_dir.mkdir()
        # Before prometheus_client is imported: multiprocess files, as `ia-continu serve` does.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        best = {name: float("inf") for name in VARIANTS}
        for _ in range(rounds):
            for name in VARIANTS:
                seconds = asyncio.run(_time_asgi(name, data_dir=data_dir, requests=requests))
                best[name] = min(best[name], seconds / requests * 1e6)
    base = best["bare (no middleware)"]
    print(f"\nin-process ASGI /predict, best of {rounds} x {requests} requests")
    print(f"{'variant':<36} {'us/req':>7} {'overhead us':>12}")
    for name, us in best.items():
        print(f"{name:<36} {us:>7.1f} {us - base:>+12.1f}")
    return best


async def _time_asgi(name: str, *, data_dir: Path, requests: int) -> float:
    from ia_continu.api.app import create_app
    from ia_continu.config import get_settings

    instrument, keys, protect = VARIANTS[name]
    settings = get_settings(
        data_dir=data_dir,
        api_keys=KEY if keys else None,
        protect_predict=protect,
        prediction_log_enabled=False,
    )
    app = create_app(settings, instrument=instrument)
    body = b'{"features": [0.3, -1.2]}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"25")]
    if protect:
        headers.append((b"x-api-key", KEY.encode()))
    sent: list[int] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            sent.append(int(message["status"]))  # type: ignore[call-overload]

    async with app.router.lifespan_context(app):

        def scope() -> dict[str, object]:
            return {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/predict",
                "raw_path": b"/predict",
                "root_path": "",
                "query_string": b"",
                "headers": list(headers),
                "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 9105),
                "state": {},
            }

        for _ in range(200):  # warm-up (builds the middleware stack)
            await app(scope(), receive, send)
        started = time.process_time()
        for _ in range(requests):
            await app(scope(), receive, send)
        elapsed = time.process_time() - started
    assert set(sent) == {200}, set(sent)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=9105)
    parser.add_argument("--micro", action="store_true", help="only the in-process ASGI timing")
    parser.add_argument("--micro-requests", type=int, default=20_000)
    args = parser.parse_args()
    if args.micro:
        run_micro(requests=args.micro_requests, rounds=max(args.rounds, 3))
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install -y wrk")
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="bench-mw-") as tmp:
        data_dir = Path(tmp) / "data"
        _store_model(data_dir)
        lua = Path(tmp) / "post.lua"
        lua.write_text(LUA)
        for round_ in range(args.rounds):
            for name in VARIANTS:
                r = _run_variant(
                    name, data_dir=data_dir, port=args.port, duration=args.duration, lua=lua
                )
                print(
                    f"round {round_ + 1} {name:<36} {r['rps']:>7.0f} req/s "
                    f"{r['cpu_us_per_req']:>6.0f} CPU us/req",
                    flush=True,
                )
                results[name].append(r)
    summary = {
        name: {
            k: statistics.median(r[k] for r in runs)
            for k in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")
        }
        for name, runs in results.items()
    }
    base = summary["bare (no middleware)"]
    print(
        f"\n{'variant':<36} {'req/s':>7} {'vs bare':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'CPU us/req':>10} {'vs bare':>8}"
    )
    for name, s in summary.items():
        print(
            f"{name:<36} {s['rps']:>7.0f} {s['rps'] / base['rps'] - 1:>+8.1%} "
            f"{s['p50_ms']:>7.2f} {s['p99_ms']:>7.2f} {s['cpu_us_per_req']:>10.0f} "
            f"{s['cpu_us_per_req'] - base['cpu_us_per_req']:>+8.0f}"
        )
    out = ROOT / "bench" / "results" / "predict_middleware.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": summary, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
