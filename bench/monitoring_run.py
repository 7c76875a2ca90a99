"""Duration of one monitoring run against a real MLflow server.

    .venv/bin/python bench/monitoring_run.py --mlflow-uri http://127.0.0.1:5000 [--runs 5]
        [--prefect-api-url http://127.0.0.1:4200/api]

Measures, in one warm process on a temporary SQLite database:
  - "no action" runs (same hour parity as the champion: evaluate + drift + MLflow log),
  - "retrain" runs (other parity: also a challenger logged/registered and promoted),
both through the in-process runner (what POST /monitoring/run does) and, when a Prefect
API URL is given, through the Prefect flow (what `ia-continu monitor run` does; the
API's /health is skipped by pointing api_url at a stub answering 200).
Prints a JSON summary and writes it to bench/results/monitoring_run.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def _health_stub() -> str:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b'{"status":"ok"}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median_s": round(statistics.median(values), 3),
        "min_s": round(min(values), 3),
        "max_s": round(max(values), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--mlflow-uri", required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prefect-api-url", default="")
    args = parser.parse_args()
    if args.prefect_api_url:
        os.environ["PREFECT_API_URL"] = args.prefect_api_url
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

    from ia_continu.config import Settings
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.migrate import upgrade_database
    from ia_continu.services import monitoring as service
    from ia_continu.services import monitoring_types

    tmp = Path(tempfile.mkdtemp(prefix="ia-bench-monitor-"))
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=tmp / "data",
        database_url=f"sqlite:///{tmp / 'bench.db'}",
        mlflow_tracking_uri=args.mlflow_uri,
        mlflow_experiment="ia_continu_bench",
        model_name=f"bench_monitor_{uuid.uuid4().hex[:8]}",
        api_url=_health_stub(),
        timezone="UTC",
    )
    engine = create_db_engine(settings.resolved_database_url)
    upgrade_database(engine)

    async def one(hour: int) -> float:
        t0 = time.perf_counter()
        outcome = await service.execute_run(
            settings=settings,
            engine=engine,
            request=monitoring_types.RunRequest(hour=hour),
            notify=False,
        )
        elapsed = time.perf_counter() - t0
        assert outcome.run.status != "failed", outcome.run.error
        return elapsed

    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(),
        "mlflow": args.mlflow_uri,
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "batch": settings.monitor_batch_size,
    }
    t0 = time.perf_counter()
    asyncio.run(one(0))  # bootstrap: first champion (imports, experiment, registry)
    results["first_run_cold_s"] = round(time.perf_counter() - t0, 3)
    hour = 0
    same, retrain = [], []
    for _ in range(args.runs):
        same.append(asyncio.run(one(hour)))  # champion's parity: no action
        hour += 1
        retrain.append(asyncio.run(one(hour)))  # other parity: retrain and promote
    results["in_process_no_action"] = _stats(same)
    results["in_process_retrain_promote"] = _stats(retrain)

    if args.prefect_api_url:
        from ia_continu.db import monitoring_runs as db_runs
        from ia_continu.flows import flow_settings, monitoring_flow

        walls, recorded = [], []
        with flow_settings(settings):
            for _ in range(args.runs):
                hour += 1
                t0 = time.perf_counter()
                state = asyncio.run(monitoring_flow(hour=hour, return_state=True))
                walls.append(time.perf_counter() - t0)
                assert state.is_completed(), state.message
                run = db_runs.get_latest_monitoring_run(engine)
                assert run is not None and run.decision == "promoted"
                recorded.append(run.duration_seconds or 0.0)
        results["prefect_flow_retrain_promote_wall"] = _stats(walls)
        results["prefect_flow_retrain_promote_recorded"] = _stats(recorded)
    engine.dispose()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "monitoring_run.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
