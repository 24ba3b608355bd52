"""Source → engine wiring, shared by the service's jobs and ``trace-worker generate``.

    async for chunk in generate_trace(source, TraceSpec(process_id, None, None, SpanTypes.BOTH)):
        sink.write(chunk)

Chunks come out as the engine completes them: the trace header right after the process and
thread list are known (before the first span query finishes), then spans thread after thread,
then async spans. Limits are enforced as the trace grows, never after the fact.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa

from contracts.request import SpanTypes
from worker.engine import DEFAULT_CHUNK_SIZE, TraceEncoder
from worker.engine.encoder import EncodeStats
from worker.errors import EmptyRange, InvalidRequest, RangeTooLong, TraceTooLarge
from worker.model import ProcessInfo, ThreadInfo, TimeRange
from worker.source import Source

__all__ = ["Cancelled", "Progress", "TraceSpec", "generate_trace", "life_begin", "resolve_range"]

#: Batches up to this many rows and bytes (dictionaries included) are encoded on the event loop;
#: larger ones on the shared encoder pool (:class:`_Serial`), so that no batch the source sends (a
#: million rows, a huge dictionary, a deep mis-nesting to repair) holds the loop for long. Below
#: that, the hop costs more than it spares: with the loop and an encoder thread taking the GIL in
#: turns (every numpy call releases it), a small job's worker CPU was ~15% higher with 1,024 than
#: with every call inline, and 26-28 ms with 4,096 (its whole threads, 11k rows, went to the pool)
#: against 21-23 ms with 16,384 (`bench_service --small-only`, interleaved). The longest inline call
#: at 16,384 is ~6 ms on the devserver's processes (small's ``add_threads``, wide's ``finish``);
#: contrived batches under both bounds take longer (16k distinct names ~14 ms, spans nested 9,000
#: levels deep ~64 ms), still well under a heartbeat or a cancel poll.
_INLINE_ROWS = 16_384
_INLINE_BYTES = 1024 * 1024
#: Rows each thread of an ``add_threads`` group counts toward ``_INLINE_ROWS``: the engine pays
#: ~0.2 ms per thread whatever its rows (16,384 rows in 4,096 threads of 4 rows, 0.7 MiB: ~0.8 s
#: on the loop; 64 threads of 256: ~25 ms), so a group inline has at most ~30 threads (the small
#: process's 5 threads and 11k rows stay inline).
_INLINE_THREAD_ROWS = 512
#: Rows of whole threads held and handed to the engine in one call: below one canonical batch, so
#: each thread of the group is one (``TraceEncoder.add_threads``); a thread that outgrows it streams.
_GROUP_ROWS = 1 << 16
#: ``should_stop`` is awaited between batches, at most this often (it may be a Redis round trip).
_STOP_CHECK_S = 0.2
#: Engine calls queued on the encoder pool beyond the one whose result is awaited: the pool goes
#: from one batch straight to the next instead of idling while the event loop
#: hands its chunks on and fetches the next batch (each batch's results are still handled in order).
_LOOKAHEAD = 1


class Cancelled(Exception):
    """``should_stop`` asked the generation to stop."""


@dataclass(frozen=True)
class TraceSpec:
    """What to generate.

    Attributes:
        process_id: Micromegas process id (a UUID).
        begin_ns: Start of the range (epoch ns); None: the process's first recorded time.
        end_ns: End of the range (epoch ns); None: the process's last recorded time.
        span_types: Thread spans, async spans or both.
        chunk_size: Target size of the chunks the engine cuts.
        max_spans: Fail with :class:`TraceTooLarge` beyond this many spans.
        max_bytes: Fail with :class:`TraceTooLarge` beyond this many trace bytes.
        max_range_ns: Fail with :class:`RangeTooLong` for a longer range.
        async_lookback_ns: How far before ``begin_ns`` to look for async spans still open at it
            (one more query; 0: none). Not used when the range begins with the process.
        logs: Add the process's log entries as log messages.
        metrics: Add the process's measures as counter tracks.
        max_log_entries: Fail with :class:`TraceTooLarge` beyond this many log entries.
        max_measures: Fail with :class:`TraceTooLarge` beyond this many measures.
    """

    process_id: str
    begin_ns: int | None
    end_ns: int | None
    span_types: SpanTypes
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_spans: int | None = None
    max_bytes: int | None = None
    max_range_ns: int | None = None
    async_lookback_ns: int = 0
    logs: bool = False
    metrics: bool = False
    max_log_entries: int | None = None
    max_measures: int | None = None


@dataclass
class Progress:
    """Where a generation stands; ``percent`` counts finished threads (and the async phase)."""

    phase: str
    spans: int
    bytes: int
    threads_done: int
    threads_total: int
    percent: float
    #: TracePackets encoded so far (final once ``phase`` is "done").
    packets: int = 0
    #: The range the trace covers (epoch ns), resolved from the process when the generation began.
    begin_ns: int | None = None
    end_ns: int | None = None


def life_begin(process: ProcessInfo) -> int | None:
    """When the process's data begins: the earlier of its start time and its first recorded time."""
    known = [t for t in (process.start_time_ns, process.first_time_ns) if t is not None]
    return min(known) if known else None


