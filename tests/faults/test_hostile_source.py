"""A compromised Flight SQL service (issue 21, item 4): answers built to exhaust the worker, served
over the real Flight SQL wire by a scripted devserver and read by FlightSqlSource and the pipeline.

Each attack must end in a clear permanent failure (or a clean trace) at a documented limit, with
the row conversion done off the event loop: a thread list of 3 M rows, a nesting 20,000 levels
deep, unended async begins past ``max_spans``, invalid UTF-8 and timestamps beyond the nanosecond
range.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from redis.asyncio import Redis

from contracts import JobState, Keys, TraceRequest
from contracts.errors import ErrorCode
from contracts.events import ProgressEvent
from contracts.request import SpanTypes
from tests.service.support import JobReader, fast_settings
from tests.support.devserver import small_lake
from tests.support.fuzz_flight import ScriptedSpans, scripted_spans_server
from tests.support.redis_server import RedisServer
from worker.devserver import DevServer
from worker.engine.thread_spans import MAX_DEPTH
from worker.errors import TraceWorkerError
from worker.inspect import inspect_trace
from worker.pipeline import Progress, TraceSpec, generate_trace
from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.sinks.blob import blob_store_from_settings
from worker.source import FlightSqlConfig, FlightSqlSource

TS = pa.timestamp("ns", tz="UTC")


@pytest.fixture
def hostile() -> Iterator[tuple[DevServer, ScriptedSpans]]:
    with scripted_spans_server(small_lake()) as pair:
        yield pair


def _one_value(n: int, value: str) -> pa.DictionaryArray:
    """n rows of one dictionary value: megabytes of rows from a few bytes of strings."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array([value]))


async def _run(
    server: DevServer, span_types: SpanTypes, *, max_spans: int = 1_000_000, phases: list[str] | None = None
) -> bytes:
    process = server.lake.processes[0]
    source = FlightSqlSource(FlightSqlConfig(url=server.url))

    def progress(p: Progress) -> None:
        if phases is not None:
            phases.append(p.phase)

    try:
        spec = TraceSpec(process.process_id, None, None, span_types, max_spans=max_spans)
        return b"".join([c async for c in generate_trace(source, spec, on_progress=progress)])
    finally:
        await source.aclose()


def _failure(server: DevServer, span_types: SpanTypes, **kw: object) -> TraceWorkerError:
    with pytest.raises(TraceWorkerError) as info:
        asyncio.run(_run(server, span_types, **kw))  # type: ignore[arg-type]
    return info.value


def _spans(begin: np.ndarray, end: np.ndarray, depth: np.ndarray, *, name: str = "f") -> pa.RecordBatch:
    n = len(begin)
    strings = [_one_value(n, name), _one_value(n, "t"), _one_value(n, "x.rs")]
    return pa.RecordBatch.from_arrays(
        [pa.array(begin, TS), pa.array(end, TS), *strings, pa.array(np.zeros(n, dtype=np.int64)),
         pa.array(depth.astype(np.int64))],
        names=["begin", "end", "name", "target", "filename", "line", "depth"],
    )  # fmt: skip


def test_three_million_threads_fail_at_max_threads(hostile: tuple[DevServer, ScriptedSpans]) -> None:
    server, script = hostile
    n = 1_000_000
    batch = pa.RecordBatch.from_arrays(
        [_one_value(n, "8b5c2c3c-0000-4000-8000-000000000001"), _one_value(n, "main"), _one_value(n, "1")],
        names=["stream_id", "thread_name", "thread_id"],
    )
    script.threads = [batch, batch, batch]
    exc = _failure(server, SpanTypes.THREAD)
    assert exc.code == ErrorCode.TRACE_TOO_LARGE and "max_threads" in str(exc)


def test_nesting_past_max_depth_is_bad_source_data(hostile: tuple[DevServer, ScriptedSpans]) -> None:
    server, script = hostile
    base = server.lake.processes[0].begin_ns
    n = 2 * MAX_DEPTH
    idx = np.arange(n, dtype=np.int64)
    # Every span one level below the last and ending after its parent: deep and mis-nested.
    script.thread_spans = [_spans(base + idx, base + 10 * n + idx, idx)]
    exc = _failure(server, SpanTypes.THREAD)
    assert exc.code == ErrorCode.BAD_SOURCE_DATA and f"{MAX_DEPTH} levels" in str(exc)


def test_deep_misnesting_within_the_limit_is_repaired(hostile: tuple[DevServer, ScriptedSpans]) -> None:
    server, script = hostile
    base = server.lake.processes[0].begin_ns
    n = MAX_DEPTH // 2
    idx = np.arange(n, dtype=np.int64)
    # Children that end after their parents, in batches of 700 (the carried stack grows to n).
    batch = _spans(base + idx, base + 10 * n + idx, idx)
    script.thread_spans = [batch.slice(i, 700) for i in range(0, n, 700)]
    data = asyncio.run(_run(server, SpanTypes.THREAD))
    report = inspect_trace(io.BytesIO(data))
    assert report.ok, report.defects[:5]


