"""The devserver in Micromegas (strict) mode, over loopback with ADBC and pyarrow.flight."""

from __future__ import annotations

import adbc_driver_flightsql.dbapi as fsql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as fl
import pytest

from tests.devserver.conftest import adbc_read, full_range
from tests.support.devserver import expected_thread_spans, rfc3339
from worker.devserver import DevServer, Lake, LakeProcess
from worker.devserver import flightsql_messages as msg

TS = pa.timestamp("ns", tz="+00:00")
THREAD_SPANS_HYDRATED = pa.schema(
    [
        ("id", pa.int64()),
        ("parent", pa.int64()),
        ("depth", pa.uint32()),
        ("hash", pa.uint32()),
        ("begin", TS),
        ("end", TS),
        ("duration", pa.int64()),
        ("name", pa.utf8()),
        ("target", pa.utf8()),
        ("filename", pa.utf8()),
        ("line", pa.uint32()),
    ]
)
D32 = pa.dictionary(pa.int32(), pa.utf8())


def do_get(server: DevServer, sql: str, headers: dict[str, str] | None = None) -> pa.Table:
    """The official Micromegas client's path: DoGet of a hand-made TicketStatementQuery."""
    ticket = fl.Ticket(msg.pack(msg.TicketStatementQuery(statement_handle=sql.encode())))
    options = fl.FlightCallOptions(headers=[(k.encode(), v.encode()) for k, v in (headers or {}).items()])
    with fl.FlightClient(server.url) as client:
        return client.do_get(ticket, options=options).read_all()


def test_statement_flight_info_has_zero_fields_and_rows_arrive(
    strict_server: DevServer, process: LakeProcess
) -> None:
    stream = process.thread_streams[0]
    sql = f"SELECT * FROM view_instance('thread_spans', '{stream.stream_id}')"
    info_schema, table = adbc_read(strict_server.url, sql, full_range(process))
    assert len(info_schema) == 0
    assert table.schema == THREAD_SPANS_HYDRATED
    assert table.num_rows == stream.thread_span_count


def test_thread_spans_rows_equal_the_lake_rows(
    strict_server: DevServer, lake: Lake, process: LakeProcess
) -> None:
    stream = process.thread_streams[1]
    sql = f"SELECT * FROM view_instance('thread_spans', '{stream.stream_id}')"
    _, table = adbc_read(strict_server.url, sql, full_range(process))
    expected = pa.Table.from_batches(list(expected_thread_spans(lake, stream.stream_id)))
    assert table.equals(expected)


def test_thread_spans_need_the_range_headers(strict_server: DevServer, process: LakeProcess) -> None:
    sql = f"SELECT * FROM view_instance('thread_spans', '{process.thread_streams[0].stream_id}')"
    with pytest.raises(
        adbc_driver_manager.ProgrammingError, match="query range mandatory for thread spans view"
    ):
        adbc_read(strict_server.url, sql)
    # Only one of the two headers is no range either (as upstream: both or none).
    with pytest.raises(adbc_driver_manager.ProgrammingError, match="query range mandatory"):
        adbc_read(strict_server.url, sql, {"query_range_begin": rfc3339(process.begin_ns)})


def test_dictionaries_hydrated_unless_preserved(strict_server: DevServer, process: LakeProcess) -> None:
    columns = "name, target, filename, event_type, stream_id"
    sql = f"SELECT {columns} FROM view_instance('async_events', '{process.process_id}')"
    plain = do_get(strict_server, sql)
    assert all(f.type == pa.utf8() for f in plain.schema)
    kept = do_get(strict_server, sql, {"preserve_dictionary": "true"})
    assert all(f.type == D32 for f in kept.schema)
    assert kept.cast(plain.schema).equals(plain)


def test_prepared_statements_answer_but_do_not_execute(
    strict_server: DevServer, process: LakeProcess
) -> None:
    # DB-API execute prepares (CreatePreparedStatement works), then GetFlightInfo is refused.
    with (
        fsql.connect(strict_server.url, autocommit=True) as conn,
        conn.cursor() as cursor,
        pytest.raises(adbc_driver_manager.NotSupportedError),
    ):
        cursor.execute("SELECT exe FROM processes")
    with fl.FlightClient(strict_server.url) as client:
        body = msg.pack(
            msg.ActionCreatePreparedStatementRequest(query="SELECT exe, process_id FROM processes")
        )
        results = list(client.do_action(fl.Action("CreatePreparedStatement", body)))
        _, created = msg.unpack(results[0].body.to_pybytes())
        assert created.prepared_statement_handle == b"SELECT exe, process_id FROM processes"
        schema = pa.ipc.read_schema(pa.py_buffer(created.dataset_schema))
        assert schema.names == ["exe", "process_id"]
        ticket = fl.Ticket(msg.pack(msg.CommandPreparedStatementQuery(prepared_statement_handle=b"SELECT 1")))
        with pytest.raises(pa.ArrowNotImplementedError, match="not implemented"):
            client.do_get(ticket).read_all()


