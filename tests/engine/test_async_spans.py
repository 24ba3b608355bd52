"""Async spans: one slice per span with its true times, on lane tracks, parents linked, cuts marked."""

from __future__ import annotations

import io
import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.request import SpanTypes
from tests.engine.data import PROCESS, RANGE, THREADS, AsyncEvent, async_batch, split
from tests.engine.decode import Decoded, decode
from worker.engine import TraceEncoder, encode
from worker.engine.async_spans import _stable_order
from worker.inspect import inspect_trace

PROCESS_UUID = xxhash.xxh64_intdigest(PROCESS.process_id.encode())
GROUP_UUID = xxhash.xxh64_intdigest(b"async_track", seed=PROCESS_UUID)


def run(batches: Sequence[pa.RecordBatch], chunk_size: int = 1 << 20) -> bytes:
    return b"".join(
        encode(
            PROCESS, THREADS, [], batches, span_types=SpanTypes.ASYNC, time_range=RANGE, chunk_size=chunk_size
        )
    )


@dataclass
class Model:
    """What the trace must contain for a list of events (the documented rules, written plainly)."""

    spans: list[tuple[int, int, str, str]]  # (begin, end, name, cut)
    parent_of: dict[int, int | None]  # begin event index -> parent's begin event index (None: group)


def canonical(events: Sequence[AsyncEvent]) -> list[AsyncEvent]:
    """The documented order of tied events: in each run of consecutive events with equal times, begins
    before ends, then by span id, parent, name, target, file and line."""
    out: list[AsyncEvent] = []
    for _, run_ in itertools.groupby(events, key=lambda e: e.time):
        out += sorted(
            run_, key=lambda e: (e.kind.lower(), e.span_id, e.parent, e.name, e.target, e.filename, e.line)
        )
    return out


def model(events: Sequence[AsyncEvent]) -> Model:
    """Indices in the result refer to ``canonical(events)``."""
    events = canonical(events)
    open_: dict[int, tuple[int, int]] = {}  # span id -> (event index, begin time)
    spans = []
    parent_of: dict[int, int | None] = {}
    for i, ev in enumerate(events):
        if ev.kind == "begin":
            if ev.span_id in open_:
                continue  # duplicate begin: dropped
            parent = open_.get(ev.parent) if ev.parent else None
            parent_of[i] = parent[0] if parent else None
            open_[ev.span_id] = (i, ev.time)
        elif ev.span_id in open_:
            first, begin = open_.pop(ev.span_id)
            spans.append((begin, max(begin, ev.time), events[first].name, ""))
        else:
            spans.append((min(RANGE.begin_ns, ev.time), ev.time, ev.name, "begin"))
    # Open spans end at the last time the process has data (here: its last event), within the range.
    data_end = min(RANGE.end_ns, max(ev.time for ev in events)) if events else RANGE.end_ns
    for i, begin in open_.values():
        spans.append((begin, max(begin, data_end), events[i].name, "end"))
    return Model(sorted(spans), parent_of)


def check(decoded: Decoded, events: Sequence[AsyncEvent]) -> None:
    assert decoded.problems == []
    want = model(events)
    got = sorted((s.begin, s.end, s.name, s.cut) for s in decoded.slices)
    assert got == want.spans
    # Lane tracks, each named "async" under the group (see test_async_lanes for the layout rules).
    for uuid in {s.track for s in decoded.slices}:
        desc = decoded.descriptors[uuid]
        assert desc.name == "async"
        assert desc.parent_uuid == GROUP_UUID
    for s in decoded.slices:
        assert (s.category, s.file, s.line) == ("async", "lib.rs", 7)


