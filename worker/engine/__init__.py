"""The trace engine: Arrow record batches in, Perfetto trace bytes out, in whole-packet chunks.

Pure: no I/O, no settings; imports numpy, pyarrow, xxhash and the shared value types only.

Example:
    >>> from worker.engine import encode  # doctest: +SKIP
    >>> with open("trace.pftrace", "wb") as f:  # doctest: +SKIP
    ...     for chunk in encode(process, threads, thread_batches, async_batches,
    ...                         span_types=SpanTypes.BOTH, time_range=rng):
    ...         f.write(chunk)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import pyarrow as pa

from contracts.request import SpanTypes
from worker.engine.encoder import DEFAULT_CHUNK_SIZE, EncodeStats, TraceEncoder
from worker.model import ProcessInfo, ThreadInfo, TimeRange

__all__ = ["DEFAULT_CHUNK_SIZE", "EncodeStats", "TraceEncoder", "encode"]


def encode(
    process: ProcessInfo,
    threads: Sequence[ThreadInfo],
    thread_batches: Iterable[tuple[str, pa.RecordBatch]],
    async_batches: Iterable[pa.RecordBatch],
    *,
    span_types: SpanTypes,
    time_range: TimeRange,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> Iterator[bytes]:
    """Encode a whole trace; yields chunks as they complete (see :class:`TraceEncoder`).

    Args:
        process: the traced process.
        threads: its threads; each gets a track (when thread spans are wanted).
        thread_batches: (stream_id, batch) pairs, one thread's batches after another.
        async_batches: the process's async events, in time order.
        span_types: thread, async or both.
        time_range: the requested range (cut async spans end or begin at its edges).
        chunk_size: target chunk size in bytes.
    """
    enc = TraceEncoder(process, threads, span_types=span_types, time_range=time_range, chunk_size=chunk_size)
    yield from enc.start()
    current: str | None = None
    for stream_id, batch in thread_batches:
        if current is not None and current != stream_id:
            yield from enc.end_thread(current)
        current = stream_id
        yield from enc.add_thread_spans(stream_id, batch)
    if current is not None:
        yield from enc.end_thread(current)
    for batch in async_batches:
        yield from enc.add_async_events(batch)
    yield from enc.finish()
