"""Canonical input: the same rows in any tie order and batching give the same canonical batches."""

from __future__ import annotations

import itertools
import random

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.canonical import THREAD_ORDER, Canonicalizer

ROWS = 7  # small canonical batches, so runs of ties cross their boundaries too


def _batch(rows: list[tuple[int, int, int, str]]) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "begin": pa.array([r[0] for r in rows], pa.int64()),
            "end": pa.array([r[1] for r in rows], pa.int64()),
            "depth": pa.array([r[2] for r in rows], pa.uint32()),
            "name": pa.array([r[3] for r in rows], pa.utf8()).dictionary_encode(),
            "target": pa.array(["t"] * len(rows)),
            "filename": pa.array(["f"] * len(rows)),
            "line": pa.array([1] * len(rows), pa.uint32()),
        }
    )


def _run(rows: list[tuple[int, int, int, str]], cuts: list[int]) -> list[list[dict[str, object]]]:
    canon = Canonicalizer(THREAD_ORDER, "thread_spans", rows=ROWS)
    out: list[pa.RecordBatch] = []
    bounds = [0, *sorted(cuts), len(rows)]
    for a, b in itertools.pairwise(bounds):
        out += canon.push(_batch(rows[a:b]))
        assert canon.pending_rows < ROWS + len(rows)
    out += canon.flush()
    assert all(b.num_rows == ROWS for b in out[:-1])
    return [b.to_pylist() for b in out]


@settings(max_examples=200, deadline=None)
@given(
    keys=st.lists(st.integers(0, 6), min_size=1, max_size=40),
    data=st.data(),
)
def test_tie_order_and_batching_do_not_change_the_canonical_batches(
    keys: list[int], data: st.DataObject
) -> None:
    rows = [
        (k, k + data.draw(st.integers(0, 3)), data.draw(st.integers(0, 2)), data.draw(st.sampled_from("ab")))
        for k in sorted(keys)
    ]
    cuts = data.draw(st.lists(st.integers(0, len(rows)), max_size=5))
    want = _run(rows, [])
    # Shuffle rows among their ties, and cut the batches elsewhere.
    rng = random.Random(data.draw(st.integers(0, 1000)))
    shuffled: list[tuple[int, int, int, str]] = []
    for _, run in itertools.groupby(rows, key=lambda r: r[0]):
        group = list(run)
        rng.shuffle(group)
        shuffled += group
    assert _run(shuffled, cuts) == want
    flat = [(r["begin"], r["depth"], r["end"]) for b in want for r in b]
    # Within a run of equal begins: shallower first, then shorter first.
    assert flat == sorted(flat)
    assert len(flat) == len(rows)
