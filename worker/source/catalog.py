"""What a person browses before asking for a trace: processes, their statistics and log lines.

Read from the same Flight SQL service as the spans, with the same validation (ids must be UUIDs,
search texts are quoted literals). Counts come from the views themselves (``thread_spans`` per
thread, ``async_events`` ``begin`` events, ``log_entries``) over the process's recorded time range,
so they are exactly what a trace of the whole process would read.

    catalog = Catalog(FlightSqlSource(FlightSqlConfig("grpc://127.0.0.1:50051")))
    stats = await catalog.stats("34d7c06d-3163-4111-863e-c5fc09d22d51")
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.errors import InvalidRequest
from worker.model import ProcessInfo, ThreadInfo, TimeRange
from worker.source import queries
from worker.source.columns import Kind
from worker.source.flightsql import FlightSqlSource

__all__ = ["Catalog", "LogEntry", "ProcessStats"]

_COUNT_KINDS: Mapping[str, Kind] = {"n": Kind.INTEGER}
_LOG_KINDS: Mapping[str, Kind] = {
    "time": Kind.TIME,
    "level": Kind.INTEGER,
    "target": Kind.TEXT,
    "msg": Kind.TEXT,
}


@dataclass(frozen=True)
class ProcessStats:
    """Counts of one process over its recorded range.

    Attributes:
        process: the process description, with ``first_time_ns`` / ``last_time_ns``.
        threads: its thread streams (tagged ``cpu``), by stream id.
        thread_spans: rows of ``thread_spans`` over all threads (Micromegas's synthetic call-tree
            roots included, as a trace draws them).
        async_spans: async spans that begin in the range (``begin`` events).
        log_entries: rows of ``log_entries``.
    """

    process: ProcessInfo
    threads: list[ThreadInfo]
    thread_spans: int
    async_spans: int
    log_entries: int


@dataclass(frozen=True)
class LogEntry:
    """One log line: ``time_ns`` epoch ns UTC, ``level`` 1 (fatal) to 6 (trace)."""

    time_ns: int
    level: int
    target: str
    msg: str

    @property
    def level_name(self) -> str:
        return queries.LOG_LEVELS[self.level - 1] if 1 <= self.level <= 6 else str(self.level)


class Catalog:
    """Metadata queries over a :class:`FlightSqlSource` (which it does not own or close).

    Args:
        source: the connection pool to the Flight SQL service.
        concurrency: per-thread count queries run at once.
    """

    def __init__(self, source: FlightSqlSource, concurrency: int = 4) -> None:
        self._source = source
        self._limit = asyncio.Semaphore(max(1, concurrency))

    async def processes(
        self, *, search: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[ProcessInfo]:
        """Processes newest first, whose id or exe contains ``search`` (case-insensitive).

        Raises:
            InvalidRequest: bad limit (1-100000), offset (0-1000000) or search text.
        """
        return await self._source.processes(limit, search=search or None, offset=offset)

    async def stats(self, process_id: str) -> ProcessStats:
        """Threads, thread span, async span and log entry counts over the recorded range.

        Raises:
            InvalidRequest: not a UUID. ProcessNotFound: unknown process. Other TraceWorkerErrors
            from the service.
        """
        process = await self._source.process(process_id)
        whole = _whole_range(process)
        threads = await self._source.threads(process.process_id, whole)
        counts = await asyncio.gather(
            *(
                self._count(queries.thread_span_count_sql(t.stream_id), "thread span count", whole)
                for t in threads
            ),
            self._count(queries.async_span_count_sql(process.process_id), "async span count", whole),
            self._count(queries.log_entry_count_sql(process.process_id), "log entry count", whole),
        )
        return ProcessStats(
            process=process,
            threads=threads,
            thread_spans=sum(counts[: len(threads)]),
            async_spans=counts[-2],
            log_entries=counts[-1],
        )

    async def log_entries(
        self,
        process_id: str,
        *,
        begin_ns: int | None = None,
        end_ns: int | None = None,
        max_level: int = 6,
        search: str | None = None,
        limit: int = 100,
    ) -> list[LogEntry]:
        """Log lines newest first, in ``[begin_ns, end_ns]`` (default: the process's recorded range).

        Raises:
            InvalidRequest: bad id, level (1-6), limit (1-10000), search text, or begin after end.
            ProcessNotFound: unknown process.
        """
        process = await self._source.process(process_id)
        whole = _whole_range(process)
        try:
            wanted = TimeRange(
                whole.begin_ns if begin_ns is None else begin_ns, whole.end_ns if end_ns is None else end_ns
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        sql = queries.log_entries_sql(
            process.process_id, wanted, max_level=max_level, search=search, limit=limit
        )
        rows = await self._source.query_rows(sql, "log entries query", _LOG_KINDS, wanted, limit=limit)
        return [
            LogEntry(
                time_ns=int(r["time"]), level=int(r["level"]), target=_text(r["target"]), msg=_text(r["msg"])
            )
            for r in rows
        ]

    async def _count(self, sql: str, what: str, time_range: TimeRange) -> int:
        async with self._limit:
            rows = await self._source.query_rows(sql, what, _COUNT_KINDS, time_range, limit=1)
        return sum(int(r["n"] or 0) for r in rows)


def _whole_range(process: ProcessInfo) -> TimeRange:
    first = process.first_time_ns if process.first_time_ns is not None else process.start_time_ns or 0
    last = process.last_time_ns if process.last_time_ns is not None else first
    return TimeRange(first, max(first, last))


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
