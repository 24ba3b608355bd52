"""The helpers other test packages use: the session fixture and the expected-rows helpers."""

from __future__ import annotations

import pyarrow as pa

from tests.devserver.conftest import adbc_read, full_range
from tests.support.devserver import expected_thread_spans, rfc3339, small_devserver
from worker.devserver import DevServer

__all__ = ["small_devserver"]  # the fixture, imported here to be used below


def test_small_devserver_fixture_serves_the_small_lake(small_devserver: DevServer) -> None:
    process = small_devserver.lake.processes[0]
    assert process.kind == "small"
    stream = process.thread_streams[0]
    lo = process.begin_ns + (process.end_ns - process.begin_ns) // 2
    headers = {"query_range_begin": rfc3339(lo), "query_range_end": rfc3339(process.end_ns)}
    sql = f"SELECT * FROM view_instance('thread_spans', '{stream.stream_id}')"
    _, served = adbc_read(small_devserver.url, sql, headers)
    expected = pa.Table.from_batches(
        list(expected_thread_spans(small_devserver.lake, stream.stream_id, lo, None))
    )
    assert served.equals(expected)
    assert 0 < served.num_rows < stream.thread_span_count
    _, everything = adbc_read(small_devserver.url, sql, full_range(process))
    assert everything.num_rows == stream.thread_span_count


def test_rfc3339_keeps_nanoseconds() -> None:
    assert rfc3339(1_793_491_200_123_456_789) == "2026-11-01T00:00:00.123456789Z"
