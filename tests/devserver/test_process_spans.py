"""``process_spans(process_id, span_types)`` as upstream shapes it, on the fly and held in memory.

Read over real Flight SQL (ADBC, loopback) and compared with what the server's own views serve:
the thread rows are each ``cpu`` stream's ``view_instance('thread_spans', ...)`` rows, thread after
thread by stream id, prefixed with ``stream_id`` and upstream's display name; the async rows are
what upstream's begin/end self-join SQL gives when DataFusion runs it over ``view_instance
('async_events', ...)`` on the same server. Small generation blocks make the on-the-fly side cross
many block boundaries; a server started without ``process_spans`` refuses it as an older upstream.
"""

from __future__ import annotations

from collections.abc import Iterator

import adbc_driver_manager
import pyarrow as pa
import pytest

from tests.devserver.conftest import adbc_read, full_range
from tests.support.devserver import rfc3339, start_devserver
from worker.devserver import DevServer, Lake, LakeConfig, LakeProcess, SchemaOptions
from worker.devserver.headers import RequestHeaders
from worker.devserver.process_spans import display_name
from worker.devserver.query import QueryEngine
from worker.devserver.schemas import thread_spans_schema
from worker.model import TimeRange
from worker.source import queries as q

CONFIG = LakeConfig(processes=("small", "wide"), block_rows=1024, async_block_spans=256)
PRESERVE = {"adbc.flight.sql.rpc.call_header.preserve_dictionary": "true"}
I16_STRING = pa.dictionary(pa.int16(), pa.utf8())

#: Upstream's async pairing (process_spans_table_function.rs), verbatim but for the view name.
UPSTREAM_ASYNC = (
    'SELECT b.span_id as id, b.parent_span_id as parent, b.depth, b.hash, b.time as "begin", '
    "e.time as \"end\", arrow_cast(e.time, 'Int64') - arrow_cast(b.time, 'Int64') as duration, "
    "b.name, b.target, b.filename, b.line "
    "FROM (SELECT * FROM view_instance('async_events', '{pid}') WHERE event_type = 'begin') b "
    "INNER JOIN (SELECT * FROM view_instance('async_events', '{pid}') WHERE event_type = 'end') e "
    "ON b.span_id = e.span_id WHERE b.time < e.time ORDER BY b.time"
)


@pytest.fixture(scope="module")
def lake() -> Lake:
    return Lake(CONFIG)


@pytest.fixture(scope="module", params=["on the fly", "in memory"])
def server(request: pytest.FixtureRequest, lake: Lake) -> Iterator[DevServer]:
    with start_devserver(lake, in_memory=request.param == "in memory") as started:
        yield started


def plain(table: pa.Table) -> pa.Table:
    columns = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.table(columns, names=table.column_names)


def expected_threads(server: DevServer, process: LakeProcess, headers: dict[str, str]) -> pa.Table:
    """Each cpu stream's thread_spans rows from the same server, by stream id, with the two columns."""
    parts = []
    for stream in sorted(process.thread_streams, key=lambda s: s.stream_id):
        sql = f"SELECT * FROM view_instance('thread_spans', '{stream.stream_id}')"
        rows = plain(adbc_read(server.url, sql, headers)[1])
        n = rows.num_rows
        lead = {
            "stream_id": pa.array([stream.stream_id] * n, pa.utf8()),
            "thread_name": pa.array([display_name(stream)] * n, pa.utf8()),
        }
        parts.append(pa.table({**lead, **{name: rows[name] for name in rows.column_names}}))
    return pa.concat_tables(parts)


def sorted_async(table: pa.Table) -> pa.Table:
    return table.sort_by([("begin", "ascending"), ("id", "ascending")])


@pytest.mark.parametrize("kind", ["small", "wide"])
def test_thread_rows_are_each_threads_view_rows_in_stream_order(
    server: DevServer, lake: Lake, kind: str
) -> None:
    process = lake.process_of_kind(kind)
    headers = full_range(process)
    sql = f"SELECT * FROM process_spans('{process.process_id}', 'thread')"
    _, got = adbc_read(server.url, sql, headers)
    expected = expected_threads(server, process, headers)
    assert got.num_rows == process.thread_span_count
    assert plain(got).equals(expected)