def resolve_range(spec: TraceSpec, process: ProcessInfo) -> TimeRange:
    """The range to trace: the requested ends, or the process's whole life (from its start or first
    recorded time, whichever is earlier, to its last recorded time).

    Raises:
        EmptyRange: an end is missing and the process has no recorded data to default it from.
        InvalidRequest: the range begins after it ends.
        RangeTooLong: the range is longer than ``spec.max_range_ns``.
    """
    begin = spec.begin_ns if spec.begin_ns is not None else life_begin(process)
    end = spec.end_ns if spec.end_ns is not None else process.last_time_ns
    if begin is None or end is None:
        raise EmptyRange(f"process {process.process_id} has no recorded data to take a time range from")
    if begin > end:
        raise InvalidRequest(f"the time range begins after it ends ({begin} > {end} ns)")
    if spec.max_range_ns is not None and end - begin > spec.max_range_ns:
        raise RangeTooLong(
            f"the time range lasts {(end - begin) / 1e9:.0f} s; the limit is {spec.max_range_ns / 1e9:.0f} s"
        )
    return TimeRange(begin, end)


#: Threads of the process-wide encoder pool: every generation's engine calls run there, one call
#: per generation at a time. Shared so that a job does not start (and a small job mostly pay for)
#: a thread of its own.
_ENCODER_THREADS = 8
_encoder_pool: ThreadPoolExecutor | None = None
_encoder_pool_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _encoder_pool  # noqa: PLW0603 - one lazily made pool per process
    with _encoder_pool_lock:
        if _encoder_pool is None:
            _encoder_pool = ThreadPoolExecutor(max_workers=_ENCODER_THREADS, thread_name_prefix="encoder")
        return _encoder_pool


class _Serial:
    """One generation's engine calls on the shared encoder pool, one at a time, in submission order
    (the encoder is not thread-safe): a call is handed to the pool when the one before it is done.

    :meth:`submit` gives a future that is cancelled (never run) by :meth:`cancel` if not yet started.
    """

    def __init__(self) -> None:
        self._tail: Future[tuple[list[bytes], EncodeStats]] | None = None
        self._queued: list[Future[tuple[list[bytes], EncodeStats]]] = []

    def submit(
        self, fn: Callable[..., tuple[list[bytes], EncodeStats]], *args: object
    ) -> Future[tuple[list[bytes], EncodeStats]]:
        result: Future[tuple[list[bytes], EncodeStats]] = Future()

        def run() -> None:
            if not result.set_running_or_notify_cancel():
                return
            try:
                result.set_result(fn(*args))
            except BaseException as exc:
                result.set_exception(exc)

        def start(_: object = None) -> None:
            try:
                _pool().submit(run)
            except RuntimeError as exc:  # the pool is shut down (interpreter exit)
                if result.set_running_or_notify_cancel():
                    result.set_exception(exc)

        self._queued = [f for f in self._queued if not f.done()]
        self._queued.append(result)
        previous, self._tail = self._tail, result
        if previous is None:
            start()
        else:
            previous.add_done_callback(start)  # at once when it is done already
        return result

    def cancel(self) -> None:
        """Cancel the calls not started yet (a running one finishes, its result unused)."""
        # Last first: a cancelled call's done-callback hands the next one to the pool, which must
        # find it cancelled already (else it could run beside the call still running).
        for queued in reversed(self._queued):
            queued.cancel()
        self._queued.clear()