def test_unended_async_begins_count_against_max_spans(hostile: tuple[DevServer, ScriptedSpans]) -> None:
    server, script = hostile
    base = server.lake.processes[0].begin_ns
    n = 10_000  # 20 batches: several of the engine's canonical batches (65,536 rows)

    def begins(first: int) -> pa.RecordBatch:
        ids = np.arange(first, first + n, dtype=np.int64)
        return pa.RecordBatch.from_arrays(
            [_one_value(n, "s1"), pa.array(base + ids, TS), _one_value(n, "begin"), pa.array(ids),
             pa.array(np.zeros(n, dtype=np.int64)), pa.array(np.zeros(n, dtype=np.int64)), _one_value(n, "a"),
             _one_value(n, "t"), _one_value(n, "x.rs"), pa.array(np.zeros(n, dtype=np.int64))],
            names=["stream_id", "time", "event_type", "span_id", "parent_span_id", "depth", "name", "target",
                   "filename", "line"],
        )  # fmt: skip

    script.async_events = [begins(1 + i * n) for i in range(20)]
    phases: list[str] = []
    exc = _failure(server, SpanTypes.ASYNC, max_spans=100_000, phases=phases)
    assert exc.code == ErrorCode.TRACE_TOO_LARGE
    assert "finishing" not in phases  # stopped while the begins arrived, not after holding them all


def test_invalid_utf8_is_bad_source_data(hostile: tuple[DevServer, ScriptedSpans]) -> None:
    server, script = hostile
    base = server.lake.processes[0].begin_ns
    batch = _spans(np.array([base]), np.array([base + 10]), np.array([0]))
    offsets = pa.py_buffer(np.array([0, 2], dtype=np.int32).tobytes())
    bad = pa.Array.from_buffers(pa.utf8(), 1, [None, offsets, pa.py_buffer(b"\xff\xfe")])
    script.thread_spans = [batch.set_column(2, "name", bad)]
    exc = _failure(server, SpanTypes.THREAD)
    assert exc.code == ErrorCode.BAD_SOURCE_DATA and exc.code.retryable is False


def test_timestamps_beyond_nanoseconds_are_bad_source_data(hostile: tuple[DevServer, ScriptedSpans]) -> None:
    server, script = hostile
    batch = _spans(np.array([0]), np.array([0]), np.array([0]))
    seconds = pa.array([10**12], pa.timestamp("s", tz="UTC"))  # year 33658: over int64 nanoseconds
    script.thread_spans = [batch.set_column(0, "begin", seconds).set_column(1, "end", seconds)]
    exc = _failure(server, SpanTypes.THREAD)
    assert exc.code == ErrorCode.BAD_SOURCE_DATA and "begin" in str(exc)


async def _get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\n\r\n".encode())
        await writer.drain()
        return int((await reader.read()).split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


async def test_livez_answers_and_cancel_stops_a_job_during_a_flood(
    hostile: tuple[DevServer, ScriptedSpans], redis_server: RedisServer, redis: Redis, tmp_path: Path
) -> None:
    """A service that floods the worker with rows (40 batches of 200k async events): the event loop
    stays free for /livez and the cancel, which ends the job well before the flood does."""
    server, script = hostile
    base = server.lake.processes[0].begin_ns
    n = 200_000
    ids = np.arange(n, dtype=np.int64) // 2 + 1
    kinds = pa.DictionaryArray.from_arrays(
        pa.array((np.arange(n) % 2).astype(np.int8)), pa.array(["begin", "end"])
    )
    zeros = pa.array(np.zeros(n, dtype=np.int64))
    flood = pa.RecordBatch.from_arrays(
        [_one_value(n, "s1"), pa.array(base + np.arange(n), TS), kinds, pa.array(ids), zeros, zeros,
         _one_value(n, "a"), _one_value(n, "t"), _one_value(n, "x.rs"), zeros],
        names=["stream_id", "time", "event_type", "span_id", "parent_span_id", "depth", "name", "target",
               "filename", "line"],
    )  # fmt: skip
    script.async_events = [flood] * 40
    settings = fast_settings(
        redis_server.url, flightsql_url=server.url, blob_url=f"file://{tmp_path}", http_host="127.0.0.1",
        lease_s=10.0, heartbeat_s=1.0,
    )  # fmt: skip
    service = Service(
        settings, generator=PipelineGenerator(settings), store=blob_store_from_settings(settings)
    )
    await service.start()
    assert service.http is not None
    try:
        req = TraceRequest(process_id=server.lake.processes[0].process_id, job_id="flood", span_types="async")
        reader = JobReader(redis, Keys("t"), "flood")
        await redis.xadd(Keys("t").requests, {"request": req.to_json()})
        await reader.read_until(lambda e: isinstance(e, ProgressEvent) and e.spans > 0, within=120)
        for _ in range(5):
            async with asyncio.timeout(10):
                assert await _get(service.http.port, "/livez") == 200
        await redis.xadd(Keys("t").cancels, {"job_id": "flood"})
        final = await reader.terminal(within=60)
        assert final.state == JobState.CANCELLED
        assert final.spans is None
        assert max(e.spans for e in reader.events if isinstance(e, ProgressEvent)) < 20 * n
    finally:
        await service.stop()
