"""The look-back: of the async events before the range begin, keep the begins of spans still open at it.

The source sends the events of the look-back window ``[begin - L, begin)`` before the range's events
(both in time order). A span that began and ended before the range is not in the trace; one that began
there and is still open at the range begin is, drawn from the range begin. :class:`Lookback` sits
after the canonical ordering (so tie order cannot change which span is closed) and before the pairing:
it absorbs the events before the range, and when the first event inside the range arrives (or the
stream ends) it hands on, in their order, the begins whose span has no end event after them.

Memory: the begins still open (the spans open at once), not the look-back's events. Columnar: per
batch one sort of the end events' span ids and one binary search.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Lookback"]


class Lookback:
    """Filters the canonical async event batches of one trace.

    Args:
        begin_ns: The range begin; events before it are the look-back's.
    """

    def __init__(self, begin_ns: int) -> None:
        self._begin = begin_ns
        self._open: pa.Table | None = None
        self._done = False

    def split(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """The batches to encode now, in order (the open begins first, once the range is reached)."""
        if self._done:
            return [batch]
        col = batch.column("time")
        time = (col.fill_null(self._begin) if col.null_count else col).to_numpy()
        before = time < self._begin
        if len(time) and not before.any():  # (no look-back rows here, the usual case: no copies)
            return [*self.finish(), batch]
        if before.all():
            self._absorb(batch)
            return []
        self._absorb(batch.filter(pa.array(before)))
        return [*self.finish(), batch.filter(pa.array(~before))]

    def finish(self) -> list[pa.RecordBatch]:
        """The begins still open, if not handed on yet (the stream ended before the range)."""
        if self._done:
            return []
        self._done = True
        kept, self._open = self._open, None
        if kept is None or kept.num_rows == 0:
            return []
        return [kept.combine_chunks().to_batches()[0]]

    def _absorb(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        rows = pa.Table.from_batches([batch])
        table = rows if self._open is None else pa.concat_tables([self._open, rows])
        event_type = table.column("event_type")
        if pa.types.is_dictionary(event_type.type):  # the source may keep string columns dictionary-encoded
            event_type = event_type.cast(pa.string())
        kind = pc.utf8_lower(event_type).to_numpy(zero_copy_only=False)
        sid = table.column("span_id").fill_null(0).to_numpy()
        pos = np.arange(table.num_rows)
        is_end = kind == "end"
        # The last end of each span id; a begin survives if no end of its span comes after it.
        end_sid, end_pos = sid[is_end], pos[is_end]
        order = np.lexsort((end_pos, end_sid))
        end_sid, end_pos = end_sid[order], end_pos[order]
        last = np.ones(len(end_sid), dtype=bool)
        last[:-1] = end_sid[1:] != end_sid[:-1]
        end_sid, end_pos = end_sid[last], end_pos[last]
        begins = np.flatnonzero(kind == "begin")
        closed = np.zeros(len(begins), dtype=bool)
        if len(end_sid):
            i = np.minimum(np.searchsorted(end_sid, sid[begins]), len(end_sid) - 1)
            closed = (end_sid[i] == sid[begins]) & (end_pos[i] > begins)
        self._open = table.take(pa.array(begins[~closed]))