def test_schema_is_upstreams(server: DevServer, lake: Lake) -> None:
    process = lake.process_of_kind("small")
    sql = f"SELECT * FROM process_spans('{process.process_id}', 'thread') LIMIT 10"
    _, got = adbc_read(server.url, sql, full_range(process), db_kwargs=PRESERVE)
    lead = [got.schema.field("stream_id"), got.schema.field("thread_name")]
    assert [(f.type, f.nullable) for f in lead] == [(I16_STRING, False)] * 2
    assert got.schema.names == ["stream_id", "thread_name", *thread_spans_schema(SchemaOptions()).names]
    assert got.schema.field("name").type == pa.dictionary(pa.int32(), pa.utf8())
    assert got.num_rows == 10


def test_header_range_and_where_cut_as_the_view_does(server: DevServer, lake: Lake) -> None:
    process = lake.process_of_kind("small")
    third = (process.end_ns - process.begin_ns) // 3
    lo, hi = process.begin_ns + third, process.begin_ns + 2 * third
    headers = {"query_range_begin": rfc3339(lo), "query_range_end": rfc3339(hi)}
    where = f"WHERE \"end\" >= TIMESTAMP '{rfc3339(lo + third // 4)}'"
    sql = f"SELECT * FROM process_spans('{process.process_id}', 'thread') {where}"
    _, got = adbc_read(server.url, sql, headers)
    cut = expected_threads(server, process, headers)
    expected = cut.filter(pa.compute.greater_equal(cut["end"], pa.scalar(lo + third // 4, cut["end"].type)))
    assert 0 < got.num_rows < process.thread_span_count
    assert plain(got).equals(expected)


def test_async_rows_are_upstreams_self_join(server: DevServer, lake: Lake) -> None:
    process = lake.process_of_kind("small")
    headers = full_range(process)
    _, got = adbc_read(server.url, f"SELECT * FROM process_spans('{process.process_id}', 'async')", headers)
    _, joined = adbc_read(server.url, UPSTREAM_ASYNC.format(pid=process.process_id), headers)
    assert set(got["stream_id"].to_pylist()) == {""} and set(got["thread_name"].to_pylist()) == {"async"}
    spans = plain(got).drop_columns(["stream_id", "thread_name"])
    assert 0 < spans.num_rows < process.async_span_count  # unended spans are left out
    begins = spans["begin"].cast(pa.int64()).to_pylist()
    assert begins == sorted(begins)
    assert sorted_async(spans).equals(sorted_async(plain(joined)).cast(spans.schema))


def test_both_is_threads_then_async(server: DevServer, lake: Lake) -> None:
    process = lake.process_of_kind("small")
    headers = full_range(process)
    pid = process.process_id
    _, both = adbc_read(server.url, f"SELECT * FROM process_spans('{pid}', 'both')", headers)
    _, threads = adbc_read(server.url, f"SELECT * FROM process_spans('{pid}', 'thread')", headers)
    _, spans = adbc_read(server.url, f"SELECT * FROM process_spans('{pid}', 'async')", headers)
    assert plain(both).equals(pa.concat_tables([plain(threads), plain(spans)]))


def test_simple_statements_stream_block_by_block(lake: Lake) -> None:
    engine = QueryEngine(lake, strict=True, schema_options=SchemaOptions())
    process = lake.process_of_kind("wide")
    headers = _headers(process)
    pid = process.process_id
    streamed = engine.plan(f"SELECT stream_id, \"begin\" FROM process_spans('{pid}', 'thread')", headers)
    assert streamed.streamed
    # Block by block, in groups of at most _GROUP_ROWS rows: more than one batch for this process.
    assert sum(b.num_rows for b in streamed.batches()) == process.thread_span_count
    aggregated = engine.plan(f"SELECT count(*) AS n FROM process_spans('{pid}', 'both')", headers)
    assert not aggregated.streamed


def _headers(process: LakeProcess) -> RequestHeaders:
    return RequestHeaders(range_ns=(process.begin_ns, process.end_ns))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("'{pid}', 'threads'", "span_types must be 'thread', 'async', or 'both', given: threads"),
        ("1, 'thread'", "First argument to process_spans must be a string"),
        ("'{pid}', 2", "Second argument to process_spans must be a string"),
    ],
)
def test_bad_arguments_are_invalid_argument(server: DevServer, lake: Lake, args: str, message: str) -> None:
    process = lake.process_of_kind("small")
    sql = f"SELECT * FROM process_spans({args.format(pid=process.process_id)})"
    with pytest.raises(adbc_driver_manager.ProgrammingError, match=message):
        adbc_read(server.url, sql, full_range(process))


def test_thread_spans_need_the_range_but_async_do_not(server: DevServer, lake: Lake) -> None:
    pid = lake.process_of_kind("small").process_id
    with pytest.raises(adbc_driver_manager.ProgrammingError, match="query range mandatory"):
        adbc_read(server.url, f"SELECT * FROM process_spans('{pid}', 'thread')")
    _, spans = adbc_read(server.url, f"SELECT * FROM process_spans('{pid}', 'async')")
    assert spans.num_rows > 0


def test_unknown_process_has_no_rows(server: DevServer, lake: Lake) -> None:
    process = lake.process_of_kind("small")
    sql = "SELECT * FROM process_spans('00000000-0000-4000-8000-000000000000', 'both')"
    assert adbc_read(server.url, sql, full_range(process))[1].num_rows == 0


@pytest.mark.parametrize("in_memory", [False, True])
def test_a_server_without_it_refuses_to_plan(lake: Lake, in_memory: bool) -> None:
    process = lake.process_of_kind("small")
    options = SchemaOptions(process_spans=False)
    with start_devserver(lake, schema_options=options, in_memory=in_memory) as old:
        sql = f"SELECT * FROM process_spans('{process.process_id}', 'thread')"
        with pytest.raises(adbc_driver_manager.ProgrammingError, match="process_spans"):
            adbc_read(old.url, sql, full_range(process))


def test_async_without_hash_fails_as_upstream(lake: Lake) -> None:
    process = lake.process_of_kind("small")
    with start_devserver(lake, schema_options=SchemaOptions(async_hash=False)) as old:
        sql = f"SELECT * FROM process_spans('{process.process_id}', 'async')"
        with pytest.raises(OSError, match=r"b\.hash"):  # while streaming, as upstream (execution)
            adbc_read(old.url, sql, full_range(process))


def test_the_workers_statement_is_answered_from_memory_with_the_same_rows(lake: Lake) -> None:
    process = lake.process_of_kind("wide")
    third = (process.end_ns - process.begin_ns) // 3
    cut = TimeRange(process.begin_ns + third, process.end_ns - third)
    headers = {"query_range_begin": rfc3339(cut.begin_ns), "query_range_end": rfc3339(cut.end_ns)}
    sql = q.process_spans_sql(process.process_id, cut)
    with start_devserver(lake) as fly, start_devserver(lake, in_memory=True) as held:
        _, expected = adbc_read(fly.url, sql, headers, db_kwargs=PRESERVE)
        before = held.known_shapes_answered
        for _ in range(2):  # the first of a shape is planned by DataFusion too
            _, got = adbc_read(held.url, sql, headers, db_kwargs=PRESERVE)
            assert plain(got).equals(plain(expected)) and got.schema.equals(expected.schema)
        limited = adbc_read(held.url, sql + " LIMIT 7", headers)[1]
        assert held.known_shapes_answered - before == 3
        ordered = adbc_read(held.url, sql + ' ORDER BY "begin"', headers)[1]  # a real sort: DataFusion
        assert held.known_shapes_answered - before == 3
    assert 0 < expected.num_rows < process.thread_span_count
    assert plain(limited).equals(plain(expected).slice(0, 7))
    assert ordered.num_rows == expected.num_rows
