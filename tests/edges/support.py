"""Helpers of the range-edge tests: build a hand-made lake, generate its trace over the wire."""

from __future__ import annotations

import asyncio

from contracts.request import SpanTypes
from tests.engine.decode import Decoded, Slice
from tests.support.handmade import PROCESS_ID, AsyncRow, HandLake, ThreadRow
from worker.devserver import DevServer
from worker.pipeline import TraceSpec, generate_trace
from worker.source import FlightSqlConfig, FlightSqlSource

#: 2026-11-01T00:00:00Z
T0 = 1_793_491_200_000_000_000


def lake_of(
    *,
    events: list[AsyncRow] | None = None,
    threads: dict[str, list[ThreadRow]] | None = None,
    start_ns: int = T0 - 10**6,
    first_ns: int = T0 - 10**6,
    last_ns: int = T0 + 10**6,
) -> HandLake:
    return HandLake(start_ns, first_ns, last_ns, threads=dict(threads or {}), events=list(events or []))


def generate(
    server: DevServer,
    begin_ns: int | None,
    end_ns: int | None,
    span_types: SpanTypes,
    *,
    lookback_ns: int = 10**9,
    process_id: str = PROCESS_ID,
    chunk_size: int = 1 << 20,
) -> bytes:
    """The trace bytes ``trace-worker`` writes for the request (FlightSqlSource + generate_trace)."""

    async def run() -> bytes:
        source = FlightSqlSource(FlightSqlConfig(url=server.url, concurrency=2))
        try:
            spec = TraceSpec(
                process_id, begin_ns, end_ns, span_types, chunk_size=chunk_size, async_lookback_ns=lookback_ns
            )
            return b"".join([chunk async for chunk in generate_trace(source, spec)])
        finally:
            await source.aclose()

    return asyncio.run(run())


def slices_by_name(decoded: Decoded) -> dict[str, Slice]:
    out: dict[str, Slice] = {}
    for s in decoded.slices:
        assert s.name not in out, f"{s.name} drawn twice"
        out[s.name] = s
    return out
