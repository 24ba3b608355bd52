"""The lake held in memory (``--in-memory``): every view instance generated once, kept as Arrow.

:class:`MemoryLake` generates each ``view_instance`` (thread spans per stream; async events, log
entries and measures per process) with the same functions as the on-the-fly mode
(:mod:`worker.devserver.views`, no range), so it holds exactly the rows, in exactly the order, that
mode serves. Each instance is one contiguous Arrow table (string columns dictionary-encoded as
the server's :class:`SchemaOptions` say) plus its sort column as a numpy array, so a time range is
two ``searchsorted`` calls and a zero-copy slice.

Thread spans are sorted by ``begin`` but a range is an overlap (``begin <= end_ns AND end >=
begin_ns``): rows with ``begin >= begin_ns`` all qualify (``end >= begin``), and the running
maximum of ``end`` bounds where earlier rows can still reach ``begin_ns``; only the rows between
that bound and ``begin_ns`` (the spans open at ``begin_ns`` and their finished siblings) are
filtered one by one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from worker.devserver import views
from worker.devserver.lake import Lake
from worker.devserver.schemas import (
    SchemaOptions,
    async_events_schema,
    log_entries_schema,
    measures_schema,
    thread_spans_schema,
)

__all__ = ["BATCH_ROWS", "Bounds", "HeldView", "MemoryLake"]

#: Default rows per record batch written to the Flight stream: the on-the-fly lake's block size, so a
#: client sees the same batches in both modes. Larger batches cost the client's driver less per row
#: (ADBC reads 262,144-row batches ~1.5x faster than 65,536-row ones), but a client that queues N
#: batches per stream holds N times more (the worker's peak RSS on the 5 M-span job: 436 MB with
#: 262,144-row batches).
BATCH_ROWS = 65_536
#: Inclusive int64 bounds meaning "no bound".
_MIN, _MAX = -(2**63), 2**63 - 1

#: The column each view is generated in ascending order of.
ORDER_COLUMN = {"thread_spans": "begin", "async_events": "time", "log_entries": "time", "measures": "time"}

_Generator = Callable[[Lake, str, SchemaOptions, int | None, int | None], Iterator[pa.RecordBatch]]
_GENERATORS: dict[str, _Generator] = {
    "thread_spans": views.thread_spans,
    "async_events": views.async_events,
    "log_entries": views.log_entries,
    "measures": views.measures,
}


@dataclass(frozen=True)
class Bounds:
    """Inclusive int64 ns bounds on a view: ``lo <= order column <= hi`` and, for thread spans,
    ``end >= end_lo``."""

    lo: int = _MIN
    hi: int = _MAX
    end_lo: int = _MIN

    def meet(self, other: Bounds) -> Bounds:
        """Both bounds at once."""
        return Bounds(max(self.lo, other.lo), min(self.hi, other.hi), max(self.end_lo, other.end_lo))

    @staticmethod
    def header(view: str, range_ns: tuple[int, int] | None) -> Bounds:
        """What the ``query_range_*`` headers keep of ``view`` (overlap for thread spans)."""
        if range_ns is None:
            return Bounds()
        begin, end = range_ns
        return Bounds(hi=end, end_lo=begin) if view == "thread_spans" else Bounds(lo=begin, hi=end)


class HeldView:
    """One view instance in memory: the table in generation order and its sort column.

    Attributes:
        table: All rows, one chunk per column.
        order: The sort column (``begin`` / ``time``) as int64 ns, ascending.
        end: Thread spans only: ``end`` as int64 ns, and ``end_max`` its running maximum.
    """

    def __init__(self, view: str, table: pa.Table) -> None:
        self.view = view
        self.table = table.combine_chunks()
        self.order = _ns(self.table[ORDER_COLUMN[view]])
        if self.order.size and not bool(np.all(self.order[1:] >= self.order[:-1])):
            raise ValueError(f"{view} rows are not generated in {ORDER_COLUMN[view]} order")
        self.end: np.ndarray | None = None
        self.end_max: np.ndarray | None = None
        if view == "thread_spans":
            self.end = _ns(self.table["end"])
            if not bool(np.all(self.end >= self.order)):
                raise ValueError("a thread span ends before it begins")
            self.end_max = np.maximum.accumulate(self.end) if self.end.size else self.end

    @property
    def nbytes(self) -> int:
        """Bytes held: the table's buffers and the running maximum (``order`` and ``end`` are views
        of the table's buffers)."""
        return int(self.table.nbytes) + (0 if self.end_max is None else int(self.end_max.nbytes))

    def cut(self, bounds: Bounds) -> pa.Table:
        """The rows within ``bounds``, in generation order: zero-copy slices, plus a small taken
        head for thread spans that begin before ``bounds.end_lo`` and still reach it."""
        lo = int(np.searchsorted(self.order, bounds.lo, "left")) if bounds.lo > _MIN else 0
        hi = int(np.searchsorted(self.order, bounds.hi, "right")) if bounds.hi < _MAX else self.order.size
        if hi <= lo:
            return self.table.slice(0, 0)
        if bounds.end_lo == _MIN or self.end is None or self.end_max is None:
            return self.table.slice(lo, hi - lo)
        # Before `first` no span reaches end_lo; from `sure` on every span does (end >= begin).
        first = max(lo, int(np.searchsorted(self.end_max, bounds.end_lo, "left")))
        sure = min(hi, max(first, int(np.searchsorted(self.order, bounds.end_lo, "left"))))
        tail = self.table.slice(sure, hi - sure)
        if sure <= first:
            return tail
        head_rows = first + np.flatnonzero(self.end[first:sure] >= bounds.end_lo)
        if head_rows.size == 0:
            return tail
        head = self.table.take(pa.array(head_rows))
        return pa.concat_tables([head, tail]) if tail.num_rows else head


