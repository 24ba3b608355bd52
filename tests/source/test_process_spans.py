"""All threads' spans in one ``process_spans`` query (small processes) against the devserver over
real Flight SQL: the thread list's object counts, the decision, the regrouping, and the ways back to
the per-thread path (an answer larger than announced), each giving the per-thread path's trace.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from contracts.request import SpanTypes
from tests.support.devserver import small_lake, start_devserver
from tests.support.fuzz_flight import scripted_spans_server
from tests.support.source import open_source, whole_trace
from worker.devserver import DevServer, Lake
from worker.devserver.query import PlannedQuery
from worker.errors import TraceTooLarge
from worker.model import TimeRange
from worker.pipeline import TraceSpec, generate_trace, resolve_range
from worker.source.queries import THREAD_SPAN_COLUMNS
from worker.source.regroup import by_thread

TS = pa.timestamp("ns", tz="+00:00")


@pytest.fixture(scope="module")
def lake() -> Lake:
    return small_lake(processes=("small", "wide"))


async def test_thread_list_carries_each_threads_object_count(lake: Lake) -> None:
    process = lake.process_of_kind("wide")
    with start_devserver(lake) as server:
        async with open_source(server.url) as source:
            threads = await source.threads(process.process_id, TimeRange(process.begin_ns, process.end_ns))
    counts = {s.stream_id: s.thread_span_count for s in process.thread_streams}  # devserver: rows
    assert {t.stream_id: t.objects for t in threads} == counts


@pytest.mark.parametrize("span_types", [SpanTypes.THREAD, SpanTypes.BOTH])
@pytest.mark.parametrize("kind", ["small", "wide"])
async def test_one_query_writes_the_per_thread_trace(lake: Lake, kind: str, span_types: SpanTypes) -> None:
    process = lake.process_of_kind(kind)
    asyncs = 1 if span_types is SpanTypes.BOTH else 0
    with start_devserver(lake) as server:
        # The whole life: process and threads in one query, then the spans.
        async with open_source(server.url, process_spans_max_objects=0) as per_thread:
            expected = await whole_trace(per_thread, process.process_id, span_types)
            assert dict(per_thread.calls)["DoGet"] == 1 + process.thread_count + asyncs
        async with open_source(server.url, process_spans_max_objects=100_000) as one:
            got = await whole_trace(one, process.process_id, span_types)
            assert dict(one.calls)["DoGet"] == 1 + 1 + asyncs
    assert got == expected


async def test_threads_over_the_threshold_are_read_one_by_one(lake: Lake) -> None:
    process = lake.process_of_kind("small")
    with start_devserver(lake) as server:
        limit = process.thread_span_count - 1
        async with open_source(server.url, process_spans_max_objects=limit) as source:
            await whole_trace(source, process.process_id, SpanTypes.THREAD)
            assert dict(source.calls)["DoGet"] == 1 + process.thread_count


def _rows(n: int, base: int) -> pa.RecordBatch:
    begin = base + np.arange(n, dtype=np.int64) * 10
    strings = [pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([v])) for v in "ftx"]
    return pa.RecordBatch.from_arrays(
        [pa.array(begin, TS), pa.array(begin + 5, TS), *strings, pa.array(np.zeros(n, np.uint32)),
         pa.array(np.ones(n, np.uint32))],
        names=list(THREAD_SPAN_COLUMNS),
    )  # fmt: skip


async def test_answer_longer_than_announced_is_dropped_for_the_per_thread_path() -> None:
    """The thread list says ~11k objects; the (scripted) server then sends 5 x 5,000 rows: past twice
    the threshold the answer is abandoned and the threads are read one by one."""
    with scripted_spans_server(small_lake()) as (server, script):
        process = server.lake.processes[0]
        script.thread_spans = [_rows(5_000, process.begin_ns)]
        limit = process.thread_span_count  # the one-query path is chosen: objects <= limit
        assert 2 * limit < 5 * 5_000
        async with open_source(server.url, process_spans_max_objects=0) as per_thread:
            expected = await whole_trace(per_thread, process.process_id, SpanTypes.THREAD)
        async with open_source(server.url, process_spans_max_objects=limit) as source:
            got = await whole_trace(source, process.process_id, SpanTypes.THREAD)
            calls = dict(source.calls)["DoGet"]
    assert got == expected
    assert calls == 1 + 1 + process.thread_count


def _thread_batch(stream_ids: list[str], begins: list[int], names: list[str]) -> pa.RecordBatch:
    n = len(begins)
    sid = pa.array(stream_ids, pa.utf8()).dictionary_encode().cast(pa.dictionary(pa.int16(), pa.utf8()))
    ones = pa.array([1] * n, pa.uint32())
    return pa.RecordBatch.from_arrays(
        [sid, pa.array(begins, TS), pa.array(begins, TS), pa.array(names).dictionary_encode(),
         pa.array(["t"] * n), pa.array(["f"] * n), ones, ones],
        names=["stream_id", *THREAD_SPAN_COLUMNS],
    )  # fmt: skip


def test_regroup_orders_interleaved_batches_and_keeps_ties_in_arrival_order() -> None:
    threads = ["b", "a", "c"]  # the order wanted (the thread list's), not the alphabet
    rows = [("a", 1, "a1"), ("a", 2, "a2"), ("a", 2, "a2bis"), ("b", 5, "b5"), ("b", 7, "b7"), ("x", 0, "x")]
    batches = [_thread_batch([sid], [begin], [name]) for sid, begin, name in rows]  # one row per batch
    shuffled = batches[:2] + batches[3:]
    random.Random(3).shuffle(shuffled)
    shuffled.append(batches[2])  # "a2bis" arrives after "a2", its tie: it must stay after it
    grouped = by_thread(shuffled, threads, THREAD_SPAN_COLUMNS)
    assert [t.column_names for t in grouped] == [list(THREAD_SPAN_COLUMNS)] * 3
    assert [t["name"].cast(pa.utf8()).to_pylist() for t in grouped] == [
        ["b5", "b7"],
        ["a1", "a2", "a2bis"],
        [],
    ]


def test_regroup_of_ordered_rows_is_slices() -> None:
    batch = _thread_batch(["b", "b", "a", "a", "a"], [5, 7, 1, 2, 2], ["b5", "b7", "a1", "a2", "a3"])
    grouped = by_thread([batch], ["b", "a"], THREAD_SPAN_COLUMNS)
    assert [t.num_rows for t in grouped] == [2, 3]
    assert grouped[1]["name"].cast(pa.utf8()).to_pylist() == ["a1", "a2", "a3"]
    assert grouped[0]["begin"].chunk(0).buffers()[1].address == batch.column(1).buffers()[1].address


def test_regroup_puts_a_null_begin_last_in_its_thread() -> None:
    # Bad data for the engine to reject; regrouping must not choke on it (found by the source fuzz).
    batch = _thread_batch(["a", "a", "a"], [5, 1, 3], ["a5", "a1", "a3"])
    begin = pa.array([5, None, 3], pa.int64()).cast(TS)
    batch = batch.set_column(1, "begin", begin)
    grouped = by_thread([batch], ["a"], THREAD_SPAN_COLUMNS)
    assert grouped[0]["name"].cast(pa.utf8()).to_pylist() == ["a3", "a5", "a1"]


def test_regroup_drops_null_and_unknown_stream_ids_dictionary_or_plain() -> None:
    batch = _thread_batch(["a", "x", "b", "a", "b"], [1, 2, 3, 4, 5], ["a1", "x2", "b3", "a4", "b5"])
    sid = pa.array(["a", "x", None, "a", "b"], pa.utf8())
    for column in (sid, sid.dictionary_encode()):
        grouped = by_thread([batch.set_column(0, "stream_id", column)], ["b", "a"], THREAD_SPAN_COLUMNS)
        assert [t["name"].cast(pa.utf8()).to_pylist() for t in grouped] == [["b5"], ["a1", "a4"]]


async def test_process_and_threads_in_one_query_is_both_queries_answer(lake: Lake) -> None:
    with start_devserver(lake) as server:
        async with open_source(server.url) as source:
            for process in lake.processes:
                folded, threads = await source.process_and_threads(process.process_id)
                alone = await source.process(process.process_id)
                whole = resolve_range(TraceSpec(process.process_id, None, None, SpanTypes.BOTH), alone)
                assert folded == alone
                assert threads == await source.threads(process.process_id, whole)
                assert len(threads) == process.thread_count


async def test_a_range_given_keeps_the_two_queries(lake: Lake) -> None:
    process = lake.process_of_kind("small")
    spec = TraceSpec(process.process_id, process.begin_ns, process.end_ns, SpanTypes.THREAD)
    with start_devserver(lake) as server:
        async with open_source(server.url) as source:
            ranged = b"".join([chunk async for chunk in generate_trace(source, spec)])
            assert dict(source.calls)["DoGet"] == 2 + 1  # process, threads, process_spans
            whole = await whole_trace(source, process.process_id, SpanTypes.THREAD)
            assert dict(source.calls)["DoGet"] == 3 + 1 + 1
    assert ranged and whole


async def test_more_threads_than_allowed_fail_in_the_combined_query(lake: Lake) -> None:
    """The combined answer holds the 5 threads (of 6 streams with blocks) and says too many, before any
    span query. (An answer with more than ``max_threads`` + 64 streams gives way to the thread list
    query, which says the same: tests/faults/test_hostile_source.py, three million threads.)"""
    process = lake.process_of_kind("small")
    with start_devserver(lake) as server:
        async with open_source(server.url, max_threads=4) as source:
            with pytest.raises(TraceTooLarge, match="flightsql_max_threads"):
                await whole_trace(source, process.process_id, SpanTypes.THREAD)
            assert dict(source.calls)["DoGet"] == 1


Alter = Callable[[list[pa.RecordBatch]], Iterator[pa.RecordBatch]]


class _Altered:
    """Wraps the devserver's query engine: statements containing ``marker`` get ``alter``'s batches."""

    def __init__(
        self, real: Any, marker: str, alter: Callable[[list[pa.RecordBatch]], Iterator[pa.RecordBatch]]
    ):
        self._real, self._marker, self._alter = real, marker, alter

    def plan(self, sql: str, headers: Any, params: Any = None) -> PlannedQuery:
        planned: PlannedQuery = self._real.plan(sql, headers, params)
        if self._marker not in sql:
            return planned
        got = list(planned.table.to_batches()) if planned.table is not None else list(planned.batches())
        return PlannedQuery(planned.schema, lambda: self._alter(got), planned.streamed, None)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def _altered_server(lake: Lake, marker: str, alter: Alter) -> Iterator[DevServer]:
    with DevServer(lake).start() as server:
        inner = server._server
        assert inner is not None
        inner.engine = _Altered(inner.engine, marker, alter)  # type: ignore[assignment]
        yield server


def _fail_first(batches: list[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    raise RuntimeError("Failed to get thread list")  # upstream's error, before any batch
    yield from batches


def _fail_after_one(batches: list[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    yield batches[0]
    raise RuntimeError("Task panicked")


@pytest.mark.parametrize("alter", [_fail_first, _fail_after_one])
async def test_a_server_failing_inside_process_spans_is_read_per_thread(lake: Lake, alter: Alter) -> None:
    """An internal error of process_spans (upstream's thread list panicked on unnamed threads) is not
    the job's failure: the per-thread queries do not run that code."""
    process = lake.process_of_kind("small")
    with start_devserver(lake) as server:
        async with open_source(server.url, process_spans_max_objects=0) as per_thread:
            expected = await whole_trace(per_thread, process.process_id, SpanTypes.THREAD)
    with _altered_server(lake, "process_spans(", alter) as server:
        async with open_source(server.url, process_spans_max_objects=100_000) as source:
            got = await whole_trace(source, process.process_id, SpanTypes.THREAD)
            assert dict(source.calls)["DoGet"] == 1 + 1 + process.thread_count
    assert got == expected


async def test_a_cut_off_combined_answer_takes_the_process_from_the_process_query(lake: Lake) -> None:
    """More streams than max_threads + 64: the rows read are not all of the process's, so its first
    and last times come from the plain process query, not from them (they could end a trace early)."""
    process = lake.process_of_kind("small")

    def many_streams(batches: list[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.Table.from_batches(batches)
        extra = table.take(pa.array([0] * 100))
        at = extra.schema.get_field_index("stream_id")
        ids = pa.array([f"ffffffff-0000-0000-0000-{i:012d}" for i in range(100)])
        extra = extra.set_column(at, extra.schema.field(at), ids.cast(extra.schema.field(at).type))
        at = extra.schema.get_field_index("last_time")
        late = pa.array([process.end_ns + 3_600_000_000_000] * 100, pa.int64())
        extra = extra.set_column(at, extra.schema.field(at), late.cast(extra.schema.field(at).type))
        yield from pa.concat_tables([table, extra]).to_batches()

    with _altered_server(lake, "'cpu') AS cpu,", many_streams) as server:
        async with open_source(server.url, max_threads=5) as source:
            folded, threads = await source.process_and_threads(process.process_id)
            alone = await source.process(process.process_id)
    assert threads is None and folded == alone
    assert folded.last_time_ns is not None and folded.last_time_ns < process.end_ns + 3_600_000_000_000
