"""Failure modes of FlightSqlSource: server down, server killed mid-stream, ids that are not UUIDs."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from tests.source.test_queries import INJECTIONS
from worker.errors import InvalidRequest, SourceUnavailable
from worker.model import ThreadInfo, TimeRange
from worker.source import FlightSqlConfig, FlightSqlSource

PID = "34d7c06d-3163-4111-863e-c5fc09d22d51"


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextlib.asynccontextmanager
async def _source(url: str) -> AsyncIterator[FlightSqlSource]:
    source = FlightSqlSource(FlightSqlConfig(url))
    try:
        yield source
    finally:
        await source.aclose()


async def test_server_down_is_unavailable() -> None:
    async with _source(f"grpc://127.0.0.1:{_closed_port()}") as source:
        with pytest.raises(SourceUnavailable):
            await source.ping()
        with pytest.raises(SourceUnavailable):
            await source.process(PID)
        with pytest.raises(SourceUnavailable):
            await anext(source.async_events(PID, TimeRange(0, 1)))


@pytest.mark.parametrize("bad", INJECTIONS)
async def test_injection_rejected_before_any_query(bad: str) -> None:
    # Nothing listens on this port: had any query been sent, the error would be SourceUnavailable.
    async with _source(f"grpc://127.0.0.1:{_closed_port()}") as source:
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
