"""The in-memory lake (``--in-memory``) serves the same rows as the default on-the-fly lake.

Two servers over the same lake, one of each mode, answer the same statements over real Flight SQL
(ADBC, loopback): the worker's own SQL (worker/source/queries.py), upstream's per-thread query,
plain scans, and statements only DataFusion answers (aggregates, DESC, joins on metadata), for
whole processes and time-range cuts (headers and WHERE), with and without dictionary strings.
Small generation blocks make the on-the-fly side cross many block boundaries.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.flight as fl
import pytest

from contracts.request import SpanTypes
from tests.devserver.conftest import adbc_read
from tests.support.devserver import expected_async_events, rfc3339, run_devserver_subprocess, start_devserver
from worker.devserver import DevServer, Lake, LakeConfig, LakeProcess, SchemaOptions
from worker.devserver import flightsql_messages as msg
from worker.devserver.memory import Bounds, MemoryLake
from worker.devserver.query import QueryEngine
from worker.devserver.shapes import parse_shape
from worker.devserver.views import thread_spans
from worker.model import TimeRange
from worker.pipeline import TraceSpec, generate_trace
from worker.source import FlightSqlConfig, FlightSqlSource
from worker.source import queries as q

CONFIG = LakeConfig(
    processes=("small", "wide"),
    block_rows=1024,
    async_block_spans=256,
    log_block_entries=128,
    measure_block_entries=512,
)


@pytest.fixture(scope="module")
def mem_lake() -> Lake:
    return Lake(CONFIG)


@pytest.fixture(scope="module")
def servers(mem_lake: Lake) -> Iterator[tuple[DevServer, DevServer]]:
    with start_devserver(mem_lake) as fly, start_devserver(mem_lake, in_memory=True) as held:
        yield fly, held


def plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded (the two modes chunk, hence encode, differently)."""
    columns = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.table(columns, names=table.column_names)


def ranges(process: LakeProcess) -> list[TimeRange]:
    """The whole process, its middle third, a 1 ms cut, before the process, and random cuts."""
    b, e = process.begin_ns, process.end_ns
    third = (e - b) // 3
    mid = b + (e - b) // 2
    rng = random.Random(process.index)
    cuts = [TimeRange(b, e), TimeRange(b + third, e - third), TimeRange(mid, mid + 1_000_000)]
    cuts.append(TimeRange(b - 10_000_000_000, b - 1))
    for _ in range(2):
        lo = rng.randrange(b, e)
        cuts.append(TimeRange(lo, rng.randrange(lo, e + 1)))
    return cuts


def headers(r: TimeRange, *, dictionary: bool) -> dict[str, str]:
    h = {"query_range_begin": q.header_time(r.begin_ns, round_up=False)}
    h["query_range_end"] = q.header_time(r.end_ns, round_up=True)
    if dictionary:
        h["preserve_dictionary"] = "true"
    return h


def same(servers: tuple[DevServer, DevServer], sql: str, h: dict[str, str]) -> pa.Table:
    """Both servers' answers, equal in rows, order and schema; returns the in-memory one."""
    fly, held = servers
    fly_schema, fly_rows = adbc_read(fly.url, sql, h)
    held_schema, held_rows = adbc_read(held.url, sql, h)
    assert held_schema == fly_schema
    assert held_rows.schema == fly_rows.schema
    assert plain(held_rows).equals(plain(fly_rows)), sql
    return held_rows


