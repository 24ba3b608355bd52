"""One job with logs and metrics through the whole service: real redis-server, the devserver over
loopback, a local blob folder; the trace read back from the chunks holds every log entry and measure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from redis.asyncio import Redis

from contracts import ErrorCode, JobState, Keys, TraceRequest
from contracts.events import StatusEvent
from tests.engine.decode_logs import decode_logs
from tests.service.support import JobReader, fast_settings, submit
from tests.support.devserver import small_lake, start_devserver
from tests.support.redis_server import RedisServer
from worker.devserver import DevServer, log_entries, measures
from worker.devserver.schemas import SchemaOptions
from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.settings import Settings
from worker.sinks.blob import blob_store_from_settings

KEYS = Keys("t")


@pytest.fixture(scope="module")
def devserver() -> Iterator[DevServer]:
    with start_devserver(small_lake(seed=9), mode="micromegas") as server:
        yield server


async def _run(settings: Settings, redis: Redis, request: TraceRequest) -> tuple[JobReader, StatusEvent]:
    service = Service(
        settings, generator=PipelineGenerator(settings), store=blob_store_from_settings(settings)
    )
    await service.start()
    try:
        reader = JobReader(redis, KEYS, request.effective_job_id())
        await submit(redis, KEYS, request)
        return reader, await reader.terminal(within=120)
    finally:
        await service.stop()


async def test_job_with_logs_and_metrics(
    redis_server: RedisServer, redis: Redis, devserver: DevServer, tmp_path: Path
) -> None:
    lake = devserver.lake
    process = lake.processes[0]
    settings = fast_settings(
        redis_server.url, flightsql_url=devserver.url, blob_url=f"file://{tmp_path}", chunk_size=64 * 1024
    )
    req = TraceRequest(process_id=process.process_id, span_types="async", logs=True, metrics=True)
    reader, final = await _run(settings, redis, req)
    assert final.state == JobState.SUCCEEDED, final
    got = decode_logs(reader.trace_bytes(final.attempt))
    assert got.problems == []
    plain = SchemaOptions(dictionary_keys="plain")
    want_msgs = sorted(
        m for b in log_entries(lake, process.process_id, plain) for m in b.column("msg").to_pylist()
    )
    assert sorted(g.body for g in got.logs) == want_msgs and len(want_msgs) == process.log_entry_count
    want_values = sorted(
        v for b in measures(lake, process.process_id, plain) for v in b.column("value").to_pylist()
    )
    have_values = sorted(v for points in got.counters.values() for _, v in points)
    assert have_values == want_values and len(have_values) == process.measure_count
    times = [
        t
        for b in measures(lake, process.process_id, plain)
        for t in b.column("time").cast(pa.int64()).to_pylist()
    ]
    assert sorted(t for points in got.counters.values() for t, _ in points) == sorted(times)


async def test_too_many_log_entries_fail_clearly(
    redis_server: RedisServer, redis: Redis, devserver: DevServer, tmp_path: Path
) -> None:
    process = devserver.lake.processes[0]
    settings = fast_settings(
        redis_server.url, flightsql_url=devserver.url, blob_url=f"file://{tmp_path}", max_log_entries=10
    )
    req = TraceRequest(process_id=process.process_id, span_types="async", logs=True, job_id="many-logs")
    _, final = await _run(settings, redis, req)
    assert final.state == JobState.FAILED
    assert final.error_code == ErrorCode.TRACE_TOO_LARGE
    assert final.message is not None and "log entries" in final.message
