"""Per-process application state: engine, the model being served, locks."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from ia_continu.config import Settings
from ia_continu.db.model_files import load_served_model
from ia_continu.ml.predictor import LinearModel
from ia_continu.services.predlog import PredictionLogger

if TYPE_CHECKING:
    from ia_continu.api.metrics import AppMetrics

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    clock: Callable[[], datetime]
    # Replaced by a single reference assignment: request handlers never see half a swap.
    model: LinearModel | None = None
    retrain_lock: threading.Lock = field(default_factory=threading.Lock)
    extras: dict[str, object] = field(default_factory=dict)
    # Prometheus metrics of this process (None when the app is built without them).
    metrics: AppMetrics | None = None
    # Bumped by every swap: a refresh that read the database before a newer swap
    # (a retrain or rollback in this process) must not put its stale answer back.
    _swaps: int = 0
    _swap_lock: threading.Lock = field(default_factory=threading.Lock)
    # None when IA_PREDICTION_LOG_ENABLED=false.
    predlog: PredictionLogger | None = None
    # The shadow challenger scored beside the champion (IA_SHADOW=true), never returned;
    # replaced by a single reference assignment like ``model``.
    shadow: LinearModel | None = None

    def serve(self, model: LinearModel) -> None:
        with self._swap_lock:
            self._swap(model)

    def _swap(self, model: LinearModel) -> None:
        if self.model is None or self.model.version != model.version:
            log.info("serving model %s", model.version)
        self.model = model
        self._swaps += 1
        if self.metrics is not None:
            self.metrics.set_served_version(model.version)

    def model_or_load(self) -> LinearModel | None:
        """The served model; with none loaded yet, the database is asked first (blocking:
        run in a thread). Another worker may have trained the first model a moment ago:
        answering "no model is trained yet" until this process's next poll was false."""
        if self.model is None:
            try:
                self.refresh_model()
            except Exception as exc:  # database unavailable: there is no model to offer
                log.warning("cannot load the active model: %s", exc)
        return self.model

    def refresh_model(self) -> None:
        """Serve whatever model the database says is active, and follow the shadow
        challenger when IA_SHADOW=true (blocking: run in a thread)."""
        self._refresh_active()
        if self.settings.shadow:
            self.refresh_shadow()

    def refresh_shadow(self) -> None:
        """Hold the shadow model the database designates (db/feedback.py's rule)."""
        from ia_continu.db.models import get_shadow_version

        version = get_shadow_version(self.engine)
        if version is None:
            if self.shadow is not None:
                log.info("no shadow model any more (was %s)", self.shadow.version)
            self.shadow = None
            return
        if self.shadow is not None and self.shadow.version == version:
            return
        model = load_served_model(
            engine=self.engine, models_dir=self.settings.models_dir, version=version
        )
        if model is not None:
            log.info("shadow-scoring model %s", model.version)
        self.shadow = model

    def _refresh_active(self) -> None:
        from ia_continu.db import models as db_models

        seen = self._swaps
        version = db_models.get_active_version(self.engine)
        if version is None or (self.model is not None and self.model.version == version):
            return
        model = load_served_model(
            engine=self.engine, models_dir=self.settings.models_dir, version=version
        )
        if model is None:
            return
        with self._swap_lock:
            if self._swaps == seen:
                self._swap(model)


async def watch_active_model(state: AppState) -> None:
    """Follow the active model so that every worker process serves a new champion
    within ``model_refresh_interval`` seconds, whichever process activated it."""
    failing = False
    while True:
        await asyncio.sleep(state.settings.model_refresh_interval)
        try:
            await asyncio.to_thread(state.refresh_model)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # database briefly unavailable: keep serving
            if not failing:
                log.warning("cannot refresh the active model: %s", exc)
            failing = True
        else:
            if failing:
                log.info("active-model refresh recovered")
            failing = False


def start_prediction_logging(state: AppState) -> None:
    """Create and start the prediction logger unless the settings turn it off."""
    if state.settings.prediction_log_enabled:
        state.predlog = PredictionLogger.from_settings(state.settings, engine=state.engine)
        state.predlog.start()
    # Retention of the log (IA_PRUNE_INTERVAL=0: only `ia-continu db prune` and the flow).
    from ia_continu.services.pruner import BackgroundPruner

    pruner = BackgroundPruner(state.settings, state.engine)
    state.extras["pruner"] = pruner
    pruner.start()


async def stop_prediction_logging(state: AppState) -> None:
    """Write whatever is still queued (before the engine is disposed)."""
    from ia_continu.services.pruner import BackgroundPruner

    pruner = state.extras.pop("pruner", None)
    if isinstance(pruner, BackgroundPruner):
        await pruner.close()
    if state.predlog is not None:
        await state.predlog.close()
        counters = state.predlog.counters()
        log.info(
            "prediction log closed: %d logged, %d written, %d dropped (queue full), %d abandoned",
            counters.logged,
            counters.flushed,
            counters.dropped,
            counters.abandoned,
        )
