"""Async lanes: children under their parent on one track, or linked to it by a flow; few tracks.

Every check decodes the trace bytes and pairs BEGIN/END per track the way Perfetto does (tests/engine/
decode.py); spans are named after their span id so each slice is identified.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.request import SpanTypes
from tests.engine.data import PROCESS, RANGE, THREADS, AsyncEvent, async_batch, split
from tests.engine.decode import Decoded, Slice, decode
from tests.engine.perfetto_import import MAX_DEPTH, import_trace
from tests.engine.test_async_spans import GROUP_UUID, run
from worker.engine import TraceEncoder, async_spans
from worker.engine.lanes import NONE, _group_exclusive_max
from worker.inspect import inspect_trace


def run_windowed(batches: Sequence[pa.RecordBatch], window: int) -> bytes:
    """The trace with the async layout window shrunk, so spans cross windows in small inputs."""
    enc = TraceEncoder(PROCESS, THREADS, span_types=SpanTypes.ASYNC, time_range=RANGE)
    enc._async.window = window
    chunks = enc.start()
    for batch in batches:
        chunks += enc.add_async_events(batch)
    return b"".join(chunks + enc.finish())


@dataclass(frozen=True)
class Want:
    begin: int
    end: int
    cut: str
    parent: str | None  # name of the parent span open at the begin, if any
    parent_id: int  # parent_span_id of the begin event (0: none)


def model(events: Sequence[AsyncEvent], window: int = 1 << 16) -> dict[str, Want]:
    """Span name -> what its slice must be (names are unique per span in these tests). A span's parent
    is the parent span open at its begin, or the one that closed before it in the same window of
    ``window`` events (the layout's windows, in canonical order)."""
    open_: dict[int, tuple[AsyncEvent, str | None]] = {}
    closed_here: dict[int, str] = {}  # span id -> name of the last span with it closed in this window
    out: dict[str, Want] = {}
    # The engine reads ties in canonical order (worker/engine/canonical.py): begins before ends.
    for i, ev in enumerate(sorted(events, key=lambda e: (e.time, e.kind, e.span_id, e.parent, e.name))):
        if i % window == 0:
            closed_here.clear()
        if ev.kind == "begin":
            parent = open_.get(ev.parent) if ev.parent else None
            parent_name = parent[0].name if parent else closed_here.get(ev.parent) if ev.parent else None
            open_[ev.span_id] = (ev, parent_name)
        elif ev.span_id in open_:
            b, parent_name = open_.pop(ev.span_id)
            closed_here[ev.span_id] = b.name
            out[b.name] = Want(b.time, max(b.time, ev.time), "", parent_name, b.parent)
        else:
            out[ev.name] = Want(min(RANGE.begin_ns, ev.time), ev.time, "begin", None, 0)
    # Spans still open end at the range end or the last time the process has data, the earlier.
    last = min(RANGE.end_ns, max((ev.time for ev in events), default=RANGE.end_ns))
    for b, parent_name in open_.values():
        out[b.name] = Want(b.time, max(b.time, last), "end", parent_name, b.parent)
    return out


def peak(intervals: Sequence[tuple[int, int]]) -> int:
    """Most closed intervals sharing one instant."""
    points = sorted([(b, 0) for b, _ in intervals] + [(e, 1) for _, e in intervals])
    best = now = 0
    for _, kind in points:
        now += 1 if kind == 0 else -1
        best = max(best, now)
    return best


def max_depth(want: dict[str, Want]) -> int:
    """Spans in the longest parent chain (a loop: chains here run deeper than Python's recursion limit)."""
    depth: dict[str, int] = {}
    for name in want:
        chain: list[str] = []
        at: str | None = name
        while at is not None and at not in depth:
            chain.append(at)
            at = want[at].parent
        d = 0 if at is None else depth[at]
        for n in reversed(chain):
            d += 1
            depth[n] = d
    return max(depth.values(), default=0)


def check_lanes(decoded: Decoded, want: dict[str, Want]) -> None:
    """Exact slices, strict nesting per track, the row bound, and every child's parent shown."""
    assert decoded.problems == []
    by_name = {s.name: s for s in decoded.slices}
    assert len(by_name) == len(decoded.slices) == len(want)
    assert {n: (s.begin, s.end, s.cut) for n, s in by_name.items()} == {
        n: (w.begin, w.end, w.cut) for n, w in want.items()
    }
    # No partial overlap on any track: any two slices are disjoint or one contains the other.
    tracks: dict[int, list[Slice]] = {}
    for s in decoded.slices:
        tracks.setdefault(s.track, []).append(s)
    for slices in tracks.values():
        for i, a in enumerate(slices):
            for b in slices[i + 1 :]:
                nested = (a.begin <= b.begin and b.end <= a.end) or (b.begin <= a.begin and a.end <= b.end)
                assert nested or a.end <= b.begin or b.end <= a.begin, (a, b)
    # Every track is a lane root under the group; Perfetto merges them into rows by busy interval.
    for uuid in tracks:
        assert decoded.descriptors[uuid].parent_uuid == GROUP_UUID
        assert decoded.descriptors[uuid].name == "async"
    rows = peak([(min(s.begin for s in ss), max(s.end for s in ss)) for ss in tracks.values()])
    concurrency = peak([(w.begin, w.end) for w in want.values()])
    assert rows <= concurrency <= concurrency + max_depth(want)
    # Each child: under its parent on the parent's track, or a root linked from the parent by a flow.
    flows_from = {f: s.name for s in decoded.slices for f in s.flows}
    for name, w in want.items():
        s = by_name[name]
        if s.under is not None:
            assert s.under == w.parent and s.track == by_name[w.parent].track
            assert s.parent_span is None and not s.term_flows
            continue
        assert s.parent_span == (w.parent_id or None)
        if w.parent is None:
            assert not s.term_flows
        else:
            assert len(s.term_flows) == 1 and flows_from[s.term_flows[0]] == w.parent


def check_import(data: bytes, want: dict[str, Want]) -> None:
    """The trace as Perfetto's importer reads it (tests/engine/perfetto_import.py): no stat, every span
    one slice, async rows after track merging within peak concurrency + maximum depth, every child under
    its parent on its row or linked from it by a flow."""
    imported = import_trace(data)
    # (stats include slice_max_depth_exceeded: no row's stack may reach Perfetto's 512)
    assert not imported.stats and imported.dangling_flows == 0, imported.stats
    by_name = {s.name: k for k, s in enumerate(imported.slices)}
    assert len(by_name) == len(imported.slices) == len(want)
    assert {n: (imported.slices[k].begin, imported.slices[k].end) for n, k in by_name.items()} == {
        n: (w.begin, w.end) for n, w in want.items()
    }
    rows = imported.rows[("merged", GROUP_UUID, "async")]
    assert set(imported.rows) <= {("merged", GROUP_UUID, "async")}
    assert rows <= peak([(w.begin, w.end) for w in want.values()]) + max_depth(want)
    flows = set(imported.flows)
    for name, w in want.items():
        if w.parent is not None:
            child, parent = by_name[name], by_name[w.parent]
            assert imported.slices[child].parent == parent or (parent, child) in flows, name


def layout(decoded: Decoded) -> list[tuple[object, ...]]:
    return sorted(
        (s.track, s.begin, s.end, s.name, s.flows, s.term_flows, s.parent_span, s.under)
        for s in decoded.slices
    )


@st.composite
def lakes(draw: st.DrawFn) -> list[AsyncEvent]:
    """Spans with parents, nested or overlapping or outliving them, equal timestamps, cut spans."""
    n = draw(st.integers(1, 30))
    raw: list[tuple[int, int, AsyncEvent]] = []
    for sid in range(1, n + 1):
        begin = RANGE.begin_ns + draw(st.integers(0, 40))
        end = begin + draw(st.integers(0, 25))
        parent = draw(st.integers(0, sid - 1))
        shape = draw(st.sampled_from(["full"] * 6 + ["no-begin", "no-end"]))
        name = f"n{sid}"
        if shape != "no-begin":
            raw.append((begin, draw(st.integers()), AsyncEvent(begin, "begin", sid, parent, name)))
        if shape != "no-end":
            raw.append((end, draw(st.integers()), AsyncEvent(end, "end", sid, parent, name)))
    raw.sort(key=lambda r: (r[0], r[1]))
    events = [r[2] for r in raw]
    first = {}
    for i, ev in enumerate(events):
        if ev.kind == "begin":
            first[ev.span_id] = i
    for i, ev in enumerate(events):  # a span's begin precedes its end, even at equal times
        j = first.get(ev.span_id)
        if ev.kind == "end" and j is not None and j > i:
            events[i], events[j] = events[j], events[i]
    return events


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=lakes(), cuts=st.lists(st.integers(0, 60), max_size=6), window=st.integers(1, 12))
def test_lanes_are_exact_nested_and_linked(events: list[AsyncEvent], cuts: list[int], window: int) -> None:
    batch = async_batch(events)
    data = run_windowed(split(batch, cuts), window)
    check_lanes(decode(data), model(events, window))
    check_import(data, model(events, window))
    assert inspect_trace(io.BytesIO(data)).ok
    # The layout depends on the rows and the window, not on the caller's batching (interned data
    # packets still go before each input batch, so only the slices and their links are compared).
    assert layout(decode(run_windowed([batch], window))) == layout(decode(data))
    check_lanes(decode(run([batch])), model(events))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=lakes(), window=st.integers(1, 12))
