"""Canonical input: the same rows in any tie order and batching give the same canonical batches."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.canonical import ASYNC_ORDER, THREAD_ORDER, Canonicalizer

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


def _async_rows(rows: list[tuple[int, str | None, int | None, str | None]]) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "time": pa.array([r[0] for r in rows], pa.int64()),
            "event_type": pa.array([r[1] for r in rows], pa.string()).dictionary_encode(),
            "span_id": pa.array([r[2] for r in rows], pa.int64()),
            "parent_span_id": pa.array([0] * len(rows), pa.int64()),
            "name": pa.array([r[3] for r in rows], pa.string()),
            "target": pa.array(["t"] * len(rows)).dictionary_encode(),
            "filename": pa.array(["f"] * len(rows)),
            "line": pa.array([1] * len(rows), pa.uint32()),
        }
    )


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["begin", "BEGIN", "end", "End", None]),
            st.one_of(st.none(), st.integers(0, 3)),
            st.one_of(st.none(), st.sampled_from(["a", "b", "B"])),
        ),
        min_size=1,
        max_size=30,
    ),
    cuts=st.lists(st.integers(0, 30), max_size=4),
)
def test_ties_already_in_order_are_detected_exactly(
    rows: list[tuple[int, str | None, int | None, str | None]], cuts: list[int]
) -> None:
    """The sort is skipped only when it would move no row: nulls last, case folded, dictionaries and
    batches cut anywhere; input in order comes out unchanged, any other order comes out the same."""
    rows = sorted(rows, key=lambda r: r[0])

    def canon_run(
        rs: list[tuple[int, str | None, int | None, str | None]], cut: list[int]
    ) -> list[dict[str, object]]:
        canon = Canonicalizer(ASYNC_ORDER, "async_events", fold_case=("event_type",), rows=ROWS)
        out: list[pa.RecordBatch] = []
        bounds = [0, *sorted(c for c in cut if c < len(rs)), len(rs)]
        for a, b in itertools.pairwise(bounds):
            if b > a:
                out += canon.push(_async_rows(rs[a:b]))
        out += canon.flush()
        return [r for b in out for r in b.to_pylist()]

    def key(r: tuple[int, str | None, int | None, str | None]) -> tuple[object, ...]:
        kind = r[1].lower() if r[1] is not None else None
        return (r[0], kind is None, kind or "", r[2] is None, r[2] or 0, r[3] is None, r[3] or "")

    ordered = sorted(rows, key=key)
    want = canon_run(ordered, [])
    assert [(r["time"], r["event_type"], r["span_id"], r["name"]) for r in want] == ordered
    assert canon_run(rows, cuts) == want
    table = pa.Table.from_batches([_async_rows(ordered)])
    canon = Canonicalizer(ASYNC_ORDER, "async_events", fold_case=("event_type",))
    keys = table.column("time").to_numpy()
    pairs = np.flatnonzero(keys[1:] == keys[:-1])
    assert canon._ties_in_order(table, pairs)
    if [key(r) for r in rows] != [key(r) for r in ordered]:
        messy = pa.Table.from_batches([_async_rows(rows)])
        assert not canon._ties_in_order(messy, pairs)
