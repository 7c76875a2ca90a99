"""The gate that keeps heavy imports (scikit-learn, mlflow, skops) out of two threads
at once.

Two threads importing mlflow at the same time can see a partially initialised module
(its package imports are circular). While a warm-up thread (registry/warmup.py) imports
them, every entry point that imports these libraries calls :func:`wait_until_warm`
first: it returns at once when no warm-up is pending, and otherwise waits for it (the
caller would have paid for the imports anyway). Pure synchronisation, no heavy import:
it lives in the domain layer so that ml/train.py can wait without importing an adapter.
"""

from __future__ import annotations

import threading

_cond = threading.Condition()
_pending = 0
_local = threading.local()  # marks the warm-up thread, which must not wait for itself


def begin_warm_up() -> None:
    """Count one more pending warm-up: from now the entry points wait for it."""
    global _pending
    with _cond:
        _pending += 1


def end_warm_up() -> None:
    """One pending warm-up is over (done or failed): wake the waiters."""
    global _pending
    with _cond:
        _pending -= 1
        _cond.notify_all()


def mark_warm_up_thread() -> None:
    """The calling thread is the warm-up itself: it never waits for itself."""
    _local.inside = True


def wait_until_warm() -> None:
    if getattr(_local, "inside", False):
        return
    with _cond:
        _cond.wait_for(lambda: _pending == 0)
