"""CPU cost of the prediction writer's flush per row, this tree against a baseline tree
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
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH = 5_000


def _rows(n: int) -> list[Any]:
    now = time.time_ns() // 1000
    return [
        (now + i, 0.5, -1.2, i & 1, 0.73, "v1", str(uuid.uuid4()), "v2", (i >> 1) & 1, 0.6)
        for i in range(n)
    ]


def child(rows: int, early: bool) -> None:
    from ia_continu.db import repository as repo
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


def _measure(src: Path, rows: int, early: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    argv = [sys.executable, "-m", "bench.feedback_flush_micro", "--child", "--rows", str(rows)]
    if early:
        argv.append("--early")
    out = subprocess.run(argv, env=env, cwd=ROOT, check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default="main")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--early", action="store_true")
    args = parser.parse_args()
    if args.child:
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
