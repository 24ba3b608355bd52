"""Failure modes of FlightSqlSource: server down, server killed mid-stream, ids that are not UUIDs."""

from __future__ import annotations

import socket

import pytest

from tests.source.test_queries import INJECTIONS
from tests.support.devserver import run_devserver_subprocess, small_lake, start_devserver
from tests.support.source import open_source
from worker.devserver import Lake, LakeConfig
from worker.errors import InvalidRequest, SourceBroken, SourceUnavailable
from worker.model import ThreadInfo, TimeRange

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_server_down_is_unavailable() -> None:
    async with open_source(f"grpc://127.0.0.1:{_closed_port()}") as source:
        with pytest.raises(SourceUnavailable):
            await source.ping()
        with pytest.raises(SourceUnavailable):
            await source.process(PID)
        with pytest.raises(SourceUnavailable):
            await anext(source.async_events(PID, TimeRange(0, 1)))


@pytest.mark.parametrize("bad", INJECTIONS)
async def test_injection_rejected_before_any_query(bad: str) -> None:
    # Nothing listens on this port: had any query been sent, the error would be SourceUnavailable.
    async with open_source(f"grpc://127.0.0.1:{_closed_port()}") as source:
        with pytest.raises(InvalidRequest):
            await source.process(bad)
        with pytest.raises(InvalidRequest):
            await source.threads(bad, TimeRange(0, 1))
        with pytest.raises(InvalidRequest):
            await anext(source.async_events(bad, TimeRange(0, 1)))
        # One bad stream id among good ones: refused before the first (good) thread is fetched.
        threads = [ThreadInfo(PID), ThreadInfo(bad)]
        with pytest.raises(InvalidRequest):
            await anext(source.thread_spans(threads, TimeRange(0, 1)))


async def test_server_killed_mid_stream_is_broken() -> None:
    lake = Lake(LakeConfig(seed=3, processes=("large",), large_spans=1_000_000))
    p = lake.process_of_kind("large")
    time_range = TimeRange(p.begin_ns, p.end_ns)
    args = ["--seed", "3", "--processes", "large", "--large-spans", "1000000", "--block-rows", "4096"]
    with run_devserver_subprocess(args) as server:
        async with open_source(server.url) as source:
            threads = await source.threads(p.process_id, time_range)
            spans = source.thread_spans(threads, time_range)
            rows = 0
            with pytest.raises(SourceBroken):
                async for _thread, batch in spans:
                    if batch is None:
                        continue
                    if rows == 0:
                        server.kill()  # the first batch arrived: the server dies mid-stream
                    rows += batch.num_rows
            await spans.aclose()  # type: ignore[attr-defined]
    assert 0 < rows < p.thread_span_count


async def test_stream_failing_on_the_server_is_broken() -> None:
    lake = small_lake()
    p = lake.processes[0]
    time_range = TimeRange(p.begin_ns, p.end_ns)
    with start_devserver(lake, mode="friendly") as server:
        async with open_source(server.url) as source:
            threads = await source.threads(p.process_id, time_range)
            server.break_streams_after = 0
            with pytest.raises(SourceBroken):
                async for _ in source.thread_spans(threads, time_range):
                    pass


async def test_injection_sends_no_query() -> None:
    lake = small_lake()
    p = lake.processes[0]
    with start_devserver(lake) as server:
        async with open_source(server.url) as source:
            for bad in INJECTIONS:
                with pytest.raises(InvalidRequest):
                    await source.process(bad)
                with pytest.raises(InvalidRequest):
                    await anext(source.async_events(bad, TimeRange(0, 1)))
            assert server.streams_opened == 0
            await source.process(p.process_id)  # the counter does count real queries
            assert server.streams_opened == 1
