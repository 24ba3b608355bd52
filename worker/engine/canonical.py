"""Canonical input: the same rows give the same batches, whatever the server's order of ties and batching.

A Flight SQL server sorts by one column (``begin`` for thread spans, ``time`` for async events) and
leaves rows whose sort keys tie in any order; it also cuts its answer into batches as its partitions
and parallelism dictate. Neither is part of the data. :class:`Canonicalizer` turns one such stream
into a canonical one before the engine lays anything out:

1. **Ties.** The stream is cut into *runs*: maximal sequences of consecutive rows with the same sort
   key (computed over the whole stream, not per batch). Inside a run, rows are sorted by a total order
   over every column the engine reads (the tie-break columns, strings by value, nulls last). Rows that
   are equal in every one of those columns are interchangeable, so any permutation of a run gives the
   same sequence. A run is only sorted once it is complete (a later row has another key, or the
   stream ended), so a run split across server batches is held back whole.
2. **Batches.** The canonical sequence is handed on in batches of exactly ``rows`` rows (the last one
   shorter), so where the server cut its batches changes nothing downstream.

Memory: at most ``rows`` rows plus the run being held. A run longer than ``max_run`` rows (one
timestamp shared by a million rows is bad data) is handed on without waiting for its end; only then
can the output depend on batching. Work is columnar: one concatenation per ``rows`` rows, and a sort
of the tied rows only (``pyarrow.compute.sort_indices``). Sources mostly send ties in one order
already: when each tied row is found (one vectorised comparison of neighbours) to be in tie-break
order, the sort and the copy of the rows are skipped, as the stable sort would move nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from worker.engine.inputs import column

__all__ = ["ASYNC_ORDER", "CANONICAL_ROWS", "THREAD_ORDER", "Canonicalizer", "canonical_streams"]

_Column = TypeVar("_Column", pa.Array, pa.ChunkedArray)
#: Rows per canonical batch.
CANONICAL_ROWS = 1 << 16
#: A run of equal sort keys longer than this is not held back whole.
MAX_RUN = 1 << 20
_NULL_KEY = np.iinfo(np.int64).min

#: Thread spans: sort key ``begin``; ties ordered shallower first (a parent before the child that
#: begins with it), then shorter first (a zero-length span before a sibling beginning at the same time).
THREAD_ORDER: tuple[str, ...] = ("begin", "depth", "end", "name", "target", "filename", "line")
#: Async events: sort key ``time``; ties ordered begins before ends (so a zero-length span pairs with
#: itself and a child beginning when its parent ends still finds the parent open), then by span id.
#: (``stream_id`` and ``depth`` are not read by the engine: rows differing only there are alike.)
ASYNC_ORDER: tuple[str, ...] = (
    "time",
    "event_type",
    "span_id",
    "parent_span_id",
    "name",
    "target",
    "filename",
    "line",
)


def _normal(col: _Column) -> _Column:
    """One type per kind of column, so the batches of one stream concatenate: times and integers as
    int64 (bits kept), strings as utf8 or dictionaries of utf8 with int32 keys (dictionaries are kept:
    decoding them would cost more than the rest of the engine)."""
    t = col.type
    if pa.types.is_dictionary(t):
        if t.index_type == pa.int32() and t.value_type == pa.string():
            return col
        return col.cast(pa.dictionary(pa.int32(), pa.string()))
    if pa.types.is_timestamp(t):
        if t.unit != "ns":
            col = col.cast(pa.timestamp("ns", t.tz))
        # (a chunked array has no view: its cast to int64 keeps the bits too)
        return col.view(pa.int64()) if isinstance(col, pa.Array) else col.cast(pa.int64())
    if pa.types.is_integer(t) and t != pa.int64():
        return col.cast(pa.int64(), safe=False)
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return col.cast(pa.string())
    return col


def _decoded(batch: pa.RecordBatch) -> pa.RecordBatch:
    """``batch`` with its dictionary columns as plain utf8."""
    cols = [c.cast(pa.string()) if pa.types.is_dictionary(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(cols, names=batch.schema.names)


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """The rows of ``table`` as one batch (zero-copy when they lie in one chunk)."""
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    return table.combine_chunks().to_batches()[0]


def _at(
    chunks: list[pa.Array], rows: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Values (int64, nulls as 0) and validity of the integer chunks at positions ``rows`` (ascending)
    of their concatenation, read from zero-copy views, chunk by chunk (the rows of a chunk are one
    slice of ``rows``)."""
    bounds = np.cumsum([0, *(len(c) for c in chunks)])
    cuts = np.searchsorted(rows, bounds).tolist()
    value = np.zeros(len(rows), dtype=np.int64)
    valid = np.ones(len(rows), dtype=bool)
    for c, chunk in enumerate(chunks):
        lo, hi = cuts[c], cuts[c + 1]
        if lo == hi:
            continue
        local = rows[lo:hi] - bounds[c]
        filled = chunk
        if chunk.null_count:
            valid[lo:hi] = chunk.is_valid().to_numpy(zero_copy_only=False)[local]
            filled = chunk.fill_null(0)
        value[lo:hi] = filled.to_numpy()[local]
    return value, valid


