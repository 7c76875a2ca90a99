"""Cost of prediction logging per request, measured in-process (steadier than wrk on a
shared machine): the hot-path append, and the background write per row (batches as the
flush task makes them). Default: a temporary SQLite file; or an empty database URL.
Usage: python bench/predlog_micro.py [ROWS] [DATABASE_URL]"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from ia_continu.db import predictions as db_predictions
from ia_continu.db.engine import create_db_engine
from ia_continu.db.migrate import upgrade_database
from ia_continu.services.predlog import PredictionLogger


def main(rows: int = 200_000, url: str = "") -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_db_engine(url or f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade_database(engine)
        logger = PredictionLogger(
            engine=engine, queue_size=rows, batch_size=5_000, flush_interval=3600
        )
        log = logger.log
        now = time.time_ns() // 1000
        t0 = time.perf_counter()
        for i in range(rows):
            log("v1", 0.5, -1.2, i & 1, 0.73, now)
        append_us = (time.perf_counter() - t0) / rows * 1e6

        # CPU time of the whole flush (the draining in the loop + the thread's insert).
        c0 = time.process_time()
        written = asyncio.run(logger.flush())
        flush_us = (time.process_time() - c0) / written * 1e6
        assert db_predictions.count_predictions(engine) >= rows
        backend = engine.dialect.name
        engine.dispose()
    print(f"append on the request path: {append_us:.2f} us/row")
    print(f"background flush ({backend}, batches of 5000): {flush_us:.2f} us CPU/row")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000, *sys.argv[2:3])
