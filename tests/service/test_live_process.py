"""Issue 17: a request for a process that is still running is not answered with a stale trace.

The real pipeline against the devserver over loopback, with the source's view of the process
advancing between requests as a live process's does (its last recorded time moves on: the
development lake holds the spans, the source reveals them up to "now"). An open-ended request
resolves its end when a worker starts it and says which end it used; a repeat within ``max_age_s``
gets the same job; past it (``max_age_s: 0`` here) a fresh trace with the newer data; closed
ranges keep their dedupe."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from redis.asyncio import Redis

from contracts import JobState, Keys, StatusEvent, TraceRequest
from tests.service.support import JobReader, fast_settings, submit
from tests.support.devserver import small_lake, start_devserver
from tests.support.redis_server import RedisServer
from worker.devserver import DevServer
from worker.model import ProcessInfo, ThreadInfo
from worker.perfetto_pb import pb
from worker.service.app import Service
from worker.service.generator import PipelineGenerator
from worker.sinks.blob import blob_store_from_settings
from worker.source import FlightSqlConfig, FlightSqlSource

KEYS = Keys("t")


@pytest.fixture(scope="module")
def devserver() -> Iterator[DevServer]:
    with start_devserver(small_lake(processes=("small",))) as server:
        yield server


class LiveSource(FlightSqlSource):
    """The devserver's process as a live one: its last recorded time is ``now_ns`` (set by the test)."""

    now_ns: int | None = None

    async def process(self, process_id: str) -> ProcessInfo:
        info = await super().process(process_id)
        if self.now_ns is None:
            return info
        return dataclasses.replace(info, last_time_ns=self.now_ns)

    async def process_and_threads(self, process_id: str) -> tuple[ProcessInfo, list[ThreadInfo] | None]:
        info, threads = await super().process_and_threads(process_id)
        if self.now_ns is None:
            return info, threads
        return dataclasses.replace(info, last_time_ns=self.now_ns), threads


def _labels(data: bytes) -> dict[str, str]:
    trace = pb.Trace()
    trace.ParseFromString(data)
    for packet in trace.packet:
        if packet.HasField("track_descriptor") and packet.track_descriptor.HasField("process"):
            return dict(label.split("=", 1) for label in packet.track_descriptor.process.process_labels)
    raise AssertionError("no process track")


async def test_open_ended_requests_resolve_now_and_reuse_only_within_max_age(
    redis_server: RedisServer, redis: Redis, devserver: DevServer, tmp_path: Path
) -> None:
    settings = fast_settings(
        redis_server.url,
        flightsql_url=devserver.url,
        blob_url=(tmp_path / "blobs").as_uri(),
        chunk_size=64 * 1024,
    )
    source = LiveSource(FlightSqlConfig.from_settings(settings))
    process = devserver.lake.processes[0]
    mid = process.begin_ns + (process.end_ns - process.begin_ns) // 2
    source.now_ns = mid  # the process has run half its life so far
    service = Service(
        settings, generator=PipelineGenerator(settings, source), store=blob_store_from_settings(settings)
    )
    await service.start()
    try:
        request = TraceRequest(process_id=process.process_id)  # no end: "up to now"
        reader = JobReader(redis, KEYS, request.effective_job_id())

        async def ask(req: TraceRequest) -> tuple[StatusEvent, bytes]:
            entry = await submit(redis, KEYS, req)
            final = await reader.read_until(
                lambda e: isinstance(e, StatusEvent) and e.request_id == entry and e.state.terminal,
                within=120,
            )
            assert isinstance(final, StatusEvent) and final.state == JobState.SUCCEEDED, final
            return final, reader.trace_bytes(final.attempt)

        first, first_trace = await ask(request)
        assert (first.begin_ns, first.end_ns) == (process.begin_ns, mid)
        assert _labels(first_trace)["trace_end_ns"] == str(mid)

        source.now_ns = process.end_ns  # more telemetry has landed
        repeat, _ = await ask(request)  # within the default max_age_s: the same job, said so
        assert repeat.attempt == first.attempt and repeat.sha256 == first.sha256 and repeat.end_ns == mid
        assert "duplicate" in (repeat.detail or "")

        fresh, fresh_trace = await ask(request.model_copy(update={"max_age_s": 0}))
        assert fresh.attempt == first.attempt + 1 and fresh.end_ns == process.end_ns
        assert (fresh.spans or 0) > (first.spans or 0) and fresh.sha256 != first.sha256
        assert _labels(fresh_trace)["trace_end_ns"] == str(process.end_ns)

        closed = TraceRequest(process_id=process.process_id, begin=_dt(process.begin_ns), end=_dt(mid))
        creader = JobReader(redis, KEYS, closed.effective_job_id())
        c1 = await submit(redis, KEYS, closed)
        a1 = await creader.read_until(
            lambda e: isinstance(e, StatusEvent) and e.request_id == c1 and e.state.terminal, within=120
        )
        c2 = await submit(redis, KEYS, closed)
        a2 = await creader.read_until(
            lambda e: isinstance(e, StatusEvent) and e.request_id == c2 and e.state.terminal, within=120
        )
        assert isinstance(a1, StatusEvent) and isinstance(a2, StatusEvent)
        assert a2.attempt == a1.attempt == 1 and a2.sha256 == a1.sha256  # closed ranges keep their dedupe
    finally:
        await service.stop()


def _dt(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)