@st.composite
def interleavings(draw: st.DrawFn) -> list[AsyncEvent]:
    """Overlapping spans with parents, orphans (end without begin), open spans, equal timestamps,
    and a few stray duplicate begins and extra ends."""
    n = draw(st.integers(1, 25))
    raw: list[tuple[int, int, int, AsyncEvent]] = []
    for sid in range(1, n + 1):
        begin = RANGE.begin_ns + draw(st.integers(0, 30))
        end = begin + draw(st.integers(0, 20))
        parent = draw(st.integers(0, sid - 1))
        name = draw(st.sampled_from(["p", "q", "r"]))
        stream = draw(st.sampled_from(["stream-a", "stream-b"]))
        shape = draw(st.sampled_from(["full", "full", "full", "no-begin", "no-end"]))
        if shape != "no-begin":
            raw.append(
                (begin, draw(st.integers()), 0, AsyncEvent(begin, "begin", sid, parent, name, stream=stream))
            )
        if shape != "no-end":
            other = draw(st.sampled_from(["stream-a", "stream-b"]))  # ends may come from another thread
            raw.append((end, draw(st.integers()), 1, AsyncEvent(end, "end", sid, parent, name, stream=other)))
    for _ in range(draw(st.integers(0, 3))):  # stray events: duplicate begins, extra ends
        sid = draw(st.integers(1, n))
        at = RANGE.begin_ns + draw(st.integers(0, 50))
        kind = draw(st.sampled_from(["begin", "end"]))
        raw.append((at, draw(st.integers()), 2, AsyncEvent(at, kind, sid, 0, "s")))
    raw.sort(key=lambda r: (r[0], r[1]))
    # A span's begin precedes its end in the input even at equal timestamps (both have one time).
    events = [r[3] for r in raw]
    seen_begin: dict[int, int] = {}
    for i, ev in enumerate(events):
        if ev.kind == "begin":
            seen_begin[ev.span_id] = i
    for i, ev in enumerate(events):
        j = seen_begin.get(ev.span_id)
        if ev.kind == "end" and j is not None and j > i:
            events[i], events[j] = events[j], events[i]
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=interleavings(),
    cuts=st.lists(st.integers(0, 50), max_size=5),
    encoding=st.sampled_from(["plain", "dict16", "dict32"]),
)
def test_random_interleavings(events: list[AsyncEvent], cuts: list[int], encoding: str) -> None:
    batch = async_batch(events, encoding)
    data = run(split(batch, cuts))
    decoded = decode(data)
    events = canonical(events)
    check(decoded, events)
    assert inspect_trace(io.BytesIO(data)).ok
    # Parent links: a span opened inside its open parent's slice on the parent's track, or linked to it.
    links = {f for s in decoded.slices for f in s.flows}
    for s in decoded.slices:
        assert s.under is not None or all(f in links for f in s.term_flows)
    assert run(split(batch, cuts), chunk_size=150) == data


def test_duplicate_begin_end_before_begin_and_unknown_event_types() -> None:
    t = RANGE.begin_ns
    events = [
        AsyncEvent(t + 1, "begin", 1),
        AsyncEvent(t + 2, "begin", 1),  # duplicate while open: dropped
        AsyncEvent(t + 3, "end", 1),
        AsyncEvent(t + 4, "end", 1),  # a second end: a span cut at the range begin
        AsyncEvent(t + 5, "bogus", 2),  # unknown type: dropped
        AsyncEvent(t + 9, "begin", 3),
        AsyncEvent(t + 8, "end", 3),  # end before begin: clamped to the begin
    ]
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.ASYNC, time_range=RANGE)
    data = b"".join(enc.start() + enc.add_async_events(async_batch(events, "plain")) + enc.finish())
    decoded = decode(data)
    assert decoded.problems == []
    assert sorted((s.begin, s.end, s.cut) for s in decoded.slices) == [
        (t, t + 4, "begin"),
        (t + 1, t + 3, ""),
        (t + 9, t + 9, ""),
    ]
    stats = enc.stats
    assert (stats.async_spans, stats.cut_spans, stats.dropped_events, stats.clamped_spans) == (3, 1, 2, 1)


def test_reused_span_id_gets_a_new_track() -> None:
    t = RANGE.begin_ns
    events = [AsyncEvent(t, "begin", 5), AsyncEvent(t + 1, "end", 5), AsyncEvent(t + 2, "begin", 5)]
    events.append(AsyncEvent(t + 3, "end", 5))
    decoded = decode(run([async_batch(events)]))
    assert decoded.problems == []
    assert len({s.track for s in decoded.slices}) == 2