def _codes(
    col: pa.ChunkedArray, rows: Sequence[npt.NDArray[np.int64]], *, fold: bool
) -> list[tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]] | None:
    """For each array of row positions (each ascending), the column's values there as int64 that
    order them as the sort does, and their validity: integers as they are; a dictionary shared by
    every chunk as the dense rank of each row's (lower-cased) value. None for other columns."""
    if pa.types.is_integer(col.type):
        return [_at(col.chunks, r) for r in rows]
    if not pa.types.is_dictionary(col.type) or not col.num_chunks:
        return None
    dictionary = col.chunk(0).dictionary
    if any(c.dictionary is not dictionary and not c.dictionary.equals(dictionary) for c in col.chunks[1:]):
        return None
    if len(dictionary) == 0:
        return [(np.zeros(len(r), dtype=np.int64), np.zeros(len(r), dtype=bool)) for r in rows]
    values = pc.utf8_lower(dictionary) if fold else dictionary
    rank = pc.rank(values, sort_keys="ascending", tiebreaker="dense").to_numpy().astype(np.int64)
    value_ok = values.is_valid().to_numpy(zero_copy_only=False)
    out = []
    for r in rows:
        idx, valid = _at([c.indices for c in col.chunks], r)
        out.append((rank[idx], valid & value_ok[idx]))
    return out


def _rows(col: pa.ChunkedArray, idx: npt.NDArray[np.int64]) -> pa.Array:
    """Rows ``idx`` (ascending) of a column, dictionaries decoded. Taken chunk by chunk (one slice of
    ``idx`` each): a take from the chunked column would first concatenate all of it."""
    bounds = np.cumsum([0, *(len(c) for c in col.chunks)])
    cuts = np.searchsorted(idx, bounds).tolist()
    parts = []
    for c, chunk in enumerate(col.chunks):
        lo, hi = cuts[c], cuts[c + 1]
        if lo == hi:
            continue
        part = chunk.take(pa.array(idx[lo:hi] - bounds[c]))
        parts.append(part.cast(pa.string()) if pa.types.is_dictionary(part.type) else part)
    return pa.concat_arrays(parts) if parts else pa.array([], col.type)


