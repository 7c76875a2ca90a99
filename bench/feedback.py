"""Learning from production, measured (section ``feedback`` of `make bench`, or alone:
``python -m bench.feedback [--smoke]``).

- the prediction id generator, ns per id, beside ``str(uuid.uuid4())`` in the same loop;
- /predict with ids + logging against the commit just before prediction ids were added (the
  parent of the commit that created ``api/ids.py``, started from a temporary ``git worktree``;
  ``--baseline REF`` picks another), alternating wrk rounds, one worker each;
- POST /feedback with 10,000 items (fresh ids each time: every row is an insert);
- GET /predictions/performance over 1,000,000 logged predictions with 300,000 labels
  (SQLite file; PostgreSQL too when the local server answers).
No MLflow: the served model is stored in the database directly.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bench.load import ensure_wrk, median_result, run_wrk, time_requests
from bench.servers import VENV_BIN, Server, _base_env, _spawn, free_port

ROOT = Path(__file__).resolve().parents[1]
PREDICT_BODY = '{"features": [0.5, -1.2]}'
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _seed_model(database_url: str, data_dir: Path, src: Path = ROOT / "src") -> None:
    env = {**_base_env(), "IA_DATA_DIR": str(data_dir), "IA_DATABASE_URL": database_url}
    env["PYTHONPATH"] = str(src)
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "predlog_seed.py")], env=env, check=True, cwd=ROOT
    )


def _start(name: str, data_dir: Path, log_dir: Path, src: Path, database_url: str = "") -> Server:
    port = free_port()
    env = {
        **_base_env(),
        "IA_PORT": str(port),
        "IA_DATA_DIR": str(data_dir),
        "IA_DATABASE_URL": database_url,
        "IA_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "IA_LOG_LEVEL": "warning",
        "IA_WARM_UP_ML": "false",
        # The code under test comes first on the path (the venv holds an editable install
        # of this tree; the baseline's tree must win for the baseline server).
        "PYTHONPATH": str(src),
    }
    argv = [str(VENV_BIN / "python"), "-m", "ia_continu", "serve", "--port", str(port)]
    server = _spawn(name, argv, env, log_dir / f"{name}-{port}.log", port)
    server.wait_ready("/health", timeout=300)
    return server


def bench_ids(rounds: int = 5, n: int = 100_000) -> dict[str, float]:
    from ia_continu.api.ids import new_prediction_id, new_prediction_ids

    ours, theirs, batch = [], [], []
    us = time.time_ns() // 1000
    for _ in range(rounds):  # interleaved: both see the same machine load
        ours.append(timeit.timeit(lambda: new_prediction_id(us), number=n) / n * 1e9)
        theirs.append(timeit.timeit(lambda: str(uuid.uuid4()), number=n) / n * 1e9)
        batch.append(timeit.timeit(lambda: new_prediction_ids(10_000, us), number=10) / 1e5 * 1e9)
    return {
        "ns_per_id": statistics.median(ours),
        "ns_per_id_batch": statistics.median(batch),
        "ns_per_uuid4_str": statistics.median(theirs),
    }


def bench_predict_ab(
    wrk: str | None,
    work: Path,
    rounds: int,
    seconds: float,
    connections: int = 8,
    baseline: str = "",
) -> dict[str, Any]:
    if wrk is None:
        return {"skipped": "wrk unavailable"}
    # The baseline: the tree just before prediction ids existed (the parent of the commit
    # that added api/ids.py). Comparing with the merge base stopped meaning anything once
    # the feature was on main (HEAD against itself). No git checkout (an installed copy,
    # an image): nothing to compare with, said so.
    if baseline:
        found = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{baseline}^{{commit}}"],
            capture_output=True,
            text=True,
        )
    else:
        found = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "log",
                "--diff-filter=A",
                "--format=%H^",
                "--",
                "src/ia_continu/api/ids.py",
            ],
            capture_output=True,
            text=True,
        )
        if found.returncode == 0 and found.stdout.strip():
            found = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--verify", found.stdout.split()[-1]],
                capture_output=True,
                text=True,
            )
    base = found.stdout.strip()
    tree = work / "baseline-tree"
    if found.returncode != 0 or not base:
        return {"skipped": f"no baseline commit: {found.stderr.strip()[:200]}"}
    added = subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), base],
        capture_output=True,
        text=True,
    )
    if added.returncode != 0:
        return {"skipped": f"git worktree add failed: {added.stderr.strip()[:200]}"}
    servers: list[Server] = []
    try:
        for name, src in (("new", ROOT / "src"), ("base", tree / "src")):
            data = work / f"ab-{name}"
            _seed_model("", data, src)
            servers.append(_start(name, data, work / "logs", src))
        new, old = servers
        runs: dict[str, list[Any]] = {"new": [], "base": []}
        for r in range(rounds + 1):  # round 0 warms both up and is dropped
            order = [(new, "new"), (old, "base")] if r % 2 else [(old, "base"), (new, "new")]
            for server, key in order:
                result = run_wrk(
                    wrk,
                    f"{server.url}/predict",
                    connections=connections,
                    seconds=seconds,
                    body=PREDICT_BODY,
                    server_cpu=server.cpu_seconds,
                )
                if r:
                    runs[key].append(result)
        ratios = [n.rps / b.rps for n, b in zip(runs["new"], runs["base"], strict=True)]
        med_new, med_old = median_result(runs["new"]), median_result(runs["base"])
        return {
            "baseline_commit": base,
            "new": med_new.as_dict(),
            "base": med_old.as_dict(),
            "ratio_per_round": [round(x, 3) for x in ratios],
            "ratio_median": statistics.median(ratios),
        }
    finally:
        for server in servers:
            server.stop()
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
        )


def bench_feedback_10k(work: Path, reps: int) -> dict[str, Any]:
    data = work / "fb"
    _seed_model("", data)
    server = _start("feedback", data, work / "logs", ROOT / "src")
    try:
        rng = random.Random(3)
        times, batch_times = [], []
        for _ in range(reps + 1):
            rows = [[rng.uniform(-3, 3), rng.uniform(-3, 3)] for _ in range(10_000)]
            answer = time_requests(
                server.port,
                "/predict/batch",
                body=orjson.dumps({"instances": rows}),
                n=1,
                warmup=0,
            )
            ids = orjson.loads(answer.last_body)["prediction_ids"]
            batch_times.append(answer.median_ms)
            body = orjson.dumps(
                {"items": [{"prediction_id": i, "label": rng.randint(0, 1)} for i in ids]}
            )
            timed = time_requests(server.port, "/feedback", body=body, n=1, warmup=0)
            assert orjson.loads(timed.last_body)["created"] == 10_000, timed.last_body
            times.append(timed.median_ms)
        # /predict/batch with 10,000 rows (goal <= 20 ms in bench/run.py) as the yardstick
        # of the machine's speed at that moment.
        return {
            "ms_per_request": statistics.median(times[1:]),
            "all_ms": times,
            "predict_batch_10k_ms": statistics.median(batch_times[1:]),
        }
    finally:
        server.stop()


def seed_performance(database_url: str, predictions: int, labels: int) -> None:
    """``predictions`` rows over the last 6 days (two served versions, all scored by a
    shadow), ``labels`` of them labelled a few minutes to hours later."""
    import numpy as np

    from ia_continu.api.ids import new_prediction_ids
    from ia_continu.db import predictions_insert as db_predictions_insert
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.feedback import upsert_feedback
    from ia_continu.db.migrate import upgrade_database

    engine = create_db_engine(database_url)
    upgrade_database(engine)
    rng = np.random.default_rng(1)
    now_us = time.time_ns() // 1000
    span_us = 6 * 86_400 * 1_000_000
    times = np.sort(now_us - rng.integers(60_000_000, span_us, predictions))
    chunk = 50_000
    ids: list[str] = []
    for start in range(0, predictions, chunk):
        t = times[start : start + chunk].tolist()
        block = []
        for j, us in enumerate(t):
            pid = new_prediction_ids(1, us)[0]
            ids.append(pid)
            version = "v1" if start + j < predictions // 2 else "v2"
            x1, x2 = rng.normal(size=2).tolist()
            pred = int(x1 > 0)
            block.append((us, x1, x2, pred, 0.8, version, pid, "v3", int(x2 > 0), 0.7))
        db_predictions_insert.insert_predictions(engine, block)
    chosen = rng.choice(predictions, labels, replace=False)
    items = [(ids[i], int(rng.integers(0, 2))) for i in chosen.tolist()]
    # Received later than served (the delay percentiles are not all zero).
    for start in range(0, labels, 10_000):
        upsert_feedback(engine, items[start : start + 10_000], received_at=datetime.now(UTC))
    with engine.connect() as conn:  # fresh statistics for the planner
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    engine.dispose()


def bench_performance(
    work: Path, predictions: int, labels: int, reps: int, database_url: str, name: str
) -> dict[str, Any]:
    data = work / f"perf-{name}"
    url = database_url or f"sqlite:///{data / 'perf.db'}"
    data.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seed_performance(url, predictions, labels)
    seeded_s = time.perf_counter() - started
    _seed_model(url, data)
    server = _start(f"perf-{name}", data, work / "logs", ROOT / "src", url)
    try:
        since = (datetime.now(UTC) - timedelta(days=7)).isoformat().replace("+00:00", "Z")
        timed = time_requests(
            server.port,
            f"/predictions/performance?since={since}",
            body=None,
            n=reps,
            warmup=1,
        )
        answer = orjson.loads(timed.last_body)
        assert answer["overall"]["labelled"] == labels, answer["overall"]
        return {
            "median_ms": timed.median_ms,
            "seed_s": round(seeded_s, 1),
            "served": answer["overall"]["served"],
            "labelled": answer["overall"]["labelled"],
        }
    finally:
        server.stop()


def _postgres_schema_url() -> tuple[str, str] | None:
    try:
        import sqlalchemy as sa

        admin = sa.create_engine(POSTGRES_URL)
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        admin.dispose()
    except Exception:
        return None
    url = sa.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), schema


def _drop_schema(schema: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def bench_feedback(
    table: Any,
    *,
    smoke: bool,
    wrk: str | None,
    work: Path,
    sections: frozenset[str] = frozenset(),
    baseline: str = "",
) -> dict[str, Any]:
    """Every measure of this module, added to ``table`` (bench/run.py's Table)."""

    def want(s: str) -> bool:
        return not sections or s in sections

    out: dict[str, Any] = {}
    if want("ids"):
        ids = out["ids"] = bench_ids(rounds=1 if smoke else 5, n=10_000 if smoke else 100_000)
        table.add(
            "feedback",
            "prediction id, ns per id (str(uuid4()) beside)",
            f"{ids['ns_per_id']:.0f} ns ({ids['ns_per_id_batch']:.0f} in a batch; "
            f"uuid4 {ids['ns_per_uuid4_str']:.0f} ns)",
        )
    if want("ab"):
        ab = out["predict_ab"] = bench_predict_ab(
            wrk, work, rounds=1 if smoke else 6, seconds=1 if smoke else 5, baseline=baseline
        )
        if "skipped" in ab:
            table.add("feedback", "/predict with ids ÷ before ids", f"skipped: {ab['skipped']}")
        else:
            table.add(
                "feedback",
                f"/predict with ids ÷ before ids ({ab['baseline_commit'][:7]}), c=8",
                f"{ab['ratio_median']:.3f} (new {ab['new']['rps']:,.0f} vs "
                f"{ab['base']['rps']:,.0f} req/s; "
                f"{ab['new']['cpu_us_per_request'] or 0:.0f} vs "
                f"{ab['base']['cpu_us_per_request'] or 0:.0f} µs CPU/req)",
                ">= 0.95",
                ab["ratio_median"] >= 0.95,
            )
    if want("feedback10k"):
        fb = out["feedback_10k"] = bench_feedback_10k(work, reps=1 if smoke else 5)
        table.add(
            "feedback",
            "POST /feedback 10,000 items (round trip)",
            f"{fb['ms_per_request']:.1f} ms (/predict/batch 10,000 rows: "
            f"{fb['predict_batch_10k_ms']:.1f} ms)",
            "<= 100 ms",
            fb["ms_per_request"] <= 100,
        )
    if want("performance"):
        n, k = (20_000, 6_000) if smoke else (1_000_000, 300_000)
        targets = [("sqlite", "")]
        pg = _postgres_schema_url()
        if pg is not None:
            targets.append(("postgres", pg[0]))
        try:
            for name, url in targets:
                perf = out[f"performance_{name}"] = bench_performance(
                    work, n, k, reps=3 if smoke else 7, database_url=url, name=name
                )
                table.add(
                    "feedback",
                    f"GET /predictions/performance {n:,} predictions, {k:,} labels ({name})",
                    f"{perf['median_ms']:.0f} ms (seeded in {perf['seed_s']:.0f} s)",
                    "<= 200 ms",
                    perf["median_ms"] <= 200,
                )
        finally:
            if pg is not None:
                _drop_schema(pg[1])
    return out


def main(argv: list[str] | None = None) -> int:
    from bench.run import Table

    parser = argparse.ArgumentParser(prog="python -m bench.feedback")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--sections", default="", help="ids,ab,feedback10k,performance")
    parser.add_argument(
        "--baseline", default="", help="git ref for the /predict A/B (default: before ids)"
    )
    args = parser.parse_args(argv)
    table = Table()
    work = Path(tempfile.mkdtemp(prefix="ia-bench-feedback-"))
    try:
        results = bench_feedback(
            table,
            smoke=args.smoke,
            wrk=ensure_wrk(),
            work=work,
            sections=frozenset(filter(None, args.sections.split(","))),
            baseline=args.baseline,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{datetime.now(UTC).isoformat()} load average {os.getloadavg()}")
    print(table.render())
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
