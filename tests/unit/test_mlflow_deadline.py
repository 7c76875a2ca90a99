"""run_with_deadline: the caller is answered at the deadline, the abandoned operation is
told to stop, its late result is undone, and an operation that never started never runs.
(Plain threads: the MLflow side is covered by tests/integration/test_mlflow_deadline.py.)"""

from __future__ import annotations

import threading

import pytest

from ia_continu.registry.core import Deadline, RegistryUnavailableError, run_with_deadline


def test_late_result_is_handed_to_on_late_and_operation_sees_abandoned() -> None:
    release = threading.Event()
    undone: list[str] = []
    undone_event = threading.Event()
    seen_abandoned: list[bool] = []

    def operation(abandoned: threading.Event) -> str:
        release.wait(timeout=30)
        seen_abandoned.append(abandoned.is_set())
        return "v7"

    def on_late(result: str) -> None:
        undone.append(result)
        undone_event.set()

    with pytest.raises(RegistryUnavailableError, match="IA_MLFLOW_DEADLINE"):
        run_with_deadline(Deadline(0.2), "test", operation, on_late=on_late)
    release.set()  # the "server" resumes after the caller got its answer
    assert undone_event.wait(timeout=30)
    assert undone == ["v7"] and seen_abandoned == [True]


def test_result_in_time_is_returned_and_errors_become_registry_errors() -> None:
    assert run_with_deadline(Deadline(30), "test", lambda _: 42) == 42

    def failing(_: threading.Event) -> None:
        raise ConnectionError("refused")

    with pytest.raises(RegistryUnavailableError, match="ConnectionError: refused"):
        run_with_deadline(Deadline(30), "test", failing)


def test_operation_whose_deadline_passed_before_it_started_never_runs() -> None:
    from ia_continu.registry import core as registry

    # Occupy every worker so that the next operation waits in the queue past its deadline.
    block = threading.Event()
    started = threading.Semaphore(0)
    workers = registry._op_executor()._max_workers

    def hold(_: threading.Event) -> None:
        started.release()
        block.wait(timeout=30)

    def caller() -> None:
        run_with_deadline(Deadline(30), "hold", hold)

    holders = [threading.Thread(target=caller) for _ in range(workers)]
    for t in holders:
        t.start()
    for _ in range(workers):
        assert started.acquire(timeout=30)
    ran: list[bool] = []
    with pytest.raises(RegistryUnavailableError):
        run_with_deadline(Deadline(0.1), "queued", lambda _: ran.append(True))
    block.set()
    for t in holders:
        t.join(timeout=30)
    # The queued operation has had every chance to run by now: the pool is free.
    assert run_with_deadline(Deadline(30), "after", lambda _: "free") == "free"
    assert ran == []
