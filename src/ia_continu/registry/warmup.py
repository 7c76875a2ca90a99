"""Paying the first retrain's one-off costs ahead of time, safely.

The first retrain of a process imports scikit-learn, mlflow and skops and initialises
them lazily: ~5 s of CPU. The API starts :func:`start_background_warm_up` once it is
serving. Two threads importing mlflow at the same time can see a partially initialised
module (its package imports are circular), so every entry point that imports these
libraries calls :func:`~ia_continu.ml.warm_gate.wait_until_warm` first: it returns at once
when no warm-up is pending, and otherwise waits for it (the caller would have paid for the
imports anyway).
"""

from __future__ import annotations

import gc
import logging
import threading
import time

from ia_continu.ml import warm_gate

log = logging.getLogger(__name__)

_frozen_lock = threading.Lock()
# One warm-up imports at a time: two apps in one process (tests, an in-process simulation)
# start two warm-up threads, which do not wait for each other at the gate; importing
# mlflow in both at once left a partially initialised module behind (seen: every later
# `import mlflow` in that process failed).
_import_lock = threading.Lock()


def start_background_warm_up(delay: float = 0.0) -> threading.Thread:
    """Warm up in a daemon thread after ``delay`` seconds (so that the first requests
    do not compete with the imports for the GIL). From now until it is done, the
    entry points wait for it instead of importing concurrently."""
    warm_gate.begin_warm_up()
    thread = threading.Thread(target=_run, args=(delay,), name="ml-warm-up", daemon=True)
    thread.start()
    return thread


def _run(delay: float) -> None:
    warm_gate.mark_warm_up_thread()
    try:
        time.sleep(delay)
        started = time.perf_counter()
        with _import_lock:
            warm_up()
        _freeze_long_lived_objects()
        log.info("ML warm-up done in %.1f s", time.perf_counter() - started)
    except Exception as exc:  # only an optimisation: the entry points import on demand
        log.warning("ML warm-up failed: %s", exc)
    finally:
        warm_gate.end_warm_up()


def _freeze_long_lived_objects() -> None:
    """Move every object alive now (start-up and the ~200k objects of these imports,
    which live as long as the process) out of the garbage collector's full passes:
    scanning them was 2/3 of the CPU of a 10,000-row /predict/batch. Once per process
    (objects frozen here are never collected, so later apps in the same process, as in
    tests, are left alone)."""
    global _frozen
    with _frozen_lock:
        if _frozen:
            return
        _frozen = True
    gc.freeze()


_frozen = False


def warm_up() -> None:
    """Import and exercise scikit-learn and mlflow (no network, no database)."""
    from ia_continu.ml.train import warm_up_training
    from ia_continu.registry import training_runs

    training_runs.warm_up(warm_up_training())