def test_begins_built_per_layout_or_in_one_pass_give_the_same_bytes(
    events: list[AsyncEvent], window: int
) -> None:
    # BEGINs of many small layout groups are built in one pass (span_rows.begin_rows), of few large
    # ones with one event_matrix per group: both must write the same bytes, in windows, held ties and
    # the spans closed at the end alike.
    batch = async_batch(events)
    saved = async_spans._GROUP_ROWS
    try:
        async_spans._GROUP_ROWS = 0  # every group its own event_matrix
        per_group = run_windowed([batch], window)
        async_spans._GROUP_ROWS = 1 << 62  # every BEGIN in one begin_rows pass
        one_pass = run_windowed([batch], window)
    finally:
        async_spans._GROUP_ROWS = saved
    assert one_pass == per_group


def test_children_nest_under_their_parent_and_the_rest_get_flows() -> None:
    t = RANGE.begin_ns
    events = [
        AsyncEvent(t, "begin", 1, name="request"),
        AsyncEvent(t + 1, "begin", 2, 1, name="parse"),
        AsyncEvent(t + 2, "begin", 3, 1, name="fetch"),  # beside parse: its own track, a flow
        AsyncEvent(t + 3, "end", 2, name="parse"),
        AsyncEvent(t + 4, "begin", 4, 2, name="late"),  # parent already ended: a flow if in its window
        AsyncEvent(t + 5, "end", 4, name="late"),
        AsyncEvent(t + 6, "end", 1, name="request"),
        AsyncEvent(t + 7, "end", 3, name="fetch"),  # outlives request
        AsyncEvent(t + 8, "begin", 5, name="next"),  # reuses a free row
        AsyncEvent(t + 9, "begin", 6, 5, name="db"),
        AsyncEvent(t + 10, "end", 6, name="db"),
        AsyncEvent(t + 11, "begin", 7, 5, name="db2"),  # after its sibling ended: same track
        AsyncEvent(t + 12, "end", 7, name="db2"),
        AsyncEvent(t + 13, "end", 5, name="next"),
    ]
    for window in (3, 4, 5, 9):  # a span still open at the end of its window is a lane root
        data = run_windowed([async_batch(events, "plain")], window)
        check_lanes(decode(data), model(events, window))
        check_import(data, model(events, window))
    # parse's END is event 3 and late's BEGIN event 4: in one window of 3 or 5 events, not of 4, where
    # late's parent ended in an earlier window (its BEGIN already written): no flow, the annotation only.
    for window, linked in ((3, True), (4, False), (5, True)):
        got = decode(run_windowed([async_batch(events, "plain")], window))
        assert bool(next(x for x in got.slices if x.name == "late").term_flows) == linked
    want = model(events)
    decoded = decode(run(split(async_batch(events, "plain"), [3, 7])))
    check_lanes(decoded, want)
    s = {x.name: x for x in decoded.slices}
    assert s["parse"].under == "request" and s["db"].under == s["db2"].under == "next"
    assert s["fetch"].under is None and s["fetch"].parent_span == 1
    # The parent ended before it began, in the same window: a flow from the parent's slice.
    assert s["late"].parent_span == 2 and s["late"].term_flows and s["late"].term_flows[0] in s["parse"].flows
    assert len({x.track for x in decoded.slices}) == 4  # request, fetch, late, next


