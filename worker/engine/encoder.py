"""TraceEncoder: Arrow batches in, whole-packet trace chunks out, streaming.

File layout: the clock packet (clears incremental state), the process track, the thread tracks (if
thread spans are wanted), the async group track (if async spans are wanted); then each thread's events,
thread after thread; then the async spans. Interned data is written in its own packets right before
the events that first use it. Output depends only on the input (no clocks, no dict-order effects).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from contracts.request import SpanTypes
from worker.engine.async_spans import AsyncBatch, AsyncState
from worker.engine.canonical import (
    ASYNC_ORDER,
    CANONICAL_ROWS,
    THREAD_ORDER,
    Canonicalizer,
    canonical_streams,
)
from worker.engine.chunks import Chunker
from worker.engine.counters import counter_descriptor, counter_rows, counter_uuid
from worker.engine.inputs import check_string_column, column, int_column, string_column, time_column
from worker.engine.interning import Interner
from worker.engine.logs import LogBatch, clean_bodies, is_text, log_rows, priorities
from worker.engine.lookback import Lookback
from worker.engine.packing import realtime_defaults_packet, reset_packet
from worker.engine.rows import CUT_BEGIN, CUT_END, thread_blocks_rows, thread_event_rows
from worker.engine.span_rows import annotation_names_packet
from worker.engine.thread_spans import TRACK_DEPTH, Events, ThreadState
from worker.engine.tracks import (
    ThreadTrack,
    async_group_uuid,
    clock_packet,
    depth_track_descriptor,
    depth_track_uuid,
    descriptor_packet,
    group_descriptor,
    log_track,
    pid_of,
    process_descriptor,
    process_uuid,
    thread_descriptor,
    thread_tracks,
    xxh64,
)
from worker.engine.wire import varint_width
from worker.errors import BadSourceData
from worker.model import ProcessInfo, ThreadInfo, TimeRange

__all__ = ["DEFAULT_CHUNK_SIZE", "EncodeStats", "TraceEncoder"]

#: Default chunk size: just under 1 MiB, which wastes no Redis memory (redis-faststream.md §12).
DEFAULT_CHUNK_SIZE = 1024 * 1024 - 4096
#: Rows encoded at once: bounds the temporary matrices (~90 B per span) and stays cache friendly.
_SUB_BATCH = 1 << 16
I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
_T = TypeVar("_T", bound=np.generic)


@dataclass
class EncodeStats:
    """Running totals, readable at any time.

    ``packets`` and ``bytes`` count what has been encoded (including the part of a chunk not yet
    returned); ``chunks`` counts returned chunks. ``cut_spans`` are async spans whose begin or end was
    made up at the range edge; ``clamped_spans`` are spans whose timestamps were adjusted to keep the
    slices strictly nested (bad source data); ``dropped_events`` are async events that could not be used
    (unknown event type, null span id or time, a second begin of an open span).
    """

    thread_spans: int = 0
    async_spans: int = 0
    cut_spans: int = 0
    packets: int = 0
    bytes: int = 0
    chunks: int = 0
    clamped_spans: int = 0
    dropped_events: int = 0
    #: Async spans begun and not yet ended: held in memory until their end or the trace's end,
    #: so they count against ``max_spans`` like written ones.
    open_async_spans: int = 0
    #: Log entries written as log messages; bodies cut at MAX_BODY_CHARS; entries dropped (no time,
    #: outside the range).
    log_entries: int = 0
    truncated_logs: int = 0
    dropped_logs: int = 0
    #: Measures written as counter values; counter tracks; measures dropped (no time or value,
    #: outside the range).
    measures: int = 0
    counter_tracks: int = 0
    dropped_measures: int = 0


class TraceEncoder:
    """Streaming Perfetto trace writer for one process.

    Example:
        >>> enc = TraceEncoder(process, threads, span_types=SpanTypes.BOTH, time_range=rng)  # doctest: +SKIP
        >>> chunks = enc.start() + enc.add_thread_spans(sid, batch) + enc.end_thread(sid)  # doctest: +SKIP
        >>> chunks += enc.add_async_events(events) + enc.finish()  # doctest: +SKIP

    Each call returns the chunks that became complete; their concatenation is the trace file.
    """

    def __init__(
        self,
        process: ProcessInfo,
        threads: Sequence[ThreadInfo],
        *,
        span_types: SpanTypes,
        time_range: TimeRange,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        logs: bool = False,
        metrics: bool = False,
    ) -> None:
        self._process = process
        self._logs = logs
        self._metrics = metrics
        self._next_body_iid = 1
        self._measure_strings: dict[int, str] = {}
        self._counter_uuid: dict[tuple[int, int], int] = {}
        #: The hashes in _measure_strings, sorted (see _pairs).
        self._known = np.zeros(0, dtype=np.int64)
        self._log_canon = Canonicalizer(LOG_ORDER, "log_entries")
        self._measure_canon = Canonicalizer(MEASURE_ORDER, "measures")
        self._span_types = SpanTypes(span_types)
        self._range = time_range
        self._chunker = Chunker(chunk_size)
        self._interner = Interner()
        self._stats = EncodeStats()
        self._proc_uuid = process_uuid(process)
        self._tracks = thread_tracks(threads)
        self._track_of = {t.stream_id: t for t in self._tracks}
        #: Tracks of log streams that are not threads (see tracks.log_track), by stream id.
        self._log_tracks: dict[str, ThreadTrack] = {}
        self._used_tids = {t.tid for t in self._tracks}
        self._threads: dict[str, ThreadState] = {}
        #: Per thread track uuid, the uuids of its depth-overflow tracks declared so far (index = band).
        self._depth_tracks: dict[int, list[int]] = {}
        self._current: str | None = None
        #: Where the incremental clock restarts: the clock packet's snapshot time.
        self._t0 = max(time_range.begin_ns, 0)
        #: Whether the sequence's defaults are REALTIME (absolute timestamps, as after the clock packet)
        #: rather than the incremental clock of the span blocks.
        self._realtime = True
        #: The thread track whose events the incremental clock currently times (None: a reset is due
        #: before the next thread events), and the clock's running value.
        self._run: int | None = None
        self._base = self._t0
        reserved = [0, self._proc_uuid, async_group_uuid(self._proc_uuid)] + [t.uuid for t in self._tracks]
        self._async = AsyncState(
            salt=self._proc_uuid,
            group_uuid=async_group_uuid(self._proc_uuid),
            reserved=np.array(sorted(set(reserved)), dtype=np.uint64),
            range_begin=_data_begin(process, time_range),
            range_end=time_range.end_ns,
            t0=self._t0,
        )
        self._thread_canon: dict[str, Canonicalizer] = {}
        self._async_canon = Canonicalizer(ASYNC_ORDER, "async_events", fold_case=("event_type",))
        self._lookback = Lookback(time_range.begin_ns)
        #: Latest time seen in the data (open async spans are not drawn past the process's data).
        self._data_last = -1
        self._thread_cut = 0
        self._started = False
        self._finished = False
        self._dropped = 0

    @property
    def stats(self) -> EncodeStats:
        self._stats.async_spans = self._async.spans
        self._stats.open_async_spans = len(self._async.sid)
        self._stats.cut_spans = self._async.cut + self._thread_cut
        self._stats.clamped_spans = sum(s.clamped for s in self._threads.values()) + self._async.clamped
        self._stats.dropped_events = self._async.dropped + self._dropped
        self._stats.chunks = self._chunker.chunks
        return self._stats

    # -- public steps -------------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """Header packets: clock, process track, thread tracks, async group track, annotation names."""
        self._check_open()
        if self._started:
            return []
        self._started = True
        out = self._packet(clock_packet(self._range))
        out += self._packet(process_descriptor(self._process, self._range))
        if self._span_types.thread or self._logs:
            pid = pid_of(self._proc_uuid)
            for track in self._tracks:
                out += self._packet(thread_descriptor(track, pid))
        if self._span_types.async_:
            out += self._packet(group_descriptor(self._proc_uuid))
        out += self._packet(annotation_names_packet())
        return out

    def add_thread_spans(self, stream_id: str, batch: pa.RecordBatch) -> list[bytes]:
        """Take a batch of one thread's spans (call-tree preorder, ascending begin).

        Rows are put in canonical order and re-cut first (:mod:`worker.engine.canonical`), so the
        output does not depend on the order of rows with equal ``begin`` nor on batch boundaries;
        the spans are encoded once a canonical batch is complete or the thread ends.
        """
        out = self.start()
        if stream_id not in self._track_of:
            raise ValueError(f"thread spans for stream {stream_id!r}, which is not among the threads")
        _check_thread_columns(batch)
        if not self._span_types.thread or batch.num_rows == 0:
            return out
        if self._current is not None and self._current != stream_id:
            out += self.end_thread(self._current)
        self._current = stream_id
        canon = self._thread_canon.setdefault(stream_id, Canonicalizer(THREAD_ORDER, "thread_spans"))
        for part in canon.push(batch):
            out += self._thread_batch(stream_id, part)
        return out

    def add_threads(self, threads: Sequence[tuple[str, Sequence[pa.RecordBatch]]]) -> list[bytes]:
        """Take several whole threads at once: the same bytes as ``add_thread_spans`` of each batch
        and ``end_thread`` of each thread, in the order given, for less work.

        Threads of fewer than ``CANONICAL_ROWS`` rows (one canonical batch) are encoded together:
        their columns converted and their strings interned in one pass over all of their rows, in
        thread order (so every iid is the one the thread-by-thread path gives it, and each thread's
        new interned entries still go right before its events). A per-batch cost that a thread of a
        small process pays once per ~2,000 spans is then paid once per call.
        """
        out = self.start()
        for stream_id, batches in threads:
            if stream_id not in self._track_of:
                raise ValueError(f"thread spans for stream {stream_id!r}, which is not among the threads")
            for batch in batches:
                _check_thread_columns(batch)
        if not self._span_types.thread:
            return out
        if self._current is not None:
            out += self.end_thread(self._current)
        group: list[tuple[str, Sequence[pa.RecordBatch]]] = []
        for stream_id, batches in threads:
            rows = sum(b.num_rows for b in batches)
            if rows == 0 and stream_id not in self._threads and stream_id not in self._thread_canon:
                continue  # (nothing to write: as add_thread_spans and end_thread)
            if 0 < rows < CANONICAL_ROWS and stream_id not in self._thread_canon:
                group.append((stream_id, batches))
                continue
            out += self._thread_group(group)
            group = []
            for batch in batches:
                out += self.add_thread_spans(stream_id, batch)
            out += self.end_thread(stream_id)
        return out + self._thread_group(group)

    def _thread_group(self, group: Sequence[tuple[str, Sequence[pa.RecordBatch]]]) -> list[bytes]:
        """Encode whole threads of fewer than CANONICAL_ROWS rows each (not empty), columns and
        interning at once."""
        if not group:
            return []
        joint = canonical_streams([batches for _, batches in group], THREAD_ORDER, "thread_spans")
        if joint is not None:
            table, count_list = joint
        else:  # (mixed column types, e.g. plain and dictionary strings: canonical one by one)
            parts = []
            for _, batches in group:
                canon = Canonicalizer(THREAD_ORDER, "thread_spans")
                for batch in batches:
                    canon.push(batch)
                parts += canon.flush()  # (one part: fewer rows)
            if any(not p.schema.equals(parts[0].schema) for p in parts[1:]):
                return [
                    c
                    for (stream_id, _), part in zip(group, parts, strict=True)
                    for c in self._thread_batch(stream_id, part, last=True)
                ]
            table = pa.Table.from_batches(parts)
            count_list = [p.num_rows for p in parts]
        what = "thread_spans"
        # Canonical batches hold int64 times and integers (canonical._normal).
        begin, end, depth, line = (
            _int64s(table.column(name), null)
            for name, null in (("begin", 0), ("end", -1), ("depth", 0), ("line", 0))
        )
        begin, end, cut = self._clip_thread(begin, end)
        if len(end):
            self._data_last = max(self._data_last, int(end.max()))
        interner = self._interner
        name = interner.names_of_chunks(_string_chunks(table, "name", what))
        cat = interner.categories_of_chunks(_string_chunks(table, "target", what))
        loc = interner.locations_of_chunks(_string_chunks(table, "filename", what), line)
        counts = np.array(count_list, dtype=np.int64)
        stops = np.cumsum(counts)
        starts = stops - counts
        # Each thread's new entries: those below the largest iid its rows and earlier rows use (iids
        # are given in order of first use, so a later thread's new ones are above every earlier one).
        below = [np.maximum.accumulate(np.maximum.reduceat(iids, starts)) + 1 for iids in (name, cat, loc)]
        out: list[bytes] = []
        # Threads whose events make one plain block after a reset are written together (one rows
        # pass); any other thread is written alone, after those before it.
        pending: list[tuple[list[bytes], ThreadTrack, Events]] = []
        run = self._run
        for i, (stream_id, _) in enumerate(group):
            lo, hi = int(starts[i]), int(stops[i])
            packets = interner.take_packets((int(below[0][i]), int(below[1][i]), int(below[2][i])))
            track = self._track_of[stream_id]
            rows = slice(lo, hi)
            closed: tuple[Events, Events] | None = None  # the thread's events and closing ENDs
            if hi - lo <= _SUB_BATCH and run != track.uuid:
                state = self._threads.setdefault(stream_id, ThreadState())
                events = state.add(
                    begin[rows],
                    end[rows],
                    depth[rows],
                    name=name[rows],
                    cat=cat[rows],
                    loc=loc[rows],
                    cut=cut[rows],
                )
                closing = state.close()
                both = _joined(events, closing, self._t0)
                self._stats.thread_spans += hi - lo
                run = track.uuid
                if both is not None and both.band is None:
                    pending.append((packets, track, both))
                    continue
                closed = events, closing
            out += self._thread_blocks(pending)
            pending = []
            for packet in packets:
                out += self._packet(packet)
            if closed is not None:
                out += self._events(closed[0], track) + self._events(closed[1], track)
                continue
            out += self._thread_events(
                stream_id,
                begin[rows],
                end[rows],
                depth[rows],
                cut[rows],
                name=name[rows],
                cat=cat[rows],
                loc=loc[rows],
                last=True,
            )
            run = self._run
        return out + self._thread_blocks(pending) + self._interned()

    def _thread_blocks(self, blocks: Sequence[tuple[list[bytes], ThreadTrack, Events]]) -> list[bytes]:
        """Threads' interned packets and events, each thread's events one plain block after a reset
        (as :meth:`_events` writes them), the rows of all made in one pass when their widths agree."""
        if not blocks:
            return []
        rows = thread_blocks_rows(
            [(e.ts, e.kind, e.name, e.cat, e.loc, e.top) for _, _, e in blocks], self._t0
        )
        out: list[bytes] = []
        if rows is None:
            for packets, track, events in blocks:
                for packet in packets:
                    out += self._packet(packet)
                out += self._events(events, track)
            return out
        data, sizes = rows
        view = memoryview(data)
        at = 0
        first = 0
        for packets, track, events in blocks:
            for packet in packets:
                out += self._packet(packet)
            out += self._packet(reset_packet(self._t0, track.uuid))
            n = len(events.ts)
            length = int(sizes[first : first + n].sum())
            out += self._add(view[at : at + length], sizes[first : first + n])
            at += length
            first += n
            self._run, self._base = track.uuid, max(self._t0, int(events.ts.max()))
            self._realtime = False
        return out

    def _thread_batch(self, stream_id: str, batch: pa.RecordBatch, *, last: bool = False) -> list[bytes]:
        """Encode one canonical batch of a thread's spans (``last``: the thread's last, after which
        its open spans are closed)."""
        what = "thread_spans"
        begin, _ = time_column(batch, "begin", what, 0)
        end, _ = time_column(batch, "end", what, -1)
        depth = int_column(batch, "depth", what)
        line = int_column(batch, "line", what)
        assert depth is not None and line is not None
        begin, end, cut = self._clip_thread(begin, end)
        if len(end):
            self._data_last = max(self._data_last, int(end.max()))
        name = self._interner.names(string_column(batch, "name", what))
        cat = self._interner.categories(string_column(batch, "target", what))
        loc = self._interner.locations(string_column(batch, "filename", what), line)
        out = self._interned()
        return out + self._thread_events(
            stream_id, begin, end, depth, cut, name=name, cat=cat, loc=loc, last=last
        )

    def _thread_events(
        self,
        stream_id: str,
        begin: I64,
        end: I64,
        depth: I64,
        cut: U8,
        *,
        name: U64,
        cat: U64,
        loc: U64,
        last: bool,
    ) -> list[bytes]:
        """The events of a thread's spans (clipped, interned), closing its open spans if ``last``."""
        track = self._track_of[stream_id]
        state = self._threads.setdefault(stream_id, ThreadState())
        out: list[bytes] = []
        n = len(begin)
        for lo in range(0, n, _SUB_BATCH):
            hi = lo + _SUB_BATCH
            events = state.add(
                begin[lo:hi],
                end[lo:hi],
                depth[lo:hi],
                name=name[lo:hi],
                cat=cat[lo:hi],
                loc=loc[lo:hi],
                cut=cut[lo:hi],
            )
            if last and hi >= n:
                # The thread's last ENDs join the last block when that changes no byte (a block of its
                # own costs as much as thousands of rows).
                closing = state.close()
                both = _joined(events, closing, self._base if self._run == track.uuid else self._t0)
                if both is None:
                    out += self._events(events, track)
                    events = closing
                else:
                    events = both
            out += self._events(events, track)
        self._stats.thread_spans += n
        return out

    def _clip_thread(self, begin: I64, end: I64) -> tuple[I64, I64, U8]:
        """Spans clipped to the range; the cut code of each (CUT_BEGIN | CUT_END bits)."""
        lo, hi = self._range.begin_ns, self._range.end_ns
        cut = (begin < lo).view(np.uint8) * np.uint8(CUT_BEGIN) | (end > hi).view(np.uint8) * np.uint8(
            CUT_END
        )
        count = int(np.count_nonzero(cut))
        if not count:  # (the usual case: a range holding the whole thread)
            return begin, end, cut
        self._thread_cut += count
        return np.maximum(begin, lo), np.minimum(end, hi), cut

    def end_thread(self, stream_id: str) -> list[bytes]:
        """The thread has no more spans: encode what is held and close its open spans."""
        out = self.start()
        canon = self._thread_canon.pop(stream_id, None)
        parts = canon.flush() if canon is not None else []
        for i, part in enumerate(parts):
            out += self._thread_batch(stream_id, part, last=i == len(parts) - 1)
        state = self._threads.get(stream_id)
        if self._current == stream_id:
            self._current = None
        if state is None or parts:  # (closed with the last batch)
            return out
        return out + self._events(state.close(), self._track_of[stream_id])

    def pending_rows(self, stream_id: str | None = None) -> int:
        """Rows taken but not yet encoded: of a thread, or of the async events (None)."""
        canon = self._async_canon if stream_id is None else self._thread_canon.get(stream_id)
        return canon.pending_rows if canon is not None else 0

    def pending_view_rows(self) -> int:
        """Log entries and measures taken but not yet encoded (held for canonical order)."""
        return self._log_canon.pending_rows + self._measure_canon.pending_rows

    def add_async_events(self, batch: pa.RecordBatch) -> list[bytes]:
        """Take a batch of the process's async span events (time order).

        As for thread spans, rows are put in canonical order and re-cut before they are encoded.
        Events before the range (the look-back) only yield the spans still open at its begin
        (:mod:`worker.engine.lookback`), drawn from the range begin and marked cut.
        """
        out = self.start()
        _check_async_columns(batch)
        if not self._span_types.async_ or batch.num_rows == 0:
            return out
        if self._current is not None:
            out += self.end_thread(self._current)
        for part in self._async_canon.push(batch):
            for piece in self._lookback.split(part):
                out += self._async_batch(piece)
        return out

    def _async_batch(self, batch: pa.RecordBatch) -> list[bytes]:
        """Encode one canonical batch of async events."""
        what = "async_events"
        time, _ = time_column(batch, "time", what, 0)
        kinds = string_column(batch, "event_type", what)
        sid_col = column(batch, "span_id", what)
        span_id = int_column(batch, "span_id", what)
        parent_id = int_column(batch, "parent_span_id", what)
        line = int_column(batch, "line", what)
        assert span_id is not None and parent_id is not None and line is not None
        kind_values = [str(v).lower() if v is not None else "" for v in kinds.dictionary.to_pylist()]
        codes = np.array([1 if v == "begin" else 0 if v == "end" else 2 for v in kind_values] + [2])
        indices = kinds.indices
        idx = (indices.fill_null(len(kind_values)) if indices.null_count else indices).to_numpy(
            zero_copy_only=False
        )
        code = codes[idx.astype(np.intp, copy=False)]  # intp indices: numpy's fast gather
        valid = code != 2
        for col in (column(batch, "time", what), sid_col):
            if col.null_count:
                valid &= ~np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)
        every = bool(valid.all())  # the usual case: no gathers
        keep = np.flatnonzero(valid) if not every else None
        kept = len(code) if keep is None else len(keep)
        self._dropped += len(code) - kept
        if kept:
            self._data_last = max(self._data_last, int((time if keep is None else time[keep]).max()))
        name = self._interner.names(string_column(batch, "name", what))
        cat = self._interner.categories(string_column(batch, "target", what))
        loc = self._interner.locations(string_column(batch, "filename", what), line)
        if keep is not None:
            time, code, span_id, parent_id = time[keep], code[keep], span_id[keep], parent_id[keep]
            name, cat, loc = name[keep], cat[keep], loc[keep]
        out = self._interned()
        lo_ns = self._range.begin_ns
        for lo in range(0, kept, _SUB_BATCH):
            part = slice(lo, lo + _SUB_BATCH)
            t = time[part]
            blocks = self._async.add(
                AsyncBatch(
                    time=np.maximum(t, lo_ns),
                    is_begin=code[part] == 1,
                    span_id=span_id[part],
                    parent_id=parent_id[part],
                    name=name[part],
                    cat=cat[part],
                    loc=loc[part],
                    before=t < lo_ns,
                )
            )
            for data, sizes in blocks:
                out += self._timed(data, sizes)
        return out

    def add_log_entries(self, batch: pa.RecordBatch) -> list[bytes]:
        """Encode a batch of the process's log entries as log messages (see ``worker.engine.logs``).

        Columns: ``time``, ``level``, ``msg``, ``target`` and ``stream_id``: an entry of a thread's
        stream goes on that thread's track, any other on a thread track of its stream's own
        (``tracks.log_track``: Perfetto lists log messages in its log panel only from threads).
        Rows are put in canonical order first (:data:`LOG_ORDER`), so the bytes do not depend on
        the server's batching or order of ties. Entries without a time or outside the range are
        dropped (``stats.dropped_logs``).
        """
        out = self.start()
        what = "log_entries"
        time_column(batch, "time", what, -1)
        int_column(batch, "level", what)
        string_column(batch, "target", what)
        msg = column(batch, "msg", what)
        string_column(batch, "stream_id", what)
        if not is_text(msg.type):
            raise BadSourceData(f"{what} column 'msg' must be strings, got {msg.type}")
        if not self._logs or batch.num_rows == 0:
            return out
        if self._current is not None:
            out += self.end_thread(self._current)
        for part in self._log_canon.push(batch):
            out += self._log_batch(part)
        return out

    def _log_batch(self, batch: pa.RecordBatch) -> list[bytes]:
        """Encode one canonical batch of log entries."""
        what = "log_entries"
        out: list[bytes] = []
        time, _ = time_column(batch, "time", what, -1)
        level = int_column(batch, "level", what)
        targets = string_column(batch, "target", what)
        msg = column(batch, "msg", what)
        streams = string_column(batch, "stream_id", what)
        assert level is not None
        keep = self._in_range(time, column(batch, "time", what))
        self._stats.dropped_logs += batch.num_rows - len(keep)
        if not len(keep):
            return out
        uuid, tracks = self._stream_uuids(streams, keep)
        out += tracks
        name = self._interner.names(targets)
        loc = self._interner.locations(targets, np.zeros(batch.num_rows, dtype=np.int64))
        out += self._interned()
        body, cut = clean_bodies(msg)
        self._stats.truncated_logs += cut
        if len(keep) < batch.num_rows:
            body = body.take(pa.array(keep))
        entries = LogBatch(
            ts=time[keep],
            uuid=uuid,
            name=name[keep],
            loc=loc[keep],
            prio=priorities(level[keep]),
            body=body,
        )
        out += self._absolute()
        for part in _log_parts(entries):
            data, sizes = log_rows(part, self._next_body_iid)
            self._next_body_iid += len(part.ts)
            out += self._add(data, sizes)
        self._stats.log_entries += len(keep)
        return out

    def add_measures(self, batch: pa.RecordBatch) -> list[bytes]:
        """Encode a batch of the process's measures as counter values (see ``worker.engine.counters``).

        Columns: ``time``, ``target``, ``name``, ``unit``, ``value`` (a float or an integer, written
        as the nearest double, see docs/TRACE_FORMAT.md). A counter track per
        (target, name) is described before its first value. Rows are put in canonical order first
        (:data:`MEASURE_ORDER`). Rows without a time or value, or
        outside the range, are dropped and counted in ``stats.dropped_measures``.
        """
        out = self.start()
        what = "measures"
        time_column(batch, "time", what, -1)
        for name in ("target", "name", "unit"):
            string_column(batch, name, what)
        value_col = column(batch, "value", what)
        if not (pa.types.is_floating(value_col.type) or pa.types.is_integer(value_col.type)):
            raise BadSourceData(f"{what} column 'value' must be numbers, got {value_col.type}")
        if not self._metrics or batch.num_rows == 0:
            return out
        if self._current is not None:
            out += self.end_thread(self._current)
        out += self._flush_logs()
        if value_col.type != pa.float64():
            # Counter values are doubles in Perfetto: an integer beyond +-2**53 (int64 or uint64)
            # becomes the nearest double (unchecked cast), as the counter would show it anyway,
            # rather than failing the job. Cast before canonical order, so batches of integer and
            # float values sort and concatenate as one stream.
            value_col = value_col.cast(pa.float64(), safe=False)
        hashed = pa.record_batch(
            {
                "time": column(batch, "time", what),
                **{
                    name: self._hashed(string_column(batch, name, what))
                    for name in ("target", "name", "unit")
                },
                "value": value_col,
            }
        )
        for part in self._measure_canon.push(hashed):
            out += self._measure_batch(part)
        return out

    def _hashed(self, col: pa.DictionaryArray) -> pa.Array:
        """A low-cardinality string column as int64 hashes of its values (remembered, to turn back).

        Canonical order then sorts ties by these integers instead of materialising the strings."""
        values = [v if v is not None else "" for v in col.dictionary.to_pylist()]
        hashes = [_signed_hash(v) for v in values]
        for h, v in zip(hashes, values, strict=True):
            self._measure_strings.setdefault(h, v)
        table = np.array([*hashes, _NULL_HASH], dtype=np.int64)
        self._measure_strings.setdefault(_NULL_HASH, "")
        indices = col.indices.fill_null(len(values)) if col.indices.null_count else col.indices
        return pa.array(table[indices.to_numpy(zero_copy_only=False)], pa.int64())

    def _flush_logs(self) -> list[bytes]:
        out: list[bytes] = []
        for part in self._log_canon.flush():
            out += self._log_batch(part)
        return out

    def _measure_batch(self, batch: pa.RecordBatch) -> list[bytes]:
        """Encode one canonical batch of measures."""
        what = "measures"
        out: list[bytes] = []
        time, _ = time_column(batch, "time", what, -1)
        value_col = column(batch, "value", what)
        keep = self._in_range(time, column(batch, "time", what), value_col)
        self._stats.dropped_measures += batch.num_rows - len(keep)
        if not len(keep):
            return out
        every = len(keep) == batch.num_rows

        def kept(a: npt.NDArray[_T]) -> npt.NDArray[_T]:
            return a if every else a[keep]

        if value_col.null_count:
            value_col = value_col.fill_null(0.0)
        ts = kept(time)
        values = kept(value_col.to_numpy(zero_copy_only=False))
        t_hash, n_hash, u_hash = (
            kept(batch.column(name).to_numpy(zero_copy_only=False)) for name in ("target", "name", "unit")
        )
        index, pairs = self._pairs(t_hash, n_hash)
        track = np.empty(len(pairs), dtype=np.uint64)
        for i, (t, n) in enumerate(pairs):  # once per distinct (target, name) of the batch
            uuid = self._counter_uuid.get((t, n))
            if uuid is None:
                strings = self._measure_strings
                target, name = strings[t], strings[n]
                unit = strings[int(u_hash[int(np.argmax(index == i))])]  # the pair's first row
                uuid = counter_uuid(self._proc_uuid, target, name)
                self._counter_uuid[(t, n)] = uuid
                desc = counter_descriptor(uuid, self._proc_uuid, name=name, target=target, unit=unit)
                out += self._packet(descriptor_packet(desc))
                self._stats.counter_tracks += 1
            track[i] = uuid
        if len(ts) > 1 and not bool(np.all(ts[1:] >= ts[:-1])):
            order = np.argsort(ts, kind="stable")
            ts, index, values = ts[order], index[order], values[order]
        out += self._absolute()
        for lo in range(0, len(ts), _SUB_BATCH):
            part = slice(lo, lo + _SUB_BATCH)
            rows = counter_rows(ts[part], index[part], track, values[part])
            out += self._add(rows.reshape(-1).data, rows.shape[1])  # no copy until the chunk is joined
        self._stats.measures += len(ts)
        return out

    def _pairs(self, t_hash: I64, n_hash: I64) -> tuple[I64, list[tuple[int, int]]]:
        """Distinct (target, name) hash pairs of a batch, in order of their hashes, and each row's
        position among them.

        Every hash came through :meth:`_hashed`, so each is found in the sorted table of known
        hashes; its position there is a small code, and a pair of codes one dense index.
        """
        if len(self._known) != len(self._measure_strings):
            self._known = np.array(sorted(self._measure_strings), dtype=np.int64)
        known = self._known
        k = len(known)
        dense = np.searchsorted(known, t_hash) * k + np.searchsorted(known, n_hash)
        if k * k > 1 << 22:  # very many distinct strings: hash the dense indices instead
            encoded = pc.dictionary_encode(pa.array(dense))
            index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            present = encoded.dictionary.to_numpy()
            pairs = [(int(known[d // k]), int(known[d % k])) for d in present.tolist()]
            return index, pairs
        seen = np.zeros(k * k, dtype=bool)
        seen[dense] = True
        present = np.flatnonzero(seen)
        position = np.zeros(k * k, dtype=np.int64)
        position[present] = np.arange(len(present))
        pairs = [(int(known[d // k]), int(known[d % k])) for d in present.tolist()]
        return position[dense], pairs

    def flush(self) -> list[bytes]:
        """Cut the partly filled chunk now (e.g. so requesters see the header early).

        The concatenated bytes are unchanged; only where chunks are cut differs.
        """
        self._check_open()
        return self._chunker.flush()

    def finish(self) -> list[bytes]:
        """Close the open thread and async spans and return the last chunks.

        Async spans still open end, cut, at the range end or at the last time the process has data
        (its last recorded time, or the latest time in the rows read), whichever is earlier.
        """
        out = self.start()
        if self._current is not None:
            out += self.end_thread(self._current)
        for part in self._async_canon.flush():
            for piece in self._lookback.split(part):
                out += self._async_batch(piece)
        for piece in self._lookback.finish():
            out += self._async_batch(piece)
        data_end = max(self._process.last_time_ns or -1, self._data_last)
        if data_end >= 0:
            self._async.range_end = max(self._range.begin_ns, min(self._range.end_ns, data_end))
        for data, sizes in self._async.close():
            out += self._timed(data, sizes)
        out += self._flush_logs()
        for part in self._measure_canon.flush():
            out += self._measure_batch(part)
        out += self._chunker.flush()
        self._finished = True
        return out

    # -- helpers ------------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._finished:
            raise RuntimeError("the trace is finished")

    def _interned(self) -> list[bytes]:
        out: list[bytes] = []
        for packet in self._interner.take_packets():
            out += self._packet(packet)
        return out

    def _packet(self, packet: bytes) -> list[bytes]:
        self._stats.packets += 1
        self._stats.bytes += len(packet)
        return self._chunker.add(packet)

    def _add(self, data: bytes | memoryview, sizes: npt.NDArray[np.int64] | int) -> list[bytes]:
        if not data:
            return []
        self._stats.packets += len(data) // sizes if isinstance(sizes, int) else len(sizes)
        self._stats.bytes += len(data)
        return self._chunker.add(data, sizes)

    def _in_range(self, time: npt.NDArray[np.int64], *cols: pa.Array) -> npt.NDArray[np.int64]:
        """Rows with no null in ``cols`` and a time inside the range."""
        ok = (time >= self._range.begin_ns) & (time <= self._range.end_ns)
        for col in cols:
            if col.null_count:
                ok &= ~np.asarray(pc.is_null(col).to_numpy(zero_copy_only=False), dtype=bool)
        return np.flatnonzero(ok)

    def _stream_uuids(
        self, streams: pa.DictionaryArray, keep: I64
    ) -> tuple[npt.NDArray[np.uint64], list[bytes]]:
        """Track uuid of each kept row: its stream's thread track, else the stream's log track
        (null = ""), described here, in order of first appearance, when first met."""
        values = ["" if v is None else v for v in streams.dictionary.to_pylist()] + [""]
        indices = streams.indices
        idx = (indices.fill_null(len(values) - 1) if indices.null_count else indices).to_numpy(
            zero_copy_only=False
        )
        idx = idx[keep]
        out: list[bytes] = []
        if any(v not in self._track_of and v not in self._log_tracks for v in values):
            first = np.full(len(values), len(idx), dtype=np.int64)
            np.minimum.at(first, idx, np.arange(len(idx), dtype=np.int64))
            pid = pid_of(self._proc_uuid)
            for i in sorted(range(len(values)), key=lambda i: int(first[i])):
                v = values[i]
                if first[i] == len(idx) or v in self._track_of or v in self._log_tracks:
                    continue
                track = log_track(v, self._used_tids)
                self._log_tracks[v] = track
                out += self._packet(thread_descriptor(track, pid))
        table = np.array(
            [(self._track_of.get(v) or self._log_tracks.get(v) or _NO_TRACK).uuid for v in values],
            dtype=np.uint64,
        )
        uuids: npt.NDArray[np.uint64] = table[idx]
        return uuids, out

    def _events(self, events: Events, thread: ThreadTrack) -> list[bytes]:
        """A thread's events on its sequence-default track, timed on the incremental clock (``packing``).

        A reset packet (naming the thread's track as the default one) starts each run of one thread's
        events; the run goes on across its batches, so sub-batching does not change the bytes. Events
        of a depth band k >= 1 name the thread's overflow track of band k (declared before them)."""
        if not len(events.ts):
            return []
        uuid = thread.uuid
        out: list[bytes] = []
        track = None
        if events.band is not None:
            out, track = self._depth_track_uuids(thread, events.band)
        if self._run != uuid:
            out += self._packet(reset_packet(self._t0, uuid))
            self._run, self._base = uuid, self._t0
        data, sizes = thread_event_rows(
            events.ts,
            events.kind,
            name=events.name,
            cat=events.cat,
            loc=events.loc,
            marks=events.mark,
            t0=self._base,
            top=events.top,
            track=track,
        )
        self._base = max(self._base, int(events.ts.max()))
        self._realtime = False
        return out + self._add(data, sizes)

    def _depth_track_uuids(self, thread: ThreadTrack, band: I64) -> tuple[list[bytes], U64]:
        """The descriptors of the thread's overflow tracks not declared yet, up to the deepest band of
        ``band`` (the band of each event), and the track uuid of each event (0: the thread's own).

        A span of band k is nested in spans of every band below, which began before it, so bands are
        declared in order 1, 2, ... and each before its first event."""
        declared = self._depth_tracks.setdefault(thread.uuid, [0])
        out: list[bytes] = []
        for k in range(len(declared), int(band.max()) + 1):
            declared.append(depth_track_uuid(thread.uuid, k))
            out += self._packet(descriptor_packet(depth_track_descriptor(thread, k, TRACK_DEPTH)))
        uuids: U64 = np.array(declared, dtype=np.uint64)[band]
        return out, uuids

    def _timed(self, data: bytes | memoryview, sizes: npt.NDArray[np.int64] | int) -> list[bytes]:
        """Packets on the incremental clock (they start with their own reset packet)."""
        if data:
            self._realtime = False
            self._run = None
        return self._add(data, sizes)

    def _absolute(self) -> list[bytes]:
        """The defaults back to REALTIME before packets with absolute timestamps (logs, counters)."""
        if self._realtime:
            return []
        self._realtime = True
        self._run = None
        return self._packet(realtime_defaults_packet())


def _joined(events: Events, closing: Events, base: int) -> Events | None:
    """One block holding a thread's last events and then the ENDs closing it, when
    ``thread_event_rows`` writes it byte for byte as the two blocks one after the other (clock 64 at
    ``base`` before them): no cut marks, times non-decreasing from ``base`` (no absolute ones), the
    same iid widths. None otherwise."""
    if not len(closing.ts):
        return events
    if events.band is not None or closing.band is not None:
        return None  # (the rows name tracks: not the plain layout this merge is exact for)
    ts = np.concatenate((events.ts, closing.ts))
    top = tuple(max(a, b) for a, b in zip(events.top, closing.top, strict=True))
    if (
        events.mark.any()
        or closing.mark.any()
        or int(ts[0]) < base
        or not bool(np.all(ts[1:] >= ts[:-1]))
        or any(varint_width(a) != varint_width(b) for a, b in zip(events.top, top, strict=True))
    ):
        return None
    return Events(
        ts=ts,
        kind=np.concatenate((events.kind, closing.kind)),
        name=events.name,
        cat=events.cat,
        loc=events.loc,
        mark=np.concatenate((events.mark, closing.mark)),
        top=(top[0], top[1], top[2]),
    )


def _data_begin(process: ProcessInfo, time_range: TimeRange) -> int:
    """Where an async span whose begin is unknown is drawn from: the range begin, or the process's
    first data (start or first recorded time) when that is later (and inside the range)."""
    known = [t for t in (process.start_time_ns, process.first_time_ns) if t is not None]
    first = min(known) if known else time_range.begin_ns
    return first if time_range.begin_ns < first <= time_range.end_ns else time_range.begin_ns


def _check_thread_columns(batch: pa.RecordBatch) -> None:
    """BadSourceData unless every thread-span column is there with a readable type."""
    schema = batch.schema
    # (equals, not a set: a schema's hash is computed from its text each time, ~10 µs)
    if any(schema.equals(ok) for ok in _THREAD_SCHEMAS_OK):
        return
    what = "thread_spans"
    time_column(batch, "begin", what, 0)
    time_column(batch, "end", what, -1)
    int_column(batch, "depth", what)
    int_column(batch, "line", what)
    for name in ("name", "target", "filename"):
        check_string_column(batch, name, what)  # (plain strings are encoded once, later)
    begin, end = batch.schema.field("begin").type, batch.schema.field("end").type
    if all(t == pa.int64() or (pa.types.is_timestamp(t) and t.unit == "ns") for t in (begin, end)):
        # Every batch of this schema passes: only a cast of the times depends on the values.
        if len(_THREAD_SCHEMAS_OK) >= 64:
            _THREAD_SCHEMAS_OK.clear()
        _THREAD_SCHEMAS_OK.append(schema)


#: Thread-span schemas that passed _check_thread_columns whatever the values (the source sends one).
_THREAD_SCHEMAS_OK: list[pa.Schema] = []


def _int64s(col: pa.ChunkedArray, null_value: int) -> I64:
    """An int64 column of all chunks as one numpy array, nulls as ``null_value``."""
    if col.null_count:
        col = col.fill_null(null_value)
    out: I64 = col.to_numpy()
    return out


def _string_chunks(table: pa.Table, name: str, what: str) -> list[pa.DictionaryArray]:
    """A string column's chunks as dictionary arrays (plain strings encoded all at once)."""
    col = table.column(name)
    if pa.types.is_dictionary(col.type):
        return list(col.chunks)
    return [string_column(pa.record_batch([col.combine_chunks()], names=[name]), name, what)]


def _check_async_columns(batch: pa.RecordBatch) -> None:
    """BadSourceData unless every async-event column is there with a readable type."""
    what = "async_events"
    time_column(batch, "time", what, 0)
    check_string_column(batch, "event_type", what)  # (plain strings are encoded once, later)
    for name in ("span_id", "parent_span_id", "line"):  # (types only: the values are read later)
        t = column(batch, name, what).type
        if not pa.types.is_integer(t):
            raise BadSourceData(f"{what} column {name!r} must be integers, got {t}")
    for name in ("name", "target", "filename"):
        check_string_column(batch, name, what)


def _signed_hash(value: str) -> int:
    """xxh64 of a string as a signed 64-bit int."""
    h = xxh64(value.encode())
    return h - (1 << 64) if h >= 1 << 63 else h


_NULL_HASH = _signed_hash("")
#: Stands for a stream none of whose entries is kept (its uuid is never written).
_NO_TRACK = ThreadTrack("", 0, 0, "")
#: Canonical order of log entries and measures (worker.engine.canonical): by time, ties by every
#: column the engine reads, so the bytes do not depend on the server's batching or order of ties.
LOG_ORDER: tuple[str, ...] = ("time", "stream_id", "level", "target", "msg")
MEASURE_ORDER: tuple[str, ...] = ("time", "target", "name", "unit", "value")
#: Log text bytes encoded at once (bounds the temporary buffers with very long messages).
_LOG_TEXT_BYTES = 4 << 20


def _log_parts(entries: LogBatch) -> list[LogBatch]:
    """Pieces of at most _SUB_BATCH rows and about _LOG_TEXT_BYTES of text (one row at least)."""
    n = len(entries.ts)
    lengths = pc.binary_length(entries.body).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    parts = []
    lo = 0
    while lo < n:
        hi = min(n, lo + _SUB_BATCH)
        by_bytes = int(np.searchsorted(offsets, offsets[lo] + _LOG_TEXT_BYTES, side="right")) - 1
        hi = max(lo + 1, min(hi, by_bytes))
        parts.append(
            LogBatch(
                ts=entries.ts[lo:hi],
                uuid=entries.uuid[lo:hi],
                name=entries.name[lo:hi],
                loc=entries.loc[lo:hi],
                prio=entries.prio[lo:hi],
                body=entries.body.slice(lo, hi - lo),
            )
        )
        lo = hi
    return parts
