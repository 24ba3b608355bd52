"""Awkward log texts, measure values and bad columns over the real Flight SQL wire (scripted devserver
answers): the trace is never broken, texts and values come out as docs/TRACE_FORMAT.md says, bad
columns fail clearly."""

from __future__ import annotations

import pyarrow as pa
import pytest

from contracts.request import SpanTypes
from tests.engine.decode_logs import decode_logs
from tests.support.devserver import small_lake
from tests.support.fuzz_flight import scripted_spans_server
from worker.engine.logs import MAX_BODY_CHARS, TRUNCATION_MARK
from worker.errors import BadSourceData
from worker.pipeline import TraceSpec, generate_trace
from worker.source import FlightSqlConfig, FlightSqlSource

TS = pa.timestamp("ns", tz="+00:00")
TEXTS = ["", None, "naïve ☃ 日本 🎉", "nul\x00inside\x00", "z" * (MAX_BODY_CHARS * 2), "plain"]
SHOWN = ["", "", "naïve ☃ 日本 🎉", "nul\u2400inside\u2400", "z" * MAX_BODY_CHARS + TRUNCATION_MARK, "plain"]


def _logs(begin: int, msg: pa.Array) -> pa.RecordBatch:
    n = len(msg)
    return pa.record_batch(
        {
            "stream_id": pa.array(["s"] * n),
            "time": pa.array([begin + i for i in range(n)], pa.int64()).cast(TS),
            "level": pa.array([2] * n, pa.int32()),
            "target": pa.array(["app"] * n),
            "msg": msg,
        }
    )


def _measures(begin: int, value: pa.Array) -> pa.RecordBatch:
    n = len(value)
    return pa.record_batch(
        {
            "time": pa.array([begin + i for i in range(n)], pa.int64()).cast(TS),
            "target": pa.array(["app"] * n),
            "name": pa.array(["allocated"] * n),
            "unit": pa.array(["bytes"] * n),
            "value": value,
        }
    )


async def _run(lake_process_id: str, server_url: str, begin: int, end: int) -> bytes:
    source = FlightSqlSource(FlightSqlConfig(server_url, concurrency=1))
    try:
        spec = TraceSpec(lake_process_id, begin, end, SpanTypes.ASYNC, logs=True, metrics=True)
        return b"".join([c async for c in generate_trace(source, spec)])
    finally:
        await source.aclose()


async def test_awkward_texts_arrive_escaped_over_the_wire() -> None:
    lake = small_lake(seed=4)
    p = lake.processes[0]
    with scripted_spans_server(lake) as (server, script):
        script.log_entries = [_logs(p.begin_ns + 10, pa.array(TEXTS, pa.string()))]
        data = await _run(p.process_id, server.url, p.begin_ns, p.end_ns)
    got = decode_logs(data)
    assert got.problems == []
    assert [g.body for g in sorted(got.logs)] == SHOWN
    assert {g.prio for g in got.logs} == {6}


async def test_a_msg_column_of_numbers_fails_clearly() -> None:
    lake = small_lake(seed=4)
    p = lake.processes[0]
    with scripted_spans_server(lake) as (server, script):
        script.log_entries = [_logs(p.begin_ns + 10, pa.array([1, 2], pa.int64()))]
        with pytest.raises(BadSourceData, match="'msg'"):
            await _run(p.process_id, server.url, p.begin_ns, p.end_ns)


@pytest.mark.parametrize("value_type", [pa.int64(), pa.uint64()])
async def test_integer_measures_beyond_double_precision_arrive_as_the_nearest_double(
    value_type: pa.DataType,
) -> None:
    # Perfetto counter values are doubles: a value above 2**53 is written as the nearest double
    # (docs/TRACE_FORMAT.md, "Logs and metrics"), never a failed job.
    lake = small_lake(seed=4)
    p = lake.processes[0]
    values = [2**53 + 1, 2**62 + 3, 5] if value_type == pa.int64() else [2**53 + 1, 2**64 - 1, 5]
    with scripted_spans_server(lake) as (server, script):
        script.measures = [_measures(p.begin_ns + 10, pa.array(values, value_type))]
        data = await _run(p.process_id, server.url, p.begin_ns, p.end_ns)
    got = decode_logs(data)
    assert got.problems == []
    ((uuid, points),) = got.counters.items()
    assert got.descriptors[uuid].name == "allocated (app)"
    assert points == [(p.begin_ns + 10 + i, float(v)) for i, v in enumerate(values)]
