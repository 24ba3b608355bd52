"""Friendly mode, options (key widths, older schemas), auth and TLS, over loopback."""

from __future__ import annotations

import adbc_driver_flightsql.dbapi as fsql
import adbc_driver_manager
import pyarrow as pa
import pyarrow.flight as fl
import pytest

from tests.devserver.conftest import adbc_read, full_range
from tests.devserver.test_server_strict import do_get
from tests.support.devserver import expected_async_events, rfc3339, self_signed_cert, start_devserver
from worker.devserver import DevServer, Lake, LakeProcess, SchemaOptions


def test_flight_info_carries_the_real_schema_and_no_range_is_needed(
    friendly_server: DevServer, lake: Lake, process: LakeProcess
) -> None:
    stream = process.thread_streams[0]
    sql = f"SELECT id, begin, name FROM view_instance('thread_spans', '{stream.stream_id}') ORDER BY begin"
    info_schema, table = adbc_read(friendly_server.url, sql)
    assert info_schema == table.schema
    assert table.schema.names == ["id", "begin", "name"]
    assert table.num_rows == stream.thread_span_count


def test_prepared_statements_execute_with_parameters(
    friendly_server: DevServer, lake: Lake, process: LakeProcess
) -> None:
    with fsql.connect(friendly_server.url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT exe FROM processes WHERE process_id = $1", parameters=[process.process_id])
        assert cursor.fetchall() == [(process.exe,)]
        cursor.execute("SELECT count(*) AS n FROM streams")
        assert cursor.fetchone() == (sum(len(p.streams) for p in lake.processes),)


def test_async_events_rows_equal_the_lake_rows(
    friendly_server: DevServer, lake: Lake, process: LakeProcess
) -> None:
    sql = f"SELECT * FROM view_instance('async_events', '{process.process_id}')"
    _, table = adbc_read(friendly_server.url, sql)
    expected = pa.Table.from_batches(list(expected_async_events(lake, process.process_id)))
    assert table.equals(expected)


def test_header_range_and_sql_range_combine(
    friendly_server: DevServer, lake: Lake, process: LakeProcess
) -> None:
    stream = process.thread_streams[0].stream_id
    span = process.end_ns - process.begin_ns
    lo, hi = process.begin_ns + span // 4, process.begin_ns + span // 2
    _, full = adbc_read(
        friendly_server.url, f"SELECT begin, \"end\" FROM view_instance('thread_spans', '{stream}')"
    )
    b = full.column("begin").cast(pa.int64()).to_numpy()
    e = full.column("end").cast(pa.int64()).to_numpy()
    # Header range: overlap semantics, spans not clipped.
    headers = {"query_range_begin": rfc3339(lo), "query_range_end": rfc3339(hi)}
    _, cut = adbc_read(
        friendly_server.url, f"SELECT begin, \"end\" FROM view_instance('thread_spans', '{stream}')", headers
    )
    assert cut.equals(full.filter(pa.array((b <= hi) & (e >= lo))))
    # The upstream SQL filter on top of a wider header range gives the same rows.
    sql = (
        f"SELECT begin, \"end\" FROM view_instance('thread_spans', '{stream}') "
        f"WHERE begin <= arrow_cast({hi}, 'Timestamp(Nanosecond, Some(\"+00:00\"))') "
        f'AND "end" >= arrow_cast({lo}, \'Timestamp(Nanosecond, Some("+00:00"))\') ORDER BY begin'
    )
    _, by_sql = adbc_read(friendly_server.url, sql, full_range(process))
    assert by_sql.equals(cut)


@pytest.mark.parametrize(
    ("options", "name_type", "has_hash"),
    [
        (
            SchemaOptions(dictionary_keys="int16", async_hash=False),
            pa.dictionary(pa.int16(), pa.utf8()),
            False,
        ),
        (SchemaOptions(dictionary_keys="plain"), pa.utf8(), True),
    ],
)
def test_older_schemas(
    lake: Lake, process: LakeProcess, options: SchemaOptions, name_type: pa.DataType, has_hash: bool
) -> None:
    with start_devserver(lake, schema_options=options) as server:
        sql = f"SELECT * FROM view_instance('async_events', '{process.process_id}')"
        table = do_get(server, sql, {"preserve_dictionary": "true"})
        assert table.schema.field("name").type == name_type
        assert ("hash" in table.schema.names) is has_hash
        assert table.num_rows > process.async_span_count


def test_bearer_token_accepted_and_refused(lake: Lake) -> None:
    with start_devserver(lake, token="s3cret") as server:
        ok = {"adbc.flight.sql.authorization_header": "Bearer s3cret"}
        _, table = adbc_read(server.url, "SELECT process_id FROM processes", db_kwargs=ok)
        assert table.num_rows == len(lake.processes)
        for bad in ({"adbc.flight.sql.authorization_header": "Bearer nope"}, {}):
            with pytest.raises(adbc_driver_manager.ProgrammingError, match="UNAUTHENTICATED"):
                adbc_read(server.url, "SELECT process_id FROM processes", db_kwargs=bad)
        with pytest.raises(fl.FlightUnauthenticatedError):
            do_get(server, "SELECT 1")


def test_tls(lake: Lake) -> None:
    cert, key = self_signed_cert()
    with start_devserver(lake, tls=(cert, key)) as server:
        assert server.url.startswith("grpc+tls://127.0.0.1:")
        trusted = {"adbc.flight.sql.client_option.tls_root_certs": cert.decode()}
        _, table = adbc_read(server.url, "SELECT exe FROM processes", db_kwargs=trusted)
        assert table.num_rows == len(lake.processes)
        with pytest.raises(adbc_driver_manager.OperationalError):
            adbc_read(server.url, "SELECT exe FROM processes")  # no CA: the handshake fails