def test_a_long_parent_across_batches_keeps_its_children_and_flows() -> None:
    t = RANGE.begin_ns
    events = [AsyncEvent(t, "begin", 1, name="root")]
    for i in range(2, 40):
        events.append(AsyncEvent(t + 10 * i, "begin", i, 1, name=f"c{i}"))
        if i % 3:
            events.append(AsyncEvent(t + 10 * i + 5, "end", i, name=f"c{i}"))  # nested: same track
    for i in range(2, 40):
        if not i % 3:
            events.append(AsyncEvent(t + 1000 + i, "end", i, name=f"c{i}"))  # overlap the rest
    events.sort(key=lambda e: e.time)
    data = run_windowed([async_batch(events)], 7)
    decoded = decode(data)
    check_lanes(decoded, model(events))
    check_import(data, model(events))
    root = next(s for s in decoded.slices if s.name == "root")
    assert root.cut == "end" and len(root.flows) > 5


def test_children_beginning_with_their_parent_follow_its_begin_in_the_file() -> None:
    # Perfetto reads equal timestamps in file order and a flow starts at the first event carrying its id:
    # a linked child beginning at its parent's very begin must come after the parent's BEGIN, whether it
    # ends in an earlier window than its parent, in the same one, or is still open at the end.
    t = RANGE.begin_ns + 5
    events = [AsyncEvent(t, "begin", 1, name="parent")]
    events += [AsyncEvent(t, "begin", i, 1, name=f"child{i}") for i in range(2, 6)]
    events += [AsyncEvent(t, "begin", 6, 5, name="grandchild")]  # a tie under a tie
    events += [AsyncEvent(t + 1, "end", 2, name="child2"), AsyncEvent(t + 3, "end", 6, name="grandchild")]
    events += [AsyncEvent(t + 2, "end", 1, name="parent"), AsyncEvent(t + 4, "end", 3, name="child3")]
    # Both still open at the end (written last, together): parent 7 and its tie child 8.
    events += [AsyncEvent(t, "begin", 7, name="open-parent"), AsyncEvent(t, "begin", 8, 7, name="open-child")]
    events.sort(key=lambda e: e.time)
    for window in (1, 2, 3, 50):
        data = run_windowed([async_batch(events)], window)
        check_lanes(decode(data), model(events))
        check_import(data, model(events))


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 4), st.integers(0, 40), st.sampled_from([0, 1, 1 << 40, 1 << 62, -1])),
        min_size=1,
        max_size=40,
    )
)
def test_group_exclusive_max_narrow_and_wide_values(rows: list[tuple[int, int, int]]) -> None:
    """The segmented maximum (lanes.py) shifts narrow values instead of ranking them; NONE and values
    too wide to shift take the ranked path: both agree with the plain definition."""
    group = np.array([r[0] for r in rows], dtype=np.uint64)
    order_key = np.array([r[1] for r in rows], dtype=np.int64)
    narrow = np.array([r[1] * 3 % 7 for r in rows], dtype=np.int64)
    wide = np.array([NONE if r[2] == -1 else r[2] + r[1] for r in rows], dtype=np.int64)
    got = _group_exclusive_max(group, order_key, [narrow, wide])
    for values, result in zip((narrow, wide), got, strict=True):
        for i in range(len(rows)):
            earlier = [
                int(values[j])
                for j in range(len(rows))
                if group[j] == group[i] and (order_key[j], j) < (order_key[i], i)
            ]
            assert result[i] == max(earlier, default=-1)