def test_many_overlapping_spans_pair_across_batches_with_bounded_pending() -> None:
    rng = random.Random(7)
    events = []
    for sid in range(1, 2001):
        b = RANGE.begin_ns + rng.randrange(0, 100_000)
        events.append(AsyncEvent(b, "begin", sid, name=f"n{sid % 13}"))
        events.append(AsyncEvent(b + rng.randrange(0, 5_000), "end", sid, name=f"n{sid % 13}"))
    events.sort(key=lambda e: (e.time, e.kind == "end"))
    batches = split(async_batch(events), list(range(0, len(events), 97)))
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.ASYNC, time_range=RANGE, chunk_size=4096)
    chunks = enc.start()
    peak = 0
    for batch in batches:
        chunks += enc.add_async_events(batch)
        peak = max(peak, len(enc._async.sid))
    chunks += enc.finish()
    check(decode(b"".join(chunks)), events)
    assert enc.stats.async_spans == 2000 and enc.stats.cut_spans == 0
    assert peak < 400  # open spans only, not every span seen


def test_null_times_and_span_ids_are_dropped_and_negative_times_clamped() -> None:
    t = RANGE.begin_ns
    batch = pa.record_batch(
        {
            "time": pa.array([None, -5, t + 1, t + 2, t + 3], pa.int64()),
            "event_type": pa.array(["begin", "begin", "end", "begin", "end"]),
            "span_id": pa.array([1, 2, 2, None, 4], pa.int64()),
            "parent_span_id": pa.array([0, 0, 0, 0, None], pa.int64()),
            "name": pa.array(["a", "b", "b", "c", "d"]),
            "target": pa.array(["t"] * 5),
            "filename": pa.array(["f"] * 5),
            "line": pa.array([1] * 5, pa.uint32()),
        }
    )
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.ASYNC, time_range=RANGE)
    decoded = decode(b"".join(enc.start() + enc.add_async_events(batch) + enc.finish()))
    assert decoded.problems == []
    assert sorted((s.name, s.begin, s.end, s.cut) for s in decoded.slices) == [
        ("b", t, t + 1, "begin"),  # began before the range: clipped to its begin
        ("d", t, t + 3, "begin"),
    ]
    assert enc.stats.dropped_events == 2


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=interleavings(), cuts=st.lists(st.integers(0, 50), max_size=5), seed=st.integers(0, 1000))
def test_ties_in_canonical_order_or_shuffled_give_the_same_bytes(
    events: list[AsyncEvent], cuts: list[int], seed: int
) -> None:
    """Input whose ties are already in canonical order skips the tie sort (canonical.py): it must give
    the bytes of the same events with their ties shuffled (sorted by the slow path)."""
    ordered = canonical(events)
    rng = random.Random(seed)
    shuffled: list[AsyncEvent] = []
    for _, run_ in itertools.groupby(ordered, key=lambda e: e.time):
        group = list(run_)
        rng.shuffle(group)
        shuffled += group
    want = run(split(async_batch(ordered), cuts))
    assert run(split(async_batch(shuffled), cuts)) == want
    assert run([async_batch(ordered, "plain")]) == want


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.integers(-(1 << 63), (1 << 63) - 1) | st.integers(0, 5), min_size=0, max_size=60),
    narrow=st.booleans(),
)
def test_stable_order_of_span_ids(values: list[int], narrow: bool) -> None:
    """Pairing sorts span ids with their positions packed into one key when their range allows, else
    with a stable argsort: both give the stable order."""
    if narrow:
        values = [v % 1000 for v in values]
    arr = np.array(values, dtype=np.int64)
    order, sorted_values = _stable_order(arr)
    want = np.argsort(arr, kind="stable")
    assert order.tolist() == want.tolist()
    assert sorted_values.tolist() == arr[want].tolist()