class MemoryLake:
    """Every view instance of a lake, generated once and held as Arrow tables.

    Args:
        lake: The lake to hold.
        options: String encoding and ``async_events.hash`` presence (as the server serves them).
        batch_rows: Most rows per record batch served (see :data:`BATCH_ROWS`).
    """

    def __init__(self, lake: Lake, options: SchemaOptions, *, batch_rows: int = BATCH_ROWS) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be positive: {batch_rows}")
        self.lake = lake
        self.options = options
        self.batch_rows = batch_rows
        self._schemas = {
            "thread_spans": thread_spans_schema(options),
            "async_events": async_events_schema(options),
            "log_entries": log_entries_schema(options),
            "measures": measures_schema(options),
        }
        self._held: dict[tuple[str, str], HeldView] = {}
        self._lock = threading.Lock()

    def _instances(self) -> Iterator[tuple[str, str]]:
        for process in self.lake.processes:
            for stream in process.thread_streams:
                yield "thread_spans", stream.stream_id
            for view in ("async_events", "log_entries", "measures"):
                yield view, process.process_id

    def _build(self, view: str, instance: str) -> HeldView:
        batches = list(_GENERATORS[view](self.lake, instance, self.options, None, None))
        return HeldView(view, pa.Table.from_batches(batches, self._schemas[view]))

    def load(self) -> MemoryLake:
        """Generate every view instance of the lake now (what the server does at start)."""
        for key in self._instances():
            self.held(*key)
        return self

    @staticmethod
    def holds(view: str) -> bool:
        """Whether views of this name are held in memory (others are generated on the fly)."""
        return view in _GENERATORS

    def _known(self, view: str, instance: str) -> bool:
        if view == "thread_spans":
            found = self.lake.stream(instance)
            return found is not None and found[1].plan is not None
        return self.lake.process(instance) is not None

    def held(self, view: str, instance: str) -> HeldView:
        """The instance in memory (built on first use; an unknown id holds no rows, not kept)."""
        if not self._known(view, instance):
            return HeldView(view, self._schemas[view].empty_table())
        key = (view, instance)
        found = self._held.get(key)
        if found is None:
            with self._lock:
                found = self._held.get(key)
                if found is None:
                    found = self._build(view, instance)
                    self._held[key] = found
        return found

    @property
    def nbytes(self) -> int:
        """Bytes held by every instance loaded so far."""
        return sum(h.nbytes for h in self._held.values())

    def rows(self, view: str, instance: str, range_ns: tuple[int, int] | None) -> Iterator[pa.RecordBatch]:
        """What :mod:`worker.devserver.views` yields for the header range, from memory (same rows,
        same order), in batches of up to :attr:`batch_rows`."""
        table = self.held(view, instance).cut(Bounds.header(view, range_ns))
        yield from table.to_batches(max_chunksize=self.batch_rows)


def _ns(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp column as int64 ns (zero-copy for one chunk without nulls)."""
    return np.asarray(column.combine_chunks().view(pa.int64()).to_numpy(zero_copy_only=False), np.int64)
