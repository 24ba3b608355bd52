"""Large processes stream block by block; broken and killed streams fail on the client."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from tests.devserver.conftest import full_range
from tests.support.devserver import rfc3339, run_devserver_subprocess, start_devserver
from worker.devserver import DevServer, Lake, LakeConfig, LakeProcess
from worker.devserver import flightsql_messages as msg
from worker.devserver import threads as threads_module
from worker.devserver.headers import RequestHeaders
from worker.devserver.query import QueryEngine
from worker.devserver.schemas import SchemaOptions


def _ticket(sql: str) -> fl.Ticket:
    return fl.Ticket(msg.pack(msg.TicketStatementQuery(statement_handle=sql.encode())))


def _options(headers: dict[str, str]) -> fl.FlightCallOptions:
    return fl.FlightCallOptions(headers=[(k.encode(), v.encode()) for k, v in headers.items()])


@pytest.fixture(scope="module")
def big_lake() -> Lake:
    return Lake(LakeConfig(processes=("large",), large_spans=2_000_000, block_rows=32_768))


@pytest.fixture
def big_server(big_lake: Lake) -> Iterator[DevServer]:
    with start_devserver(big_lake) as server:
        yield server


def test_row_local_statements_run_per_block(big_lake: Lake) -> None:
    process = big_lake.processes[0]
    engine = QueryEngine(big_lake, strict=True, schema_options=SchemaOptions())
    headers = RequestHeaders(range_ns=(process.begin_ns, process.end_ns))
    stream = process.thread_streams[0].stream_id
    upstream = (
        'SELECT "begin", "end", name, filename, target, line '
        f"FROM view_instance('thread_spans', '{stream}') "
        f"WHERE begin <= TIMESTAMP '{rfc3339(process.end_ns)}' "
        f"AND end >= TIMESTAMP '{rfc3339(process.begin_ns)}' ORDER BY begin"
    )
    assert engine.plan(upstream, headers).streamed
    events = f"SELECT * FROM view_instance('async_events', '{process.process_id}') WHERE event_type = 'begin'"
    assert engine.plan(events, headers).streamed
    assert engine.plan(events + " ORDER BY time", headers).streamed
    assert not engine.plan(
        f"SELECT count(*) FROM view_instance('thread_spans', '{stream}')", headers
    ).streamed
    by_name = f"SELECT * FROM view_instance('thread_spans', '{stream}') ORDER BY name"
    assert not engine.plan(by_name, headers).streamed


def test_large_stream_arrives_in_bounded_batches_before_it_is_all_generated(
    big_server: DevServer, big_lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = big_lake.processes[0]
    stream = process.thread_streams[0]
    assert stream.plan is not None and stream.plan.block_count >= 6
    generated: list[int] = []
    real = threads_module.generate_block

    def counting(*args: Any) -> Any:
        generated.append(1)
        return real(*args)

    monkeypatch.setattr(threads_module, "generate_block", counting)
    sql = f"SELECT * FROM view_instance('thread_spans', '{stream.stream_id}') ORDER BY begin"
    with fl.FlightClient(big_server.url) as client:
        reader = client.do_get(_ticket(sql), options=_options(full_range(process)))
        first = reader.read_chunk().data
        # The server is at most a flow-control window ahead, far from the whole stream.
        assert len(generated) < stream.plan.block_count
        rows, batches, largest = first.num_rows, 1, first.num_rows
        previous_end = first.column("begin")[-1]
        for chunk in reader:
            batch = chunk.data
            assert pa.compute.greater_equal(batch.column("begin")[0], previous_end).as_py()
            previous_end = batch.column("begin")[-1]
            rows += batch.num_rows
            batches += 1
            largest = max(largest, batch.num_rows)
    assert rows == stream.thread_span_count
    assert largest <= 8192 and batches >= rows // 8192


def test_break_streams_after(big_server: DevServer, big_lake: Lake) -> None:
    process = big_lake.processes[0]
    big_server.break_streams_after = 2
    sql = f"SELECT * FROM view_instance('async_events', '{process.process_id}')"
    with fl.FlightClient(big_server.url) as client:
        reader = client.do_get(_ticket(sql))
        reader.read_chunk()
        reader.read_chunk()
        with pytest.raises(fl.FlightServerError, match="broken on purpose"):  # gRPC UNKNOWN
            reader.read_chunk()


def test_server_killed_mid_stream(process: LakeProcess) -> None:
    with run_devserver_subprocess(
        ["--processes", "typical", "--mode", "friendly", "--block-rows", "4096"]
    ) as server:
        lake = Lake(LakeConfig(processes=("typical",), block_rows=4096))
        stream = lake.processes[0].thread_streams[0]
        sql = f"SELECT * FROM view_instance('thread_spans', '{stream.stream_id}')"
        with fl.FlightClient(server.url) as client:
            reader = client.do_get(_ticket(sql))
            assert reader.read_chunk().data.num_rows > 0
            server.kill()
            with pytest.raises((fl.FlightError, pa.ArrowException, OSError)):
                reader.read_all()


def test_concurrent_streams_each_get_their_rows(strict_server: DevServer, lake: Lake) -> None:
    """Many threads' spans fetched at once, as the source does: every stream complete and its own."""
    process = lake.process_of_kind("wide")
    streams = process.thread_streams[:16]
    options = _options(full_range(process))
    results: dict[str, int] = {}
    errors: list[BaseException] = []

    def fetch(stream_id: str) -> None:
        sql = f"SELECT id FROM view_instance('thread_spans', '{stream_id}')"
        try:
            with fl.FlightClient(strict_server.url) as client:
                results[stream_id] = client.do_get(_ticket(sql), options=options).read_all().num_rows
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=fetch, args=(s.stream_id,)) for s in streams]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert errors == []
    assert results == {s.stream_id: s.thread_span_count for s in streams}