def test_a_parent_id_above_every_span_id_of_the_window_is_no_parent() -> None:
    # The parent search looked one past the last opener when the parent id sorted after them all
    # (found by the long source fuzz: an IndexError instead of a trace).
    t = RANGE.begin_ns
    events = [
        AsyncEvent(t, "begin", 1, name="a"),
        AsyncEvent(t + 1, "begin", 2, 9, name="orphan"),  # no span 9 anywhere
        AsyncEvent(t + 2, "end", 2, name="orphan"),
        AsyncEvent(t + 3, "end", 1, name="a"),
    ]
    data = run([async_batch(events)])
    decoded = decode(data)
    check_lanes(decoded, model(events))
    orphan = next(s for s in decoded.slices if s.name == "orphan")
    assert orphan.under is None and orphan.parent_span == 9 and not orphan.term_flows


def chain(n: int, first: int = 1, parent: int = 0, t: int = RANGE.begin_ns + 10) -> list[AsyncEvent]:
    """Spans ``first`` .. ``first + n - 1`` from time ``t``, the first a child of ``parent``, each next one
    beginning after and ending before the one before it (its parent)."""
    events = []
    for k in range(n):
        sid = first + k
        events.append(AsyncEvent(t + k, "begin", sid, sid - 1 if k else parent, name=f"n{sid}"))
        events.append(AsyncEvent(t + 10 * n - k, "end", sid, name=f"n{sid}"))
    return sorted(events, key=lambda e: e.time)


