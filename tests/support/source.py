"""A Flight SQL source for one test, closed when it ends; a process's whole trace through it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from contracts.request import SpanTypes
from worker.pipeline import TraceSpec, generate_trace
from worker.source import FlightSqlConfig, FlightSqlSource


@contextlib.asynccontextmanager
async def open_source(url: str, **config: object) -> AsyncIterator[FlightSqlSource]:
    """``FlightSqlSource(FlightSqlConfig(url, **config))``, closed (``aclose``) on the way out."""
    source = FlightSqlSource(FlightSqlConfig(url, **config))  # type: ignore[arg-type]
    try:
        yield source
    finally:
        await source.aclose()


async def whole_trace(
    source: FlightSqlSource, process_id: str, span_types: SpanTypes = SpanTypes.BOTH
) -> bytes:
    """The bytes of the process's trace over its whole life (``generate_trace``'s chunks joined)."""
    spec = TraceSpec(process_id, None, None, span_types)
    return b"".join([chunk async for chunk in generate_trace(source, spec)])