class _Run:
    """State of one generation: the encoder, counters, limits and callbacks."""

    def __init__(  # noqa: PLR0917 - one private call site
        self,
        spec: TraceSpec,
        encoder: TraceEncoder,
        threads_total: int,
        on_progress: Callable[[Progress], None] | None,
        should_stop: Callable[[], Awaitable[bool]] | None,
        time_range: TimeRange,
    ) -> None:
        self.spec = spec
        self.time_range = time_range
        self.encoder = encoder
        self.threads_total = threads_total
        self.threads_done = 0
        self.async_done = False
        self.extra_done = 0
        self.on_progress = on_progress
        self.should_stop = should_stop
        self.next_stop_check = 0.0
        self.phase = "start"
        #: The encoder's totals as of the last engine call handled (the encoder thread may be a
        #: call ahead, so the loop never reads the live encoder while that thread runs).
        self.stats: EncodeStats = copy.copy(encoder.stats)
        #: Engine calls running or queued on the encoder pool, oldest first.
        self._pending: deque[asyncio.Future[tuple[list[bytes], EncodeStats]]] = deque()
        self._serial: _Serial | None = None

    @property
    def spans(self) -> int:
        return int(self.stats.thread_spans + self.stats.async_spans)

    def report(self, phase: str | None = None) -> None:
        if phase is not None:
            self.phase = phase
        if self.on_progress is None:
            return
        steps = self.threads_total + (1 if self.spec.span_types.async_ else 0)
        steps += int(self.spec.logs) + int(self.spec.metrics)
        done = self.threads_done + (1 if self.async_done else 0) + self.extra_done
        percent = 100.0 if self.phase == "done" else (99.0 * done / steps if steps else 0.0)
        self.on_progress(
            Progress(
                self.phase,
                self.spans,
                int(self.stats.bytes),
                self.threads_done,
                self.threads_total,
                percent,
                int(self.stats.packets),
                self.time_range.begin_ns,
                self.time_range.end_ns,
            )
        )

    def check_limits(self) -> None:
        spec = self.spec
        stats = self.stats
        # Async spans still open are held in memory: they count too.
        held = self.spans + int(stats.open_async_spans)
        if spec.max_spans is not None and held > spec.max_spans:
            raise TraceTooLarge(f"the trace has more than {spec.max_spans} spans (open async spans included)")
        if spec.max_bytes is not None and stats.bytes > spec.max_bytes:
            raise TraceTooLarge(f"the trace is larger than {spec.max_bytes} bytes")
        if spec.max_log_entries is not None and stats.log_entries > spec.max_log_entries:
            raise TraceTooLarge(
                f"the range holds more than {spec.max_log_entries} log entries; narrow the range "
                "or leave logs out"
            )
        if spec.max_measures is not None and stats.measures > spec.max_measures:
            raise TraceTooLarge(
                f"the range holds more than {spec.max_measures} measures; narrow the range "
                "or leave metrics out"
            )

    async def check_stop(self) -> None:
        if self.should_stop is None:
            return
        now = time.monotonic()
        if now < self.next_stop_check:
            return
        self.next_stop_check = now + _STOP_CHECK_S
        if await self.should_stop():
            raise Cancelled("generation cancelled")

    def _engine(
        self, method: Callable[..., list[bytes]], args: tuple[object, ...]
    ) -> tuple[list[bytes], EncodeStats]:
        # Runs where the call runs: the totals are copied before the next call can change them.
        return method(*args), copy.copy(self.encoder.stats)

    async def push(
        self,
        method: Callable[..., list[bytes]],
        *args: object,
        rows: int = 0,
        held: Callable[[], int] | None = None,
        batch: pa.RecordBatch | None = None,
    ) -> list[list[bytes]]:
        """Start an engine call; the chunks of each call now due (this one or earlier ones), in order.

        Inline when nothing is queued and the call is small (``rows`` plus the ``held()`` rows the
        encoder keeps back, ``batch``'s buffers, dictionaries included); otherwise queued on the
        encoder pool, which runs calls one at a time in order, up to ``_LOOKAHEAD`` calls ahead
        of the one awaited here.
        """
        if not self._pending and self._small(rows, held, batch):
            chunks, self.stats = self._engine(method, args)
            return [chunks]
        if self._serial is None:
            self._serial = _Serial()
        self._pending.append(asyncio.wrap_future(self._serial.submit(self._engine, method, args)))
        due = []
        while len(self._pending) > _LOOKAHEAD or (self._pending and self._pending[0].done()):
            due.append(await self._next())
        return due

    async def drain(self) -> list[list[bytes]]:
        """The chunks of every queued engine call, in order (the encoder is idle afterwards)."""
        return [await self._next() for _ in range(len(self._pending))]

    async def call(self, method: Callable[..., list[bytes]], *args: object) -> list[bytes]:
        """The encoder's last call (``finish``), once the queued ones are done: on the event loop
        when what it encodes is small (few async events held for canonical order and async spans
        still open, no log entries or measures held: a message may be 32 KiB), else on the pool."""
        due = await self.drain()
        encoder = self.encoder

        def held() -> int:
            if encoder.pending_view_rows():
                return _INLINE_ROWS + 1
            return encoder.pending_rows() + int(encoder.stats.open_async_spans)

        due += await self.push(method, *args, held=held)
        due += await self.drain()
        return [chunk for chunks in due for chunk in chunks]

    async def _next(self) -> list[bytes]:
        chunks, self.stats = await self._pending[0]
        self._pending.popleft()
        return chunks

    @staticmethod
    def _small(rows: int, held: Callable[[], int] | None, batch: pa.RecordBatch | None) -> bool:
        # ``held`` reads the encoder: only called when no engine call runs in its thread.
        if rows + (held() if held is not None else 0) > _INLINE_ROWS:
            return False
        return batch is None or batch.get_total_buffer_size() <= _INLINE_BYTES

    def close(self) -> None:
        """Drop queued engine calls (one running finishes in its thread, its result unused)."""
        for pending in self._pending:
            pending.cancel()
        self._pending.clear()
        if self._serial is not None:
            self._serial.cancel()

    async def after_batch(self) -> None:
        self.check_limits()
        self.report()
        await self.check_stop()


