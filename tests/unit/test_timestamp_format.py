"""/predict's timestamp text, formatted with a per-second cache, equals datetime's own."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from ia_continu.api.routes.core import format_timestamp_us


def _reference(epoch_us: int) -> str:
    return datetime.fromtimestamp(epoch_us / 1_000_000, UTC).isoformat()


def test_timestamp_text_matches_datetime_isoformat_for_random_microseconds() -> None:
    rng = random.Random(7)
    now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
    values = [rng.randrange(0, 4_102_444_800_000_000) for _ in range(20_000)]
    # Runs within one second (the cache hit), whole seconds (no fraction in isoformat),
    # and second boundaries crossed back and forth.
    values += [now_us + rng.randrange(-3_000_000, 3_000_000) for _ in range(20_000)]
    values += [(now_us // 1_000_000 + k) * 1_000_000 for k in range(-5, 5)]
    values += [(now_us // 1_000_000) * 1_000_000 + d for d in (-1, 0, 1, 999_999, 1_000_000)]
    for value in values:
        assert format_timestamp_us(value) == _reference(value), value


def test_whole_second_has_no_fraction_like_isoformat() -> None:
    text = format_timestamp_us(1_700_000_000_000_000)
    assert text == _reference(1_700_000_000_000_000)
    assert "." not in text
