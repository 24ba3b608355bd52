"""A Flight SQL source for one test, closed when it ends."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from worker.source import FlightSqlConfig, FlightSqlSource


@contextlib.asynccontextmanager
async def open_source(url: str, **config: object) -> AsyncIterator[FlightSqlSource]:
    """``FlightSqlSource(FlightSqlConfig(url, **config))``, closed (``aclose``) on the way out."""
    source = FlightSqlSource(FlightSqlConfig(url, **config))  # type: ignore[arg-type]
    try:
        yield source
    finally:
        await source.aclose()
