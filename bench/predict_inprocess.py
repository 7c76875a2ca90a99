"""CPU per /predict inside the application, without socket or HTTP parser: the ASGI app
called directly, this tree against another commit, interleaved (the machine is shared).

    .venv/bin/python -m bench.predict_inprocess [--baseline ff9601f] [--requests 10000]
        [--rounds 4] [--profile]

Each side runs in its own interpreter (``PYTHONPATH`` = that tree's ``src``, exported with
``git archive``), with a served model in a SQLite file, the prediction log on and the
Prometheus multiprocess mode of `ia-continu serve`. The figure is process CPU time per
request (every thread: the log's flush thread too), the median of 5 timed loops; ``--profile``
prints cProfile's top functions instead. The HTTP layer (uvicorn's protocol, api/server.py)
is measured by bench/http_guard_micro.py; the whole server by `python -m bench.feedback
--sections ab`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in the child interpreter: argv = data_dir, requests, "profile" or "".
CHILD = r"""
import asyncio, os, sys, time

data, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(data, "prom")
os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
from ia_continu.api.asgi import create_app_from_env

BODIES = [
    b'{"features": [%.6f, %.6f]}' % ((i % 97) / 17 - 3, (i % 89) / 15 - 3) for i in range(1000)
]


async def main():
    app = create_app_from_env()
    inbox, outbox = asyncio.Queue(), []

    async def lifespan_send(message):
        outbox.append(message)

    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get,
            lifespan_send)
    )
    while not outbox:
        await asyncio.sleep(0.01)
    assert outbox[0]["type"] == "lifespan.startup.complete", outbox
    statuses = {}

    async def one(i):
        body = BODIES[i % 1000]
        scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "server": ("127.0.0.1", 9000),
            "client": ("127.0.0.1", 50000), "scheme": "http", "method": "POST",
            "root_path": "", "path": "/predict", "raw_path": b"/predict",
            "query_string": b"", "state": {},
            "headers": [
                (b"host", b"127.0.0.1:9000"), (b"user-agent", b"bench"),
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        }
        sent = False

        async def receive():
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses[message["status"]] = statuses.get(message["status"], 0) + 1

        await app(scope, receive, send)

    for i in range(2000):  # warm-up
        await one(i)
    if mode == "profile":
        import cProfile, pstats
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(n):
            await one(i)
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    else:
        for _ in range(5):
            started = time.process_time()
            for i in range(n):
                await one(i)
            print("cpu_us", (time.process_time() - started) / n * 1e6)
    assert set(statuses) == {200}, statuses
    await inbox.put({"type": "lifespan.shutdown"})
    await lifespan


asyncio.run(main())
"""


def _export(ref: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src", "bench/predlog_seed.py"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def _env(src: Path, data: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(src),
        "IA_DATA_DIR": str(data),
        "IA_DATABASE_URL": "",
        "IA_LOG_LEVEL": "warning",
        "IA_WARM_UP_ML": "false",
        "IA_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    }


def _run(src: Path, data: Path, requests: int, mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(data), str(requests), mode],
        env=_env(src, data),
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.predict_inprocess")
    parser.add_argument("--baseline", default="ff9601f", help="git ref to compare with")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ia-bench-inprocess-"))
    try:
        sides = {"this tree": ROOT / "src", args.baseline: _export(args.baseline, work / "base")}
        data = {name: work / f"data-{i}" for i, name in enumerate(sides)}
        for name, src in sides.items():
            data[name].mkdir()
            subprocess.run(
                [sys.executable, str(ROOT / "bench" / "predlog_seed.py")],
                env=_env(src, data[name]),
                check=True,
            )
        if args.profile:
            for name, src in sides.items():
                print(f"== {name}\n{_run(src, data[name], args.requests, 'profile')}")
            return 0
        figures: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(args.rounds):
            for name in sides if r % 2 == 0 else reversed(sides):
                out = _run(sides[name], data[name], args.requests, "")
                loops = [float(line.split()[1]) for line in out.splitlines() if line]
                figures[name].append(statistics.median(loops))
        print(f"load average {os.getloadavg()}")
        for name, values in figures.items():
            print(
                f"{name}: {statistics.median(values):.1f} µs CPU per /predict "
                f"(rounds {', '.join(f'{v:.1f}' for v in values)})"
            )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
