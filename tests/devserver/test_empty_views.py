"""A statement over a view with no row in its range answers zero rows with the view's columns.

DataFusion cannot plan a sort over a pyarrow dataset without fragments (what an empty view used to
give): the gateway's newest-first log query over a quiet range came back as a server error (502).
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from tests.devserver.conftest import adbc_read
from tests.support.devserver import rfc3339
from worker.devserver import DevServer, LakeProcess
from worker.model import TimeRange
from worker.source.queries import log_entries_sql

_HOUR = 3600 * 10**9


def _before(process: LakeProcess) -> TimeRange:
    """An hour that ends an hour before the process's first data: no row of any view is in it."""
    return TimeRange(process.begin_ns - 2 * _HOUR, process.begin_ns - _HOUR)


def _headers(r: TimeRange) -> dict[str, str]:
    return {"query_range_begin": rfc3339(r.begin_ns), "query_range_end": rfc3339(r.end_ns)}


@pytest.mark.parametrize("mode", ["strict", "friendly"])
def test_newest_first_log_query_over_a_quiet_range_is_empty(
    mode: str, strict_server: DevServer, friendly_server: DevServer, process: LakeProcess
) -> None:
    server = strict_server if mode == "strict" else friendly_server
    quiet = _before(process)
    # The gateway's own statement (ORDER BY "time" DESC LIMIT: not row-local, runs over the whole view).
    schema, table = adbc_read(
        server.url, log_entries_sql(process.process_id, quiet, limit=50), _headers(quiet)
    )
    assert table.num_rows == 0
    assert table.schema.names == ["time", "level", "target", "msg"]  # the stream's own schema
    assert table.schema.field("level").type == pa.int32() and table.schema.field("msg").type == pa.utf8()
    assert schema.names == ([] if mode == "strict" else table.schema.names)  # FlightInfo, as Micromegas
    # The same statement over the whole process still answers.
    whole = TimeRange(process.begin_ns, process.end_ns)
    _, rows = adbc_read(server.url, log_entries_sql(process.process_id, whole, limit=50), _headers(whole))
    assert rows.num_rows == 50


@pytest.mark.parametrize("view", ["log_entries", "measures", "thread_spans", "async_events"])
def test_sorted_and_aggregated_statements_over_an_empty_view(
    view: str, strict_server: DevServer, process: LakeProcess
) -> None:
    quiet = _before(process)
    instance = process.process_id if view != "thread_spans" else process.thread_streams[0].stream_id
    source = f"view_instance('{view}', '{instance}')"
    column = "begin" if view == "thread_spans" else "time"
    _, table = adbc_read(
        strict_server.url, f'SELECT * FROM {source} ORDER BY "{column}" DESC LIMIT 10', _headers(quiet)
    )
    assert table.num_rows == 0 and column in table.schema.names
    _, counted = adbc_read(strict_server.url, f"SELECT count(*) AS n FROM {source}", _headers(quiet))
    assert counted.column("n").to_pylist() == [0]