def statements(process: LakeProcess, r: TimeRange) -> list[str]:
    """The worker's SQL and upstream's, for a few threads and each view."""
    pid = process.process_id
    begin, end = q.timestamp_literal(r.begin_ns), q.timestamp_literal(r.end_ns)
    out = []
    for stream in process.thread_streams[:2]:
        sid = stream.stream_id
        out += [
            q.thread_spans_sql(sid, r),
            'SELECT "begin", "end", name, filename, target, line '
            f"FROM view_instance('thread_spans', '{sid}') "
            f"WHERE begin <= {end} AND end >= {begin} ORDER BY begin",
            f"SELECT * FROM view_instance('thread_spans', '{sid}')",
        ]
    out += [
        q.async_events_sql(pid, r),
        q.async_lookback_sql(pid, r.begin_ns + (r.end_ns - r.begin_ns) // 2, 50_000_000),
        f"SELECT * FROM view_instance('async_events', '{pid}')",
        f"SELECT * FROM view_instance('log_entries', '{pid}') WHERE time >= {begin} ORDER BY time",
        f"SELECT * FROM view_instance('measures', '{pid}') WHERE \"time\" > {begin} AND \"time\" < {end}",
    ]
    return out


def fallback_statements(process: LakeProcess, r: TimeRange) -> list[str]:
    """Statements DataFusion answers in both modes (over the held rows in memory mode)."""
    pid, sid = process.process_id, process.thread_streams[0].stream_id
    return [
        q.log_entries_sql(pid, r, max_level=4, limit=50),
        q.thread_span_count_sql(sid),
        q.async_span_count_sql(pid),
        q.log_entry_count_sql(pid),
        f"SELECT name, count(*) AS n, max(value) AS top FROM view_instance('measures', '{pid}') "
        "GROUP BY name ORDER BY name",
        f"SELECT name, depth FROM view_instance('thread_spans', '{sid}') WHERE depth >= 3 ORDER BY begin",
        f"SELECT id FROM view_instance('thread_spans', '{sid}') ORDER BY \"end\" DESC, id LIMIT 20",
        q.threads_sql(pid),
        q.process_sql(pid),
    ]


@pytest.mark.parametrize("kind", ["small", "wide"])
def test_known_shapes_return_the_on_the_fly_rows(
    servers: tuple[DevServer, DevServer], mem_lake: Lake, kind: str
) -> None:
    process = mem_lake.process_of_kind(kind)
    before = servers[1].known_shapes_answered
    total = 0
    for i, r in enumerate(ranges(process)):
        for sql in statements(process, r):
            # Range headers: the cut itself, or the whole process with the cut in the WHERE only.
            h = headers(r if i % 2 else TimeRange(process.begin_ns, process.end_ns), dictionary=i % 3 != 0)
            total += same(servers, sql, h).num_rows
    assert total > 10_000  # the cuts are not all empty
    per_range = len(statements(process, ranges(process)[0]))
    assert servers[1].known_shapes_answered - before == len(ranges(process)) * per_range


@pytest.mark.parametrize("kind", ["small", "wide"])
def test_other_statements_run_through_datafusion_over_the_held_rows(
    servers: tuple[DevServer, DevServer], mem_lake: Lake, kind: str
) -> None:
    process = mem_lake.process_of_kind(kind)
    before = servers[1].known_shapes_answered
    for r in ranges(process)[:3]:
        for sql in fallback_statements(process, r):
            same(servers, sql, headers(r, dictionary=True))
    assert servers[1].known_shapes_answered == before


def test_limits_unknown_ids_and_refusals_match(servers: tuple[DevServer, DevServer], mem_lake: Lake) -> None:
    process = mem_lake.process_of_kind("small")
    whole = headers(TimeRange(process.begin_ns, process.end_ns), dictionary=True)
    sid = process.thread_streams[1].stream_id
    assert same(servers, f"SELECT * FROM view_instance('thread_spans', '{sid}') LIMIT 7", whole).num_rows == 7
    assert (
        same(
            servers, f"SELECT * FROM view_instance('thread_spans', '{sid}')", {**whole, "limit": "5"}
        ).num_rows
        == 5
    )
    unknown = "00000000-0000-4000-8000-000000000000"
    assert (
        same(
            servers, q.thread_spans_sql(unknown, TimeRange(process.begin_ns, process.end_ns)), whole
        ).num_rows
        == 0
    )
    assert same(servers, f"SELECT * FROM view_instance('async_events', '{unknown}')", whole).num_rows == 0
    for server in servers:  # strict mode: thread spans need the range headers, in both modes
        with pytest.raises(Exception, match="query range mandatory for thread spans view"):
            adbc_read(server.url, f"SELECT * FROM view_instance('thread_spans', '{sid}')")
        with pytest.raises(Exception, match="global view is not implemented"):
            adbc_read(server.url, "SELECT * FROM view_instance('async_events', 'global')", whole)


def test_overlap_cut_is_exact_at_span_edges(mem_lake: Lake) -> None:
    """``end >= T`` / ``end > T`` with T exactly at span ends, and ``begin`` bounds at span begins:
    the searchsorted cut equals the plain filter of the generated rows."""
    memory = MemoryLake(mem_lake, SchemaOptions())
    for process in mem_lake.processes:
        for stream in process.thread_streams[:4]:
            rows = pa.Table.from_batches(list(thread_spans(mem_lake, stream.stream_id)))
            begin = rows["begin"].cast(pa.int64()).to_numpy()
            end = rows["end"].cast(pa.int64()).to_numpy()
            held = memory.held("thread_spans", stream.stream_id)
            rng = np.random.default_rng(process.index)
            for i in rng.integers(0, len(begin), 25):
                for end_lo in (int(end[i]), int(end[i]) + 1):
                    for hi in (int(begin[min(len(begin) - 1, i + 40)]), int(end[i]) + 5_000_000):
                        cut = held.cut(Bounds(hi=hi, end_lo=end_lo))
                        keep = np.flatnonzero((begin <= hi) & (end >= end_lo))
                        assert plain(cut).equals(plain(rows.take(pa.array(keep))))


def test_worker_statements_are_known_shapes(mem_lake: Lake) -> None:
    """The per-thread and async SQL the worker sends skips DataFusion; the rest does not."""
    schemas = QueryEngine(mem_lake, strict=True, schema_options=SchemaOptions())._schemas
    process = mem_lake.processes[0]
    r = TimeRange(process.begin_ns, process.end_ns)
    sid, pid = process.thread_streams[0].stream_id, process.process_id
    for sql in (
        q.thread_spans_sql(sid, r),
        q.async_events_sql(pid, r),
        q.async_lookback_sql(pid, r.end_ns, 10),
    ):
        assert parse_shape(sql, schemas) is not None, sql
    for sql in (q.log_entries_sql(pid, r), q.thread_span_count_sql(sid), q.threads_sql(pid)):
        assert parse_shape(sql, schemas) is None, sql


def test_broken_streams_still_break_in_memory(mem_lake: Lake) -> None:
    process = mem_lake.process_of_kind("small")
    whole = headers(TimeRange(process.begin_ns, process.end_ns), dictionary=True)
    with start_devserver(mem_lake, in_memory=True) as server:
        server.break_streams_after = 0
        with pytest.raises(Exception, match="stream broken on purpose"):
            adbc_read(
                server.url,
                q.async_events_sql(process.process_id, TimeRange(process.begin_ns, process.end_ns)),
                whole,
            )


def test_cli_in_memory_generates_at_start_and_serves() -> None:
    lake = Lake(LakeConfig(processes=("small",)))
    process = lake.processes[0]
    with run_devserver_subprocess(["--processes", "small", "--batch-rows", "1000"], in_memory=True) as server:
        listening = next(line for line in server.output if line.startswith("listening on"))
        assert "in memory:" in listening
        stream = process.thread_streams[0]
        h = {"query_range_begin": rfc3339(process.begin_ns), "query_range_end": rfc3339(process.end_ns)}
        _, table = adbc_read(
            server.url, q.thread_spans_sql(stream.stream_id, TimeRange(process.begin_ns, process.end_ns)), h
        )
        assert table.num_rows == stream.thread_span_count
        sql = f"SELECT * FROM view_instance('async_events', '{process.process_id}')"
        ticket = fl.Ticket(msg.pack(msg.TicketStatementQuery(statement_handle=sql.encode())))
        options = fl.FlightCallOptions(headers=[(k.encode(), v.encode()) for k, v in h.items()])
        with fl.FlightClient(server.url) as client:
            sizes = [chunk.data.num_rows for chunk in client.do_get(ticket, options=options)]
        assert sum(sizes) == sum(b.num_rows for b in expected_async_events(lake, process.process_id))
        assert max(sizes) == 1000
        assert server.terminate() == 0


def test_shapes_outside_the_known_forms_are_left_to_datafusion(mem_lake: Lake) -> None:
    schemas = QueryEngine(mem_lake, strict=True, schema_options=SchemaOptions())._schemas
    sid = mem_lake.processes[0].thread_streams[0].stream_id
    base = f"SELECT * FROM view_instance('thread_spans', '{sid}')"
    known = parse_shape(
        f"{base} WHERE BEGIN >= TIMESTAMP '2026-11-01 00:00:00.5Z' ORDER BY begin ASC", schemas
    )
    assert known is not None
    assert known.bounds == Bounds(lo=1_793_491_200_500_000_000)
    for tail in (
        "WHERE begin >= TIMESTAMP '1000-01-01T00:00:00Z'",  # outside int64 nanoseconds
        "WHERE begin >= TIMESTAMP '2026-02-30T00:00:00Z'",  # not a date
        "WHERE \"end\" <= TIMESTAMP '2026-11-01T00:00:00Z'",  # not a prefix of begin order
        "WHERE begin >= TIMESTAMP '2026-11-01T00:00:00Z' OR depth = 1",
        "ORDER BY begin DESC",
        'ORDER BY "Begin"',
        "ORDER BY id",
    ):
        assert parse_shape(f"{base} {tail}", schemas) is None, tail
    assert parse_shape(f"SELECT id AS x FROM view_instance('thread_spans', '{sid}')", schemas) is None
    assert parse_shape(f"SELECT id, id FROM view_instance('thread_spans', '{sid}')", schemas) is None
    assert parse_shape(f"SELECT * FROM view_instance('Thread_Spans', '{sid}')", schemas) is None
    assert parse_shape("SELECT * FROM view_instance('thread_spans', 'it''s')", schemas) is None


@pytest.mark.parametrize("cut", ["whole", "middle"])
async def test_worker_traces_are_byte_identical(
    servers: tuple[DevServer, DevServer], mem_lake: Lake, cut: str
) -> None:
    """The worker's pipeline (its ADBC source, its SQL, its engine) writes the same trace from both."""
    process = mem_lake.process_of_kind("wide")
    third = (process.end_ns - process.begin_ns) // 3
    begin, end = (None, None) if cut == "whole" else (process.begin_ns + third, process.end_ns - third)
    spec = TraceSpec(
        process.process_id, begin, end, SpanTypes.BOTH, async_lookback_ns=10**9, logs=True, metrics=True
    )
    traces = []
    before = servers[1].known_shapes_answered
    for server in servers:
        # Per thread (known shapes in memory), then all threads in one process_spans query.
        for one_query in (0, 100_000):
            source = FlightSqlSource(
                FlightSqlConfig(server.url, concurrency=3, process_spans_max_objects=one_query)
            )
            try:
                traces.append(b"".join([c async for c in generate_trace(source, spec)]))
            finally:
                await source.aclose()
    assert len(traces[0]) > 100_000
    assert traces == [traces[0]] * 4
    # one query per thread, async events, logs and measures skipped DataFusion
    assert servers[1].known_shapes_answered - before >= process.thread_count + 3