def test_bad_sql_is_invalid_argument(strict_server: DevServer) -> None:
    with pytest.raises(adbc_driver_manager.ProgrammingError) as caught:
        adbc_read(strict_server.url, "SELECT * FROM no_such_table")
    assert "INVALID_ARGUMENT" in str(caught.value) or caught.value.status_code.name == "INVALID_ARGUMENT"
    with pytest.raises(pa.ArrowInvalid, match="unknown view set"):
        do_get(strict_server, "SELECT * FROM view_instance('no_such_view', 'x')")
    with pytest.raises(pa.ArrowInvalid, match="global view is not implemented"):
        do_get(strict_server, "SELECT * FROM view_instance('async_events', 'global')")


def test_schemas_match_micromegas(strict_server: DevServer, process: LakeProcess) -> None:
    keep = {"preserve_dictionary": "true", **full_range(process)}
    stream = process.thread_streams[0].stream_id
    spans = do_get(strict_server, f"SELECT * FROM view_instance('thread_spans', '{stream}') LIMIT 1", keep)
    assert spans.schema == pa.schema(
        [(f.name, D32 if f.type == pa.utf8() else f.type) for f in THREAD_SPANS_HYDRATED]
    )
    events = do_get(
        strict_server, f"SELECT * FROM view_instance('async_events', '{process.process_id}') LIMIT 1", keep
    )
    assert events.schema == pa.schema(
        [
            ("stream_id", D32),
            ("block_id", D32),
            ("time", TS),
            ("event_type", D32),
            ("span_id", pa.int64()),
            ("parent_span_id", pa.int64()),
            ("depth", pa.uint32()),
            ("hash", pa.uint32()),
            ("name", D32),
            ("filename", D32),
            ("target", D32),
            ("line", pa.uint32()),
        ]
    )
    logs = do_get(
        strict_server, f"SELECT * FROM view_instance('log_entries', '{process.process_id}') LIMIT 1", keep
    )
    assert logs.schema.names == [
        "process_id", "stream_id", "block_id", "insert_time", "exe", "username", "computer", "time",
        "target", "level", "msg", "properties", "process_properties",
    ]  # fmt: skip
    assert logs.schema.field("level").type == pa.int32()
    assert logs.schema.field("properties").type == pa.dictionary(pa.int32(), pa.binary())
    processes = do_get(strict_server, "SELECT * FROM processes", keep)
    assert processes.schema.names[:3] == ["process_id", "exe", "username"]
    assert processes.schema.field("start_time").type == TS
    streams = do_get(strict_server, "SELECT * FROM streams", keep)
    assert streams.schema.field("tags").type == pa.list_(pa.field("tag", pa.utf8()))


def test_upstream_thread_list_query(strict_server: DevServer, process: LakeProcess) -> None:
    """The exact SQL Micromegas's trace generator sends for the thread list."""
    sql = f"""SELECT b.stream_id, property_get("streams.properties", 'thread-name') as thread_name,
       property_get("streams.properties", 'thread-id') as thread_id
FROM blocks b WHERE b.process_id = '{process.process_id}' AND array_has(b."streams.tags", 'cpu')
GROUP BY stream_id, thread_name, thread_id ORDER BY stream_id"""
    _, table = adbc_read(strict_server.url, sql)
    rows = table.to_pylist()
    expected = sorted(
        (
            {"stream_id": s.stream_id, "thread_name": s.thread_name, "thread_id": s.thread_id}
            for s in process.thread_streams
        ),
        key=lambda r: str(r["stream_id"]),
    )
    assert rows == expected
    names = [r["thread_name"] for r in rows]
    ids = [r["thread_id"] for r in rows]
    assert None in names  # an unnamed thread
    assert None in ids  # a thread without id
    present = [int(i) for i in ids if i is not None]
    assert len(set(present)) < len(present)  # two threads share an id exactly
    assert len({i & 0xFFFFFFFF for i in present}) < len(set(present))  # others collide in 32 bits


def test_processes_time_range_and_upstream_process_query(
    strict_server: DevServer, process: LakeProcess
) -> None:
    _, table = adbc_read(
        strict_server.url, f"SELECT exe FROM processes WHERE process_id = '{process.process_id}' LIMIT 1"
    )
    assert table.column("exe").to_pylist() == [process.exe]
    sql = (
        "SELECT process_id, min(begin_time) AS begin, max(end_time) AS end FROM blocks "
        f"WHERE process_id = '{process.process_id}' GROUP BY process_id"
    )
    _, table = adbc_read(strict_server.url, sql)
    row = table.cast(
        pa.schema([("process_id", pa.utf8()), ("begin", pa.int64()), ("end", pa.int64())])
    ).to_pylist()
    assert row == [{"process_id": process.process_id, "begin": process.begin_ns, "end": process.end_ns}]


def test_limit_header(strict_server: DevServer, process: LakeProcess) -> None:
    sql = f"SELECT * FROM view_instance('async_events', '{process.process_id}')"
    assert do_get(strict_server, sql, {"limit": "7"}).num_rows == 7