def check_depth(data: bytes, want: dict[str, Want]) -> Decoded:
    """check_lanes and check_import, and no imported slice at depth MAX_DEPTH or more on its row."""
    decoded = decode(data)
    check_lanes(decoded, want)
    check_import(data, want)
    assert max(s.depth for s in import_trace(data).slices) < MAX_DEPTH
    return decoded


def test_a_chain_deeper_than_perfettos_max_depth_starts_a_lane_every_512_levels() -> None:
    # Perfetto drops a slice begun on a stack 512 deep (slice_max_depth_exceeded) and its END closes
    # the wrong slice: a chain of 1,300 nested spans laid on one track lost 788 of them.
    events = chain(1300)
    want = model(events)
    decoded = check_depth(run([async_batch(events)]), want)  # one window: the whole chain placed
    s = {x.name: x for x in decoded.slices}
    linked = sorted((x for x in decoded.slices if x.under is None and x.name != "n1"), key=lambda x: x.begin)
    assert [x.name for x in linked] == ["n513", "n1025"]  # depth 512 and 1024 of the chain
    for x in linked:
        parent = s[f"n{int(x.name[1:]) - 1}"]
        assert x.parent_span == int(parent.name[1:]) and x.term_flows and x.term_flows[0] in parent.flows
    assert len({x.track for x in decoded.slices}) == 3
    # Across windows: spans still open at the end of their window are lane roots; the ones placed
    # below a carried root count their depth from it.
    for window in (1, 700, 1500, 2000, 2599, 2600):
        check_depth(run_windowed([async_batch(events)], window), want)


def test_a_deep_chain_under_a_parent_carried_from_an_earlier_window_counts_from_its_depth() -> None:
    # Window 1: the parent's begin and a first (unrelated) deep chain; window 2: a chain of 1,300 under
    # the parent, carried open across the boundary: the parent's lane holds it at depths 1 .. 511.
    t = RANGE.begin_ns + 10
    first = chain(1300, first=2, t=t + 1)
    under = chain(1300, first=5000, parent=1, t=t + 20_000)
    events = [AsyncEvent(t, "begin", 1, name="n1"), *first, *under]
    events.append(AsyncEvent(t + 40_000, "end", 1, name="n1"))
    want = model(events)
    decoded = check_depth(run_windowed([async_batch(events)], 1 + len(first)), want)
    s = {x.name: x for x in decoded.slices}
    assert s["n5000"].under == "n1" and s["n5510"].track == s["n1"].track  # depth 511
    assert s["n5511"].under is None and s["n5511"].parent_span == 5510  # depth 512: a lane of its own
    assert s["n6023"].under is None and s["n6022"].under == "n6021"  # and at 1,024


def test_siblings_at_the_max_depth_each_start_a_lane_under_which_their_children_nest() -> None:
    t = RANGE.begin_ns + 10
    events = chain(MAX_DEPTH)  # n1 .. n512: depths 0 .. 511 on one track
    inner = t + MAX_DEPTH  # after the last begin, before the first end
    for k, sid in enumerate((1001, 1002)):  # two children of n512, one after the other
        b = inner + 10 * k
        events += [AsyncEvent(b, "begin", sid, MAX_DEPTH, name=f"n{sid}")]
        events += [AsyncEvent(b + 1, "begin", sid + 10, sid, name=f"n{sid + 10}")]
        events += [AsyncEvent(b + 2, "end", sid + 10, name=f"n{sid + 10}")]
        events += [AsyncEvent(b + 3, "end", sid, name=f"n{sid}")]
    events.sort(key=lambda e: e.time)
    want = model(events)
    for window in (len(events), 1 << 16):
        decoded = check_depth(run_windowed([async_batch(events)], window), want)
        s = {x.name: x for x in decoded.slices}
        assert s["n512"].under == "n511" and s["n512"].track == s["n1"].track
        for sid in (1001, 1002):
            assert s[f"n{sid}"].under is None and s[f"n{sid}"].parent_span == MAX_DEPTH
            assert s[f"n{sid + 10}"].under == f"n{sid}" and s[f"n{sid + 10}"].track == s[f"n{sid}"].track
