"""Faithful at every edge (issue 11): each case served by a hand-made lake over the real Flight SQL wire
(statements run by DataFusion, ties permuted, batches split), asserted on the decoded trace bytes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from contracts.request import SpanTypes
from tests.edges.support import T0, generate, lake_of, slices_by_name
from tests.engine.decode import decode
from tests.support.devserver import rfc3339, small_lake, start_devserver
from tests.support.handmade import STREAMS, AsyncRow, Serving, ThreadRow, handmade_server
from worker.devserver import DevServer

MS = 1_000_000


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[DevServer, Serving]]:
    with handmade_server() as pair:
        yield pair


def test_async_span_open_across_the_whole_range_is_drawn_cut_with_its_child(
    served: tuple[DevServer, Serving],
) -> None:
    server, serving = served
    serving.lake = lake_of(
        events=[
            AsyncRow(T0 - 500, "begin", 1, name="long_request"),
            AsyncRow(T0 + 300, "begin", 2, parent=1, name="db_query"),
            AsyncRow(T0 + 400, "end", 2, parent=1, name="db_query"),
            AsyncRow(T0 + 2000, "end", 1, name="long_request"),
        ]
    )
    decoded = decode(generate(server, T0, T0 + 1000, SpanTypes.ASYNC, lookback_ns=1000))
    assert decoded.problems == []
    got = slices_by_name(decoded)
    assert (got["long_request"].begin, got["long_request"].end) == (T0, T0 + 1000)
    assert got["long_request"].cut == "both"
    assert (got["db_query"].begin, got["db_query"].end, got["db_query"].cut) == (T0 + 300, T0 + 400, "")
    # The child runs inside its parent: drawn under it, on the parent's lane track.
    assert got["db_query"].track == got["long_request"].track
    assert got["db_query"].under == "long_request"
    # The look-back read the events of the second before the range.
    assert any(f"< TIMESTAMP '{rfc3339(T0)}'" in sql for sql in serving.statements)


def test_the_look_back_is_bounded(served: tuple[DevServer, Serving]) -> None:
    """A span that began longer ago than the look-back and outlives the range is not found: the limit."""
    server, serving = served
    serving.lake = lake_of(
        events=[
            AsyncRow(T0 - 500, "begin", 1, name="long_request"),
            AsyncRow(T0 - 100, "begin", 3, name="recent"),
            AsyncRow(T0 + 2000, "end", 1, name="long_request"),
            AsyncRow(T0 + 2000, "end", 3, name="recent"),
        ]
    )
    decoded = decode(generate(server, T0, T0 + 1000, SpanTypes.ASYNC, lookback_ns=200))
    got = slices_by_name(decoded)
    assert set(got) == {"recent"}
    assert (got["recent"].begin, got["recent"].end, got["recent"].cut) == (T0, T0 + 1000, "both")


@pytest.mark.parametrize("seed", [None, 1, 2, 3, 4])
def test_tied_async_events_in_any_order_give_one_zero_length_child(
    served: tuple[DevServer, Serving], seed: int | None
) -> None:
    server, serving = served
    serving.lake = lake_of(
        events=[
            AsyncRow(T0, "begin", 1, name="request"),
            AsyncRow(T0 + 500, "end", 2, parent=1, name="zero_len"),
            AsyncRow(T0 + 500, "begin", 2, parent=1, name="zero_len"),
            AsyncRow(T0 + 1000, "end", 1, name="request"),
        ]
    )
    serving.seed = seed
    data = generate(server, T0, T0 + 1000, SpanTypes.ASYNC)
    decoded = decode(data)
    assert decoded.problems == []
    assert sorted((s.name, s.begin - T0, s.end - T0, s.cut) for s in decoded.slices) == [
        ("request", 0, 1000, ""),
        ("zero_len", 500, 500, ""),
    ]
    got = slices_by_name(decoded)
    assert got["zero_len"].track == got["request"].track and got["zero_len"].under == "request"
    serving.seed = None
    assert generate(server, T0, T0 + 1000, SpanTypes.ASYNC) == data


def test_tied_thread_spans_in_any_order_give_the_same_bytes(served: tuple[DevServer, Serving]) -> None:
    server, serving = served
    rows = [
        ThreadRow(T0, T0 + 100, 0, "root"),
        ThreadRow(T0, T0 + 40, 1, "first"),  # begins with its parent
        ThreadRow(T0, T0 + 10, 2, "first-child"),
        ThreadRow(T0 + 40, T0 + 40, 1, "zero"),
        ThreadRow(T0 + 40, T0 + 100, 1, "second"),
        ThreadRow(T0 + 40, T0 + 50, 2, "second-child"),
    ]
    serving.lake = lake_of(threads={STREAMS[0]: rows})
    outputs = set()
    for seed in (None, 1, 2, 3, 4, 5):
        serving.seed = seed
        data = generate(server, None, None, SpanTypes.THREAD)
        outputs.add(data)
        decoded = decode(data)
        assert decoded.problems == []
        assert sorted((s.name, s.begin - T0, s.end - T0) for s in decoded.slices) == sorted(
            (r.name, r.begin - T0, r.end - T0) for r in rows
        )
    assert len(outputs) == 1


def test_no_range_is_the_whole_life_of_the_devserver_small_process() -> None:
    """Every thread and async span of the devserver's ``small`` process (51 async spans were lost)."""
    lake = small_lake()
    p = lake.processes[0]
    with start_devserver(lake) as server:
        decoded = decode(generate(server, None, None, SpanTypes.BOTH, process_id=p.process_id))
    assert decoded.problems == []
    thread_tracks = {u for u, d in decoded.descriptors.items() if d.HasField("thread")}
    thread = [s for s in decoded.slices if s.track in thread_tracks]
    assert len(thread) == p.thread_span_count
    assert len(decoded.slices) - len(thread) == p.async_span_count
    assert all(s.cut in ("", "end") for s in decoded.slices)  # only spans still open at the end


