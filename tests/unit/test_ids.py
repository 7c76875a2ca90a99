"""Prediction ids: UUIDv7 layout, time from the request, unique and ordered within a
process, a new node after fork; and shadow scoring at flush time (services/predlog.py)."""

from __future__ import annotations

import os
import uuid

import pytest

from ia_continu.api import ids
from ia_continu.ml.predictor import LinearModel
from ia_continu.services.predlog import score_shadow

T_US = 1_764_470_000_123_456


def test_ids_are_uuid7_with_the_request_time() -> None:
    one = ids.new_prediction_id(T_US)
    many = ids.new_prediction_ids(1000, T_US)
    for i in [one, *many]:
        parsed = uuid.UUID(i)
        assert str(parsed) == i and len(i) == ids.ID_LENGTH
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert int(i[:8] + i[9:13], 16) == T_US // 1000  # milliseconds since the epoch
        assert ids.is_prediction_id(i)
    assert len({one, *many}) == 1001
    assert many == sorted(many)  # the counter orders ids of one millisecond
    assert {i[-12:] for i in [one, *many]} == {one[-12:]}  # one node per process


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_a_new_node() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its id and leave at once
        os.write(write, ids.new_prediction_id(T_US).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    os.close(write)
    assert child[-12:] != ids.new_prediction_id(T_US)[-12:]


def test_malformed_ids_are_refused() -> None:
    for bad in [
        "",
        "x" * 36,
        str(uuid.uuid4())[:-1],
        str(uuid.uuid4()) + "0",
        "g" * 8 + "-0000-7000-8000-" + "0" * 12,
    ]:
        assert not ids.is_prediction_id(bad)


def test_shadow_scores_use_the_model_the_request_saw() -> None:
    old = LinearModel(version="v2", coef=(1.0, 0.0), intercept=0.0)
    new = LinearModel(version="v3", coef=(-1.0, 0.0), intercept=0.0)
    rows = [
        (T_US, 2.0, 0.0, 1, 0.88, "v1", "a", old),
        (T_US, 2.0, 0.0, 1, 0.88, "v1", "b", new),
        (T_US, 2.0, 0.0, 1, 0.88, "v1", "c", None),
        (T_US, 2.0, 0.0, 1, 0.88, "v2", "d", old),  # just promoted: nothing to compare
    ]
    out = score_shadow(rows)  # type: ignore[arg-type]
    assert [r[:7] for r in out] == [r[:7] for r in rows]
    assert out[0][7:9] == ("v2", 1) and out[0][9] == pytest.approx(old.predict_one(2.0, 0.0)[1])
    assert out[1][7:9] == ("v3", 0) and out[1][9] == pytest.approx(new.predict_one(2.0, 0.0)[1])
    assert out[2][7:] == (None, None, None)
    assert out[3][7:] == (None, None, None)