class Canonicalizer:
    """Re-cuts one sorted stream of rows into canonical batches (see the module doc).

    Args:
        order: The sort key column first, then the tie-break columns; the output batches hold
            exactly these columns, as int64 (times, integers) and utf8 (strings).
        what: Names the stream in errors (``BadSourceData`` for a missing column).
        fold_case: Columns compared case-insensitively (``event_type``).
        rows: Rows per canonical batch.
        max_run: Longest run of equal keys held back whole.
    """

    def __init__(
        self,
        order: Sequence[str],
        what: str,
        *,
        fold_case: Sequence[str] = (),
        rows: int = CANONICAL_ROWS,
        max_run: int = MAX_RUN,
    ) -> None:
        self._order = tuple(order)
        self._what = what
        self._fold = set(fold_case)
        self._rows = rows
        self._max_run = max_run
        self._pending: list[pa.RecordBatch] = []
        self._count = 0

    @property
    def pending_rows(self) -> int:
        """Rows received and not yet handed on."""
        return self._count

    def push(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """Take a batch (columns checked by the caller); return the canonical batches now complete."""
        if batch.num_rows == 0:
            return []
        arrays = [_normal(column(batch, name, self._what)) for name in self._order]
        self._pending.append(pa.RecordBatch.from_arrays(arrays, names=list(self._order)))
        self._count += batch.num_rows
        if self._count < self._rows:
            return []
        return self._emit(final=False)

    def flush(self) -> list[pa.RecordBatch]:
        """The stream ended: every row held, in canonical batches."""
        if not self._count:
            return []
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> list[pa.RecordBatch]:
        try:
            return self._emit_from(self._pending, final=final)
        except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
            # Dictionaries that cannot be unified (nulls in a dictionary) or mixed encodings: decode.
            return self._emit_from([_decoded(b) for b in self._pending], final=final)

    def _emit_from(self, pending: list[pa.RecordBatch], *, final: bool) -> list[pa.RecordBatch]:
        """The canonical batches now complete. Batches are sliced, not copied: only an output batch
        that spans two input batches, and the rows of runs that need sorting, are copied."""
        table = pa.Table.from_batches(pending)
        n = table.num_rows
        key = self._key(table)
        same = key[1:] == key[:-1]  # row i + 1 ties with row i
        change = ~same  # row i + 1 starts a run
        last = len(change) - int(np.argmax(change[::-1])) if change.any() else 0  # the last run's start
        # Rows up to `safe` belong to complete runs; the last run may continue in the next batch.
        safe = n if final or n - last > self._max_run else last
        take = safe if final else safe - safe % self._rows
        if take == 0:
            self._pending = table.to_batches()
            return []
        pairs = np.flatnonzero(same[: max(safe - 1, 0)])
        ordered = self._sort_ties(table.slice(0, safe), change[: max(safe - 1, 0)], safe, pairs)
        out = [_one_batch(ordered.slice(lo, self._rows)) for lo in range(0, take, self._rows)]
        # What stays: the sorted rows not handed on, then the run that may continue.
        rest = [*ordered.slice(take).to_batches(), *table.slice(safe).to_batches()]
        self._pending = [b for b in rest if b.num_rows]
        self._count = n - take
        return out

    def _key(self, table: pa.Table) -> npt.NDArray[np.int64]:
        col = table.column(0)
        if col.null_count:
            col = col.fill_null(_NULL_KEY)
        out: npt.NDArray[np.int64] = col.to_numpy().astype(np.int64, copy=False)
        return out

    def _ties_in_order(self, table: pa.Table, pairs: npt.NDArray[np.int64]) -> bool:
        """Whether every run of equal keys is already in tie-break order, so the (stable) sort would
        move no row: each tied row compared with the next one, column after column, only as long as
        they are equal so far. Sources usually send ties in one order already; this costs a few
        comparisons of the tied pairs instead of a sort and a copy of the whole table."""
        for name in self._order[1:]:
            if not len(pairs):
                return True
            col = table.column(name)
            if pa.types.is_null(col.type):
                continue  # all null: every pair ties here
            codes = _codes(col, (pairs, pairs + 1), fold=name in self._fold)
            if codes is not None:  # integers, or one shared dictionary: compared in numpy
                (a_value, a_ok), (b_value, b_ok) = codes
                less, more = a_value < b_value, a_value > b_value
                both = a_ok & b_ok
            else:
                a, b = _rows(col, pairs), _rows(col, pairs + 1)
                if name in self._fold:
                    a, b = pc.utf8_lower(a), pc.utf8_lower(b)
                if pa.types.is_floating(a.type) and (
                    pc.any(pc.is_nan(a)).as_py() or pc.any(pc.is_nan(b)).as_py()
                ):
                    return False  # NaN has its own place in the sort: leave it to the sort
                a_ok = a.is_valid().to_numpy(zero_copy_only=False)
                b_ok = b.is_valid().to_numpy(zero_copy_only=False)
                both = a_ok & b_ok
                try:
                    less = pc.fill_null(pc.less(a, b), False).to_numpy(zero_copy_only=False)
                    more = pc.fill_null(pc.greater(a, b), False).to_numpy(zero_copy_only=False)
                except pa.ArrowNotImplementedError:
                    return False  # a type without comparison kernels: leave it to the sort
            # Nulls sort last: a value before a null is in order, a null before a value is not.
            if (both & more).any() or (~a_ok & b_ok).any():
                return False
            pairs = pairs[~((both & less) | (a_ok & ~b_ok))]
        return True

    def _sort_ties(
        self, table: pa.Table, change: npt.NDArray[np.bool_], n: int, pairs: npt.NDArray[np.int64]
    ) -> pa.Table:
        """``table`` with each run of equal keys sorted by the tie-break columns (``change``: row
        i + 1 starts a run; ``pairs``: the rows i tied with row i + 1)."""
        if not len(pairs) or self._ties_in_order(table, pairs):
            return table  # no ties, or all of them in order already
        starts = np.flatnonzero(np.concatenate(([True], change)))
        lengths = np.diff(np.append(starts, n))
        tied_runs = lengths > 1
        run_of = np.repeat(np.arange(len(starts), dtype=np.int64), lengths)
        tied = np.flatnonzero(np.repeat(tied_runs, lengths))
        sub = table.take(pa.array(tied))
        keys: dict[str, pa.Array] = {"__run": pa.array(run_of[tied])}
        for name in self._order[1:]:
            col = sub.column(name)
            if pa.types.is_dictionary(col.type):
                col = col.cast(pa.string())
            keys[name] = pc.utf8_lower(col) if name in self._fold else col
        sort_table = pa.table(keys)
        sort_keys = [(name, "ascending", "at_end") for name in sort_table.column_names]
        order = pc.sort_indices(sort_table, sort_keys=sort_keys).to_numpy()
        perm = np.arange(n, dtype=np.int64)
        perm[tied] = tied[order]
        return table.take(pa.array(perm))


def canonical_streams(
    streams: Sequence[Sequence[pa.RecordBatch]], order: Sequence[str], what: str
) -> tuple[pa.Table, list[int]] | None:
    """Several whole streams (each fewer than CANONICAL_ROWS rows), each in the canonical order a
    :class:`Canonicalizer` of its own gives it, put in order in one pass: one table, the streams one
    after the other, and each one's row count. None when their columns do not all have one type or
    their dictionaries do not combine (the caller then takes them one by one).

    A run of tied keys never crosses from one stream into the next, so each stream's rows are sorted
    as on their own (the sort is stable and total over the tie-break columns).
    """
    canon = Canonicalizer(order, what)
    counts = [sum(b.num_rows for b in batches) for batches in streams]
    batches = [b for stream in streams for b in stream if b.num_rows]
    if not batches:
        return None
    schema = batches[0].schema
    if any(not b.schema.equals(schema) for b in batches[1:]):
        return None
    # Columns normalised once for all the batches (a cast per batch costs more than its rows).
    whole = pa.Table.from_batches(batches)
    table = pa.table({name: _normal(whole.column(name)) for name in canon._order})  # (checked by the caller)
    n = table.num_rows
    key = canon._key(table)
    change = key[1:] != key[:-1]  # row i + 1 starts a run
    starts = np.cumsum(counts)[:-1]
    change[starts[(starts > 0) & (starts < n)] - 1] = True  # ... and so does a stream
    try:
        ordered = canon._sort_ties(table, change, n, np.flatnonzero(~change))
    except (pa.ArrowInvalid, pa.ArrowTypeError, NotImplementedError):
        return None
    return ordered, counts
