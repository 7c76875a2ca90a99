"""CPU cost of the prediction writer's flush per row, and of one 10,000-item /feedback
upsert (``--upsert``: half the ids match a logged prediction), this tree against a baseline tree
(default: ``main``, exported with git archive), in alternating child processes so that
both see the same machine load. Rows carry ids and a shadow score, as /predict logs
them; 20,000 earlier predictions, a fifth of them labelled, are in the database first.
Cases: no label waiting for its prediction (the usual case), and 1 % of the flushed rows
labelled before their flush (this tree copies them into feedback in the same transaction).
Usage: python -m bench.feedback_flush_micro [--rows N] [--rounds R] [--baseline REF]"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH = 5_000


def _rows(n: int) -> list[Any]:
    # Ids as /predict makes them (time-ordered): a label's probe lands near the newest ones.
    from ia_continu.api.ids import new_prediction_ids

    now = time.time_ns() // 1000
    ids = new_prediction_ids(n, now)
    return [
        (now + i, 0.5, -1.2, i & 1, 0.73, "v1", ids[i], "v2", (i >> 1) & 1, 0.6) for i in range(n)
    ]


def child(rows: int, early: bool) -> None:
    try:  # one module per aggregate since the layout refactor
        from ia_continu.db import predictions_insert as repo
    except ImportError:  # a baseline tree from before it
        from ia_continu.db import repository as repo  # type: ignore[no-redef]
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.feedback import upsert_feedback
    from ia_continu.db.migrate import upgrade_database

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade_database(engine)
        seed = _rows(20_000)
        repo.insert_predictions(engine, seed)
        upsert_feedback(engine, [(r[6], 1) for r in seed[::5]], received_at=datetime.now(UTC))
        batch = _rows(rows)
        if early:
            upsert_feedback(
                engine, [(r[6], 0) for r in batch[::100]], received_at=datetime.now(UTC)
            )
        c0 = time.process_time()
        for i in range(0, rows, BATCH):
            repo.insert_predictions(engine, batch[i : i + BATCH])
        print((time.process_time() - c0) / rows * 1e6)
        engine.dispose()


def child_upsert(rows: int) -> None:
    try:  # one module per aggregate since the layout refactor
        from ia_continu.db import predictions_insert as repo
    except ImportError:  # a baseline tree from before it
        from ia_continu.db import repository as repo  # type: ignore[no-redef]
    from ia_continu.db.engine import create_db_engine
    from ia_continu.db.feedback import upsert_feedback
    from ia_continu.db.migrate import upgrade_database

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade_database(engine)
        seed = _rows(rows)
        for i in range(0, rows, BATCH):
            repo.insert_predictions(engine, seed[i : i + BATCH])
        with engine.connect() as conn:  # as a long-running database is: rows in the file
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        times = []
        for k in range(5):  # 5,000 logged ids and 5,000 unknown ones, fresh each time
            items = [(r[6], 1) for r in seed[k * 5000 : (k + 1) * 5000]]
            items += [(r[6], 0) for r in _rows(5000)]  # ids never logged
            c0 = time.process_time()
            upsert_feedback(engine, items, received_at=datetime.now(UTC))
            times.append(time.process_time() - c0)
        print(statistics.median(times) * 1e3)
        engine.dispose()


def _measure(src: Path, rows: int, early: bool, upsert: bool = False) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    argv = [sys.executable, "-m", "bench.feedback_flush_micro", "--child", "--rows", str(rows)]
    if early:
        argv.append("--early")
    if upsert:
        argv.append("--upsert")
    out = subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default="main")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--early", action="store_true")
    parser.add_argument("--upsert", action="store_true")
    args = parser.parse_args()
    if args.child:
        if args.upsert:
            child_upsert(args.rows)
        else:
            child(args.rows, args.early)
        return
    results: dict[str, list[float]] = {"baseline": [], "this tree": [], "this tree, 1% early": []}
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "base.tar"
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", "-o", str(archive), args.baseline, "src"],
            check=True,
        )
        with tarfile.open(archive) as tar:
            tar.extractall(Path(tmp) / "base", filter="data")
        base_src = Path(tmp) / "base" / "src"
        if args.upsert:
            ups: dict[str, list[float]] = {"baseline": [], "this tree": []}
            for _ in range(args.rounds):
                ups["baseline"].append(_measure(base_src, args.rows, False, upsert=True))
                ups["this tree"].append(_measure(ROOT / "src", args.rows, False, upsert=True))
            base = statistics.median(ups["baseline"])
            print(f"upsert of 10,000 labels, CPU ms, sqlite, {args.rows} predictions logged")
            for case, values in ups.items():
                m = statistics.median(values)
                shown = ", ".join(f"{v:.1f}" for v in values)
                print(f"  {case:>20}: {m:6.1f} ms (x{m / base:.3f})  [{shown}]")
            print(f"  load average: {os.getloadavg()}")
            return
        for _ in range(args.rounds):
            results["baseline"].append(_measure(base_src, args.rows, early=False))
            results["this tree"].append(_measure(ROOT / "src", args.rows, early=False))
            results["this tree, 1% early"].append(_measure(ROOT / "src", args.rows, early=True))
    base = statistics.median(results["baseline"])
    print(f"flush CPU per row, sqlite, batches of {BATCH}, {args.rows} rows, {args.rounds} rounds")
    for case, values in results.items():
        m = statistics.median(values)
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {case:>20}: {m:6.2f} us/row (x{m / base:.3f})  [{shown}]")
    print(f"  load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