async def generate_trace(
    source: Source,
    spec: TraceSpec,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncIterator[bytes]:
    """The Perfetto trace of ``spec``, as chunks, while the data streams in.

    Args:
        source: Where the telemetry comes from.
        spec: The process, range, span types and limits.
        on_progress: Called after every batch and at each phase change.
        should_stop: Awaited between batches (at most every 0.2 s); True stops the generation.

    Raises:
        InvalidRequest: bad process id or range (before any query for an id).
        ProcessNotFound, EmptyRange, RangeTooLong, TraceTooLarge: as their names say. EmptyRange
            comes after the header chunks when the range turns out to hold no span.
        Cancelled: ``should_stop`` returned True.
        SourceUnavailable, SourceBroken, QueryRejected, Unauthenticated, BadSourceData: from the source.
    """
    # Threads give log entries of a thread stream that thread's track.
    want_threads = spec.span_types.thread or spec.logs
    threads: list[ThreadInfo] | None = None
    if want_threads and spec.begin_ns is None and spec.end_ns is None:
        # The whole life: the thread list does not depend on the process's answer (one round trip).
        process, threads = await source.process_and_threads(spec.process_id)
    else:
        process = await source.process(spec.process_id)
    time_range = resolve_range(spec, process)
    if threads is None:
        threads = await source.threads(spec.process_id, time_range) if want_threads else []
    encoder = TraceEncoder(
        process,
        threads,
        span_types=spec.span_types,
        time_range=time_range,
        chunk_size=spec.chunk_size,
        logs=spec.logs,
        metrics=spec.metrics,
    )
    span_threads = threads if spec.span_types.thread else []
    run = _Run(spec, encoder, len(span_threads), on_progress, should_stop, time_range)
    try:
        async for chunk in _generate(run, source, process, span_threads):
            yield chunk
    finally:
        run.close()


async def _generate(
    run: _Run, source: Source, process: ProcessInfo, span_threads: list[ThreadInfo]
) -> AsyncIterator[bytes]:
    spec, encoder, time_range = run.spec, run.encoder, run.time_range
    run.report("start")
    # The header goes out before the first span query answers: requesters see the trace start.
    for chunk in encoder.start() + encoder.flush():
        yield chunk

    if span_threads:
        run.report("thread_spans")
        spans = source.thread_spans(span_threads, time_range, process_id=spec.process_id)
        # Whole small threads are held (up to _GROUP_ROWS rows in all) and handed to the engine
        # together (``add_threads``: its per-batch costs paid once per group); a thread that grows
        # past that streams batch by batch, as large ones must.
        held: list[tuple[str, list[pa.RecordBatch]]] = []
        held_rows = 0
        current: list[pa.RecordBatch] = []
        current_rows = 0
        streaming = False
        try:
            async for thread, batch in spans:
                sid = thread.stream_id
                due: list[list[bytes]] = []
                if batch is None:
                    if streaming:
                        due = await _thread_item(run, sid, None)
                        streaming = False
                    else:
                        held.append((sid, current))
                        held_rows += current_rows
                        current, current_rows = [], 0
                        if held_rows >= _GROUP_ROWS:
                            due = await _thread_group(run, held, held_rows)
                            held, held_rows = [], 0
                else:
                    grown = current_rows + batch.num_rows
                    if not streaming and held and held_rows + grown >= _GROUP_ROWS:
                        due = await _thread_group(run, held, held_rows)
                        held, held_rows = [], 0
                    if not streaming and grown < _GROUP_ROWS:
                        current.append(batch)
                        current_rows = grown
                    else:
                        if not streaming:
                            for early in current:
                                due += await _thread_item(run, sid, early)
                            current, current_rows, streaming = [], 0, True
                        due += await _thread_item(run, sid, batch)
                for chunks in due:
                    for chunk in chunks:
                        yield chunk
                    await run.after_batch()
            due = await _thread_group(run, held, held_rows) if held else []
            for chunks in due + await run.drain():
                for chunk in chunks:
                    yield chunk
                await run.after_batch()
        finally:
            await _close(spans)

    if spec.span_types.async_:
        run.report("async_spans")
        first = life_begin(process)
        lookback = spec.async_lookback_ns if first is None or time_range.begin_ns > first else 0
        events = source.async_events(spec.process_id, time_range, lookback_ns=lookback)
        try:
            async for batch in events:
                due = await run.push(
                    encoder.add_async_events,
                    batch,
                    rows=batch.num_rows,
                    held=encoder.pending_rows,
                    batch=batch,
                )
                for chunks in due:
                    for chunk in chunks:
                        yield chunk
                    await run.after_batch()
            for chunks in await run.drain():
                for chunk in chunks:
                    yield chunk
                await run.after_batch()
        finally:
            await _close(events)
        run.async_done = True

    if spec.logs:
        async for chunk in _view(run, "log_entries", source.log_entries(spec.process_id, time_range)):
            yield chunk
    if spec.metrics:
        async for chunk in _view(run, "measures", source.measures(spec.process_id, time_range)):
            yield chunk

    run.report("finishing")
    for chunk in await run.call(encoder.finish):
        yield chunk
    run.check_limits()
    stats = encoder.stats
    if run.spans == 0 and stats.log_entries == 0 and stats.measures == 0:
        kinds = "thread or async" if spec.span_types is SpanTypes.BOTH else spec.span_types.value
        extra = "".join(
            f", no {what}"
            for what, wanted in (("log entries", spec.logs), ("measures", spec.metrics))
            if wanted
        )
        raise EmptyRange(f"no {kinds} spans{extra} of process {process.process_id} in the range")
    run.report("done")


async def _view(run: _Run, phase: str, batches: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[bytes]:
    """One process-wide view (log entries or measures) through the encoder, batch by batch."""
    run.report(phase)
    encoder = run.encoder
    method = encoder.add_log_entries if phase == "log_entries" else encoder.add_measures
    try:
        async for batch in batches:
            due = await run.push(
                method, batch, rows=batch.num_rows, held=encoder.pending_view_rows, batch=batch
            )
            for chunks in due:
                for chunk in chunks:
                    yield chunk
                await run.after_batch()
        for chunks in await run.drain():
            for chunk in chunks:
                yield chunk
            await run.after_batch()
    finally:
        await _close(batches)
    run.extra_done += 1


async def _thread_group(
    run: _Run, threads: list[tuple[str, list[pa.RecordBatch]]], rows: int
) -> list[list[bytes]]:
    """Hand whole threads to the engine in one call (see ``TraceEncoder.add_threads``)."""
    run.threads_done += len(threads)
    size = sum(b.get_total_buffer_size() for _, batches in threads for b in batches)
    # Inline only when small in rows (each thread counting for its fixed cost) and in bytes.
    weight = rows + _INLINE_THREAD_ROWS * len(threads)
    return await run.push(
        run.encoder.add_threads, threads, rows=weight if size <= _INLINE_BYTES else _INLINE_ROWS + 1
    )


async def _thread_item(run: _Run, stream_id: str, batch: pa.RecordBatch | None) -> list[list[bytes]]:
    encoder = run.encoder

    def held() -> int:
        return encoder.pending_rows(stream_id)

    if batch is None:
        run.threads_done += 1
        return await run.push(encoder.end_thread, stream_id, held=held)
    return await run.push(
        encoder.add_thread_spans, stream_id, batch, rows=batch.num_rows, held=held, batch=batch
    )


async def _close(iterator: AsyncIterator[object]) -> None:
    """Close an async generator now (not at garbage collection) so its fetches and connections end."""
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()
