"""Rows of one ``process_spans`` query, regrouped into each thread's spans.

Upstream sends thread after thread, ordered by stream id, each thread's rows in ``begin`` order
(``process_spans_table_function.rs``), but declares no order, so a plan that repartitions could
interleave batches. The rows are checked in one vectorised pass and, only if that order does not
hold, put in order with a stable sort by (thread, ``begin``), which keeps the arrival order of rows
with equal ``begin`` (the encoder's output does not depend on it anyway).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["by_thread"]


def by_thread(
    batches: Sequence[pa.RecordBatch], stream_ids: Sequence[str], columns: Sequence[str]
) -> list[pa.Table]:
    """Table ``i`` holds the rows whose ``stream_id`` is ``stream_ids[i]``, in ``begin`` order, with
    only ``columns``; rows of other streams are dropped.

    Args:
        batches: The query's batches, each with ``stream_id`` (string or dictionary), ``begin``
            (timestamp, ns) and ``columns``; all of one schema.
        stream_ids: The threads, in the order wanted.
        columns: The columns kept, in order.
    """
    if not batches:
        return [pa.table({}).slice(0, 0) for _ in stream_ids]
    table = pa.Table.from_batches(batches)
    index = _thread_index(table["stream_id"], stream_ids)
    # A null begin (bad data, rejected later by the engine) sorts last, as ORDER BY "begin" puts it.
    begin_ns = pc.fill_null(table["begin"].cast(pa.int64()), np.iinfo(np.int64).max)
    begin = np.asarray(begin_ns.to_numpy(), dtype=np.int64)
    known = index >= 0
    if not known.all():
        table, index, begin = table.filter(pa.array(known)), index[known], begin[known]
    step = np.diff(index)
    if not (bool((step >= 0).all()) and bool(((step > 0) | (np.diff(begin) >= 0)).all())):
        order = np.lexsort((begin, index))  # stable: equal (thread, begin) keep arrival order
        # One dictionary per column first: taking across chunks concatenates them.
        table = table.unify_dictionaries().combine_chunks().take(pa.array(order))
        index = index[order]
    table = table.select(list(columns))
    counts = np.bincount(index, minlength=len(stream_ids)) if index.size else np.zeros(len(stream_ids), int)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return [table.slice(int(s), int(c)) for s, c in zip(starts, counts, strict=True)]


def _thread_index(sid: pa.ChunkedArray, stream_ids: Sequence[str]) -> npt.NDArray[np.int64]:
    """Position of each row's stream id in ``stream_ids`` (-1: another stream, or null).

    A dictionary column is looked up by its few dictionary values, then gathered by index: decoding
    every row to a string first cost most of this function (~11k rows per small process).
    """
    if not pa.types.is_dictionary(sid.type):
        found = pc.index_in(sid, value_set=pa.array(list(stream_ids), sid.type))
        return np.asarray(pc.fill_null(found, -1).to_numpy(), dtype=np.int64)
    value_set = pa.array(list(stream_ids), sid.type.value_type)
    parts = []
    for chunk in sid.chunks:
        known = pc.fill_null(pc.index_in(chunk.dictionary, value_set=value_set), -1)
        # Slot len(dictionary): null rows.
        lookup = np.append(np.asarray(known.to_numpy(), dtype=np.int64), -1)
        indices = chunk.indices.fill_null(len(chunk.dictionary)) if chunk.null_count else chunk.indices
        parts.append(lookup[np.asarray(indices.to_numpy(), dtype=np.intp)])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
