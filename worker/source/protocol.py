"""The :class:`Source` protocol: what the pipeline needs from a telemetry service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import pyarrow as pa

from worker.model import ProcessInfo, ThreadInfo, TimeRange

__all__ = ["Source"]


class Source(Protocol):
    """Reads a process's telemetry as Arrow record batches.

    Every method is async; implementations run blocking client calls in worker threads.
    """

    async def process(self, process_id: str) -> ProcessInfo:
        """The process, with its first and last recorded times.

        Raises:
            InvalidRequest: ``process_id`` is not a UUID (no query is sent).
            ProcessNotFound: the service knows no such process.
        """
        ...

    async def process_and_threads(self, process_id: str) -> tuple[ProcessInfo, list[ThreadInfo] | None]:
        """The process and its threads for a trace of its whole life, in one round trip where the
        source can; threads None when they must be asked with :meth:`threads`.

        Raises:
            As :meth:`process`; TraceTooLarge: more threads than the source allows.
        """
        ...

    async def threads(self, process_id: str, time_range: TimeRange) -> list[ThreadInfo]:
        """The process's threads (streams tagged 'cpu'), ordered by stream id."""
        ...

    def thread_spans(
        self, threads: Sequence[ThreadInfo], time_range: TimeRange, *, process_id: str | None = None
    ) -> AsyncIterator[tuple[ThreadInfo, pa.RecordBatch | None]]:
        """Spans of each thread overlapping the range, thread after thread in the given order.

        Each thread's batches come in ascending ``begin`` order and are followed by one
        ``(thread, None)`` item that marks the end of that thread. Later threads are fetched ahead
        with bounded concurrency and bounded buffers. With ``process_id`` (the threads' process) a
        source may read every thread at once when the threads are small (their ``objects``).
        """
        ...

    def async_events(
        self, process_id: str, time_range: TimeRange, *, lookback_ns: int = 0
    ) -> AsyncIterator[pa.RecordBatch]:
        """The process's async span events with ``time`` inside the range, in time order.

        With ``lookback_ns > 0`` they are preceded by the begin events of the spans still open at the
        range begin that began at most ``lookback_ns`` before it (time order too).
        """
        ...

    def log_entries(self, process_id: str, time_range: TimeRange) -> AsyncIterator[pa.RecordBatch]:
        """The process's log entries with ``time`` inside the range, in time order."""
        ...

    def measures(self, process_id: str, time_range: TimeRange) -> AsyncIterator[pa.RecordBatch]:
        """The process's measures with ``time`` inside the range, in time order."""
        ...

    async def processes(self, limit: int = 100) -> list[ProcessInfo]:
        """The most recently started processes, newest first."""
        ...

    async def ping(self) -> None:
        """A cheap round trip to the service.

        Raises:
            SourceUnavailable: the service cannot be reached.
            Unauthenticated: the service refuses our credentials.
        """
        ...

    async def aclose(self) -> None:
        """Close every connection. The source cannot be used afterwards."""
        ...
