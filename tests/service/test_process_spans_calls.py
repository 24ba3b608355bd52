"""Flight SQL round trips per job, read from the worker's /metrics (trace_worker_flightsql_calls_total)
and checked against the devserver's own count of DoGet streams: a small process's threads come from
one ``process_spans`` query, a larger one's from one query per thread, and a server without
``process_spans`` is asked once, then per thread; every way gives the same trace (status sha256).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

from contracts import Keys, TraceRequest
from tests.service.support import JobReader, fast_settings, submit
from tests.support.devserver import small_lake, start_devserver
from tests.support.redis_server import RedisServer
from worker.devserver import DevServer, Lake, SchemaOptions
from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.sinks.blob.memory import MemoryBlobStore

KEYS = Keys("t")


async def _metrics(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    calls = {}
    for line in raw.decode().splitlines():
        if line.startswith("trace_worker_flightsql_calls_total{"):
            labels, value = line.rsplit(" ", 1)
            calls[labels.split('call="', 1)[1].split('"', 1)[0]] = float(value)
    return calls


class _Worker:
    """A running service over one devserver; :meth:`job` runs a job and counts its DoGets."""

    def __init__(self, service: Service, redis: Redis, server: DevServer) -> None:
        self.service, self.redis, self.server = service, redis, server
        self.refused = 0.0

    async def job(self, process_id: str, job_id: str) -> tuple[int, str]:
        """(DoGet calls the job made, its trace's sha256). Every DoGet but a refused one (which fails
        before its stream opens) is a stream on the server: :attr:`refused` counts the others."""
        assert self.service.http is not None
        port = self.service.http.port
        before, opened = (await _metrics(port)).get("DoGet", 0.0), self.server.streams_opened
        reader = JobReader(self.redis, KEYS, job_id)
        await submit(self.redis, KEYS, TraceRequest(process_id=process_id, job_id=job_id))
        status = await reader.terminal()
        assert status.state.value == "succeeded", reader.summary()
        calls = (await _metrics(port))["DoGet"] - before
        self.refused = calls - (self.server.streams_opened - opened)
        assert status.sha256 is not None
        return int(calls), status.sha256


@asynccontextmanager
async def _worker(
    redis_server: RedisServer, lake: Lake, *, schema_options: SchemaOptions | None = None, **settings: object
) -> AsyncIterator[_Worker]:
    with start_devserver(lake, schema_options=schema_options) as server:
        config = fast_settings(redis_server.url, flightsql_url=server.url, **settings)
        service = Service(config, generator=PipelineGenerator(config), store=MemoryBlobStore())
        await service.start()
        redis = Redis.from_url(redis_server.url)
        try:
            yield _Worker(service, redis, server)
        finally:
            await redis.aclose()
            await service.stop()


async def test_small_process_one_span_query_larger_one_per_thread(redis_server: RedisServer) -> None:
    lake = small_lake(processes=("small", "wide"))
    small, wide = lake.processes
    limit = 20_000
    assert small.thread_span_count <= limit < wide.thread_span_count  # devserver: one object per row
    async with _worker(redis_server, lake, flightsql_process_spans_max_objects=limit) as worker:
        await worker.job(small.process_id, "warm")  # the first query also learns the ticket form
        small_calls, small_sha = await worker.job(small.process_id, "small")
        assert worker.refused == 0  # the worker's count is the server's
        wide_calls, _ = await worker.job(wide.process_id, "wide")
        assert worker.refused == 0
    assert small_calls == 3  # process and threads, process_spans, async events
    assert wide_calls == 1 + wide.thread_count + 1  # one query per thread: 66
    async with _worker(redis_server, lake, flightsql_process_spans_max_objects=0) as worker:
        per_thread_calls, per_thread_sha = await worker.job(small.process_id, "per-thread")
    assert per_thread_calls == 1 + small.thread_count + 1
    assert small_sha == per_thread_sha


async def test_server_without_process_spans_is_asked_once(redis_server: RedisServer) -> None:
    lake = small_lake()
    process = lake.processes[0]
    async with _worker(redis_server, lake) as worker:
        _, expected = await worker.job(process.process_id, "new")
    old = SchemaOptions(process_spans=False)
    async with _worker(redis_server, lake, schema_options=old) as worker:
        first, first_sha = await worker.job(process.process_id, "first")
        assert worker.refused == 1  # process_spans: refused at planning, no stream opened
        second, second_sha = await worker.job(process.process_id, "second")
        assert worker.refused == 0
    per_thread = 1 + process.thread_count + 1
    assert first == 1 + per_thread  # refused, then per thread
    assert second == per_thread  # the refusal is remembered
    assert first_sha == second_sha == expected
