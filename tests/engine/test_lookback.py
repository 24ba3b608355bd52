"""Lookback (worker/engine/lookback.py): of the events before the range, only begins still open."""

from __future__ import annotations

import pyarrow as pa
import pytest

from worker.engine.lookback import Lookback


@pytest.mark.parametrize("dictionary", [False, True])
def test_only_begins_still_open_at_the_range_begin_are_handed_on(dictionary: bool) -> None:
    # Span 1 begins and ends before the range; span 2 begins before and ends inside it.
    kinds = pa.array(["begin", "begin", "end", "end"])
    if dictionary:  # a source may keep string columns dictionary-encoded (the devserver's mixed mode)
        kinds = kinds.dictionary_encode()
    batch = pa.record_batch(
        {
            "time": pa.array([10, 20, 30, 150], pa.int64()),
            "span_id": pa.array([1, 2, 1, 2]),
            "event_type": kinds,
        }
    )
    out = Lookback(begin_ns=100).split(batch)
    rows = pa.Table.from_batches(out).to_pylist()
    assert [(r["time"], r["span_id"]) for r in rows] == [(20, 2), (150, 2)]
