"""Retention benchmark: bytes per prediction row, prune throughput, and /predict p99
during a prune vs without, side by side, on SQLite and PostgreSQL.

    python -m bench.retention                # 200k rows per size/prune run, 3 rounds
    python -m bench.retention --smoke        # tiny sizes (keeps the script working)
    python -m bench.retention --rows 1000000 --backends sqlite

Sizes: the database's own accounting (SQLite page_count x page_size; PostgreSQL
pg_total_relation_size of the table, indexes and TOAST included) before and after
inserting the rows the way the API writes them (predictions_insert.insert_predictions), and
again with a 36-character prediction_id on every row (the feedback branch's rows).

p99: one `ia-continu serve` (1 worker, background prune off), one keep-alive client
sending /predict sequentially; rounds alternate "no prune" and "a prune of old rows runs
in another process" (as `ia-continu db prune` or the monitoring flow would), the same
number of requests each. The ratio is the figure to trust on a shared machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.servers import VENV_BIN, free_port, http_status
from ia_continu.db import models as db_models
from ia_continu.db import predictions as db_predictions
from ia_continu.db import predictions_insert as db_predictions_insert
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.db.retention import RetentionPolicy, prune
from ia_continu.db.tables import predictions
from ia_continu.db.vacuum import database_bytes
from ia_continu.ml.predictor import LinearModel

RESULTS_DIR = Path(__file__).with_name("results")
PG_ADMIN = os.environ.get(
    "IA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
DAY_US = 86_400 * 1_000_000
MODEL = LinearModel(version="v1", coef=(1.7, -0.9), intercept=0.2)


class Database:
    """A fresh SQLite file or PostgreSQL database, dropped at the end."""

    def __init__(self, backend: str, work: Path) -> None:
        self.backend = backend
        if backend == "sqlite":
            self.url = f"sqlite:///{work / f'{uuid.uuid4().hex[:8]}' / 'ia_continu_solution.db'}"
            self.name = ""
        else:
            self.name = f"bench_{uuid.uuid4().hex[:10]}"
            with self._admin() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
            self.url = sa.make_url(PG_ADMIN).set(database=self.name).render_as_string(False)
        self.engine = create_db_engine(self.url)
        upgrade_database(self.engine)

    def _admin(self) -> Any:
        return sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect()

    def table_bytes(self) -> int:
        if self.backend == "sqlite":
            return database_bytes(self.engine)
        with self.engine.connect() as conn:
            return int(
                conn.execute(sa.text("SELECT pg_total_relation_size('predictions')")).scalar_one()
            )

    def close(self) -> None:
        self.engine.dispose()
        if self.name:
            with self._admin() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def _rows(n: int, *, age_days: float, seed: int = 1) -> list[db_predictions_insert.PredictionRow]:
    rng = random.Random(seed)
    start = time.time_ns() // 1000 - int(age_days * DAY_US)
    return [
        (
            start + i * 1000,
            rng.uniform(-3, 3),
            rng.uniform(-3, 3),
            rng.randint(0, 1),
            rng.uniform(0.5, 1),
            "v20260115_103000",
        )
        for i in range(n)
    ]


def insert_rows(db: Database, n: int, *, age_days: float, with_id: bool = False) -> None:
    rows = _rows(n, age_days=age_days)
    for i in range(0, n, 5_000):
        chunk = rows[i : i + 5_000]
        if not with_id:
            db_predictions_insert.insert_predictions(db.engine, chunk)
            continue
        with db.engine.begin() as conn:
            conn.execute(
                predictions.insert(),
                [
                    {
                        "created_at": db_predictions.epoch_us_to_datetime(us),
                        "feature1": x1,
                        "feature2": x2,
                        "prediction": p,
                        "confidence": c,
                        "model_version": v,
                        "prediction_id": str(uuid.uuid4()),
                    }
                    for us, x1, x2, p, c, v in chunk
                ],
            )


def bench_size_and_prune(backend: str, rows: int, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"backend": backend, "rows": rows}
    for label, with_id in (("api_rows", False), ("with_prediction_id", True)):
        db = Database(backend, work)
        try:
            before = db.table_bytes()
            insert_rows(db, rows, age_days=40, with_id=with_id)
            if backend == "postgresql":
                with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    c.execute(sa.text("VACUUM ANALYZE predictions"))
            per_row = (db.table_bytes() - before) / rows
            out[label] = {
                "bytes_per_row": round(per_row, 1),
                "mb_per_million": round(per_row, 1),  # bytes/row x 1e6 / 1e6
                "gb_per_day_at_1000_rps": round(per_row * 86_400_000 / 1e9, 2),
            }
            if not with_id:
                started = time.perf_counter()
                report = prune(
                    db.engine,
                    RetentionPolicy(older_than=timedelta(days=30)),
                    now=datetime.now(UTC),
                )
                elapsed = time.perf_counter() - started
                out["prune"] = {
                    "removed": report.predictions_removed,
                    "seconds": round(elapsed, 2),
                    "rows_per_s": round(report.predictions_removed / elapsed),
                    "batches": report.batches,
                    "vacuum": report.vacuum.describe() if report.vacuum else None,
                }
        finally:
            db.close()
    return out


# --- /predict p99 during a prune ------------------------------------------------------------


def _latencies(port: int, stop: threading.Event, n_min: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = b'{"features": [0.5, -1.2]}'
    headers = {"Content-Type": "application/json"}
    times: list[float] = []
    try:
        while not stop.is_set() or len(times) < n_min:
            t0 = time.perf_counter()
            conn.request("POST", "/predict", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"/predict answered {response.status}")
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        conn.close()
    return times


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_p99(backend: str, rows: int, rounds: int, work: Path) -> dict[str, Any]:
    db = Database(backend, work)
    data_dir = work / f"api-{uuid.uuid4().hex[:6]}"
    db_models.insert_model(
        db.engine,
        db_models.ModelRecord(
            version=MODEL.version,
            accuracy=0.9,
            training_samples=800,
            created_at=datetime.now(UTC),
            is_active=True,
            parameters=MODEL.to_json(),
        ),
        activate=True,
    )
    port = free_port()
    env = {
        **os.environ,
        "IA_PORT": str(port),
        "IA_DATA_DIR": str(data_dir),
        "IA_DATABASE_URL": db.url,
        "IA_LOG_LEVEL": "warning",
        "IA_PRUNE_INTERVAL": "0",
        "IA_WARM_UP_ML": "false",
        "IA_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    }
    log = open(work / f"api-{port}.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(VENV_BIN / "ia-continu"), "serve"],
        env=env,
        cwd=work,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base: list[float] = []
    during: list[float] = []
    prune_rows_per_s: list[float] = []
    try:
        deadline = time.monotonic() + 120
        while http_status(port, "/health") != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the API did not start")
            time.sleep(0.2)
        done = threading.Event()
        done.set()  # a fixed number of requests
        _latencies(port, done, 200)  # warm-up
        for _ in range(rounds):
            insert_rows(db, rows, age_days=40)  # what the prune round removes
            # With a prune in another process, for as long as it lasts.
            stop = threading.Event()
            result: list[float] = []

            def measure(sink: list[float] = result, until: threading.Event = stop) -> None:
                sink.extend(_latencies(port, until, 200))

            client = threading.Thread(target=measure, daemon=True)
            client.start()
            t0 = time.perf_counter()
            report = prune(
                db.engine, RetentionPolicy(older_than=timedelta(days=30)), now=datetime.now(UTC)
            )
            elapsed = time.perf_counter() - t0
            stop.set()
            client.join()
            during.extend(result)
            prune_rows_per_s.append(report.predictions_removed / elapsed)
            # Without: the same number of requests.
            base.extend(_latencies(port, done, len(result)))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        db.close()
    p99_base, p99_during = _p(base, 0.99), _p(during, 0.99)
    return {
        "backend": backend,
        "rows_pruned_per_round": rows,
        "rounds": rounds,
        "requests": {"without": len(base), "during": len(during)},
        "p50_ms": {"without": round(_p(base, 0.5), 2), "during": round(_p(during, 0.5), 2)},
        "p99_ms": {"without": round(p99_base, 2), "during": round(p99_during, 2)},
        "p99_ratio_during_over_without": round(p99_during / p99_base, 2),
        "prune_rows_per_s_under_load": round(statistics.median(prune_rows_per_s)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    rows = 5_000 if args.smoke else args.rows
    rounds = 1 if args.smoke else args.rounds
    backends = [b for b in args.backends.split(",") if b]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "python": sys.version.split()[0],
        "size_and_prune": [],
        "p99": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-retention-") as tmp:
        work = Path(tmp)
        for backend in backends:
            results["size_and_prune"].append(bench_size_and_prune(backend, rows, work))
            print(json.dumps(results["size_and_prune"][-1]), flush=True)
        for backend in backends:
            results["p99"].append(bench_p99(backend, rows // 2, rounds, work))
            print(json.dumps(results["p99"][-1]), flush=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"retention-{stamp}{'-smoke' if args.smoke else ''}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
