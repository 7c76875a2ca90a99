"""Prediction ids: time-ordered UUIDv7-shaped strings made in-process, no database round trip.

Layout (RFC 9562 UUIDv7 fields): 48 bits of Unix time in milliseconds, then a 26-bit
per-process counter (the 12 ``rand_a`` bits and the 14 bits after the variant), then a
48-bit random node drawn once per process. Two ids of one process differ by their counter
(it wraps after 67 million ids, which cannot happen within one millisecond); two processes
(workers, restarts, replicas) differ by their node, drawn from ``os.urandom``: a collision
needs the same millisecond, the same counter value and the same 48 random bits. Ids sort by
time (to the millisecond) across processes, which also keeps the unique index on
``predictions.prediction_id`` appending at its right edge.

``itertools.count`` is advanced under the GIL in one C call: safe from several threads.
"""

from __future__ import annotations

import itertools
import os
import re
import time

ID_LENGTH = 36
# Canonical 8-4-4-4-12 hexadecimal form; feedback accepts any such id (ours are lowercase).
ID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
ID_RE = re.compile(ID_PATTERN)
_COUNTER_MASK = (1 << 26) - 1

_node = ""
_counter: itertools.count[int] = itertools.count()


def _reseed() -> None:
    """A fresh node and counter start: at import, and in a child after fork (a forked
    worker must not repeat its parent's ids)."""
    global _node, _counter
    seed = int.from_bytes(os.urandom(10), "big")
    _node = f"{seed >> 32:012x}"
    _counter = itertools.count(seed & _COUNTER_MASK)


_reseed()
os.register_at_fork(after_in_child=_reseed)


# (millisecond, its formatted time part): at thousands of predictions per second most ids
# share their millisecond with the previous one. One tuple, replaced in one assignment:
# a thread never reads a time part with another millisecond's value.
_time_part: tuple[int, str] = (-1, "")


def new_prediction_id(epoch_us: int | None = None) -> str:
    """One id for a prediction made at ``epoch_us`` (integer microseconds, default now)."""
    global _time_part
    ms = (time.time_ns() // 1_000_000) if epoch_us is None else epoch_us // 1000
    c = next(_counter) & _COUNTER_MASK
    cached = _time_part
    if cached[0] != ms:
        cached = _time_part = (ms, f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-")
    return f"{cached[1]}{0x7000 | c >> 14:04x}-{0x8000 | c & 0x3FFF:04x}-{_node}"


def new_prediction_ids(n: int, epoch_us: int | None = None) -> list[str]:
    """``n`` ids made at one time (a batch route): the time part is formatted once."""
    ms = (time.time_ns() // 1_000_000) if epoch_us is None else epoch_us // 1000
    head = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-"
    tail = "-" + _node
    counter = _counter
    mask = _COUNTER_MASK
    out: list[str] = []
    append = out.append
    for _ in range(n):
        c = next(counter) & mask
        append(f"{head}{0x7000 | c >> 14:04x}-{0x8000 | c & 0x3FFF:04x}{tail}")
    return out


def is_prediction_id(value: str) -> bool:
    return len(value) == ID_LENGTH and ID_RE.match(value) is not None
