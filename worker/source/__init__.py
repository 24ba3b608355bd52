"""The Flight SQL side: reads processes, threads, thread spans and async events as Arrow batches.

    async with contextlib.aclosing(FlightSqlSource(FlightSqlConfig("grpc://127.0.0.1:50051"))) as src:
        process = await src.process("34d7c06d-3163-4111-863e-c5fc09d22d51")

Modules: :mod:`~worker.source.queries` (SQL text, id validation), :mod:`~worker.source.flightsql`
(ADBC connections and error mapping), :mod:`~worker.source.fetch` (bounded concurrent per-thread
fetch), :mod:`~worker.source.columns` (checks of the batches' schemas).
"""

from __future__ import annotations

from worker.source.config import FlightSqlConfig
from worker.source.flightsql import FlightSqlSource, list_processes
from worker.source.protocol import Source

__all__ = ["FlightSqlConfig", "FlightSqlSource", "Source", "list_processes"]
