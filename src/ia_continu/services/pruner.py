"""The API's background prune: keeps the prediction log within its retention limits.

Each API process runs one; the first prune comes after a random part of the interval so
that workers started together do not line up, and a process that finds another one
pruning skips its turn (db/retention.py's lock). Deletes run in a worker thread, in
small batches: the event loop and /predict never wait on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from ia_continu.config import Settings
    from ia_continu.db.retention import PruneReport

log = logging.getLogger(__name__)


class BackgroundPruner:
    """Lifecycle: ``start()`` in the running event loop, ``await close()`` at the end."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.interval = settings.prune_interval
        self.runs = 0
        self.last_report: PruneReport | None = None
        self._stop = threading.Event()  # seen by the prune's thread between batches
        # The wait between prunes, on the event loop: not a pool thread held for minutes.
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval <= 0 or self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name="prediction-log-prune")

    async def _run(self) -> None:
        delay = random.uniform(0.5, 1.0) * self.interval
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            if self._stop.is_set():
                return
            delay = self.interval
            try:
                await asyncio.to_thread(self.prune_once)
            except Exception as exc:  # database unavailable: the next turn tries again
                log.warning("prediction log prune failed: %s: %s", type(exc).__name__, exc)

    def prune_once(self) -> PruneReport:
        """One prune with the settings' policy (blocking)."""
        from ia_continu.db.retention import RetentionPolicy, prune

        report = prune(
            self.engine,
            RetentionPolicy.from_settings(self.settings),
            now=datetime.now(UTC),  # rows are logged in real time, whatever the app clock
            batch_size=self.settings.prune_batch_size,
            stop=self._stop,
        )
        self.runs += 1
        self.last_report = report
        if report.predictions_removed or report.datasets_removed:
            log.info("retention: %s", report.describe())
        return report

    async def close(self) -> None:
        """Stop between two batches and wait for the thread (before the engine goes)."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