def test_no_range_includes_spans_before_the_first_block(served: tuple[DevServer, Serving]) -> None:
    """The process's life begins at its start time, even if its first block begins later."""
    server, serving = served
    serving.lake = lake_of(
        start_ns=T0 - 1000,
        first_ns=T0,
        events=[AsyncRow(T0 - 800, "begin", 1, name="early"), AsyncRow(T0 - 700, "end", 1, name="early")],
        threads={STREAMS[0]: [ThreadRow(T0 + 10, T0 + 20, 0, "work")]},
    )
    decoded = decode(generate(server, None, None, SpanTypes.BOTH))
    assert sorted((s.name, s.begin - T0, s.end - T0, s.cut) for s in decoded.slices) == [
        ("early", -800, -700, ""),
        ("work", 10, 20, ""),
    ]


def test_a_wide_range_clips_open_spans_at_the_process_data(served: tuple[DevServer, Serving]) -> None:
    """A 6-day range around a 0.3 s process: an open span ends at the process's last data, cut."""
    server, serving = served
    day = 86_400 * 10**9
    serving.lake = lake_of(
        start_ns=T0,
        first_ns=T0,
        last_ns=T0 + 300 * MS,
        events=[
            AsyncRow(T0 + 10 * MS, "begin", 1, name="never_ends"),
            AsyncRow(T0 + 20 * MS, "end", 2, name="began_before_the_data"),
        ],
    )
    decoded = decode(generate(server, T0 - 3 * day, T0 + 3 * day, SpanTypes.ASYNC))
    got = slices_by_name(decoded)
    assert (got["never_ends"].begin, got["never_ends"].end, got["never_ends"].cut) == (
        T0 + 10 * MS,
        T0 + 300 * MS,
        "end",
    )
    orphan = got["began_before_the_data"]
    assert (orphan.begin, orphan.end, orphan.cut) == (T0, T0 + 20 * MS, "begin")


def test_thread_spans_crossing_the_range_are_clipped_and_marked(served: tuple[DevServer, Serving]) -> None:
    server, serving = served
    rows = [
        ThreadRow(T0 - 100, T0 + 2000, 0, "outer"),
        ThreadRow(T0 - 50, T0 + 10, 1, "early"),
        ThreadRow(T0 + 100, T0 + 200, 1, "inside"),
        ThreadRow(T0 + 900, T0 + 1500, 1, "late"),
    ]
    serving.lake = lake_of(threads={STREAMS[0]: rows})
    decoded = decode(generate(server, T0, T0 + 1000, SpanTypes.THREAD))
    assert decoded.problems == []
    assert sorted((s.name, s.begin - T0, s.end - T0, s.cut) for s in decoded.slices) == [
        ("early", 0, 10, "begin"),
        ("inside", 100, 200, ""),
        ("late", 900, 1000, "end"),
        ("outer", 0, 1000, "both"),
    ]
