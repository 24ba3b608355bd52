"""Thread spans (a call tree in preorder, with depths) to BEGIN/END events in Euler-tour order.

Perfetto closes the most recent open slice on a track at each END, sorting events by (timestamp, file
position). So events of one thread are written as the Euler tour of the call tree (parent BEGIN,
children, parent END) with non-decreasing timestamps; at equal timestamps this puts ENDs of spans that
close before BEGINs of spans that open, deeper ENDs first, and a zero-length span's END right after its
BEGIN (after its zero-length descendants).

How, per batch, without a loop per span:

1. *Levels.* Depths are normalised into a Dyck path: the first span of the thread is level 0, each span
   at most one level below its predecessor (``d'_i = min(d_i - base, d'_{i-1} + 1)``, a cumulative min).
2. *Euler tour.* Between span i and span i+1, ``level_i - level_{i+1} + 1`` spans close, at levels
   ``level_i`` down to ``level_{i+1}``. At one level spans open and close alternately, so the i-th
   closing at level L closes the i-th span at level L: two stable (radix) sorts by level pair them.
   Spans still open at the end of the batch (one per level, the open stack) carry over.
3. *Bad data* (detected as a tour whose timestamps decrease) still gives strictly nested output:
   begins are made non-decreasing; a span is clamped
   into its parent (begin and end at most the parent's end, end at least its begin); then a running
   minimum from the back makes the event timestamps non-decreasing (a span ending after a later sibling
   begins ends at that begin). Every span whose timestamps changed is counted in ``clamped``.

4. *Depth bands.* Perfetto's trace processor drops a slice begun on a track that already holds
   :data:`TRACK_DEPTH` (512, its ``kMaxDepth``) open slices, and the END of the dropped slice then
   closes its parent. So a block reaching level 512 gives each event its band, level // 512: the
   encoder puts band k >= 1 on an overflow track of the thread. A band of a strictly nested tour is
   a strictly nested tour (the events of levels [512k, 512k + 511] in file order), at most 512 deep.
   Blocks with every level below 512 (the usual case) carry no bands and cost nothing more.

Cost: each batch is linear in its spans plus the open stack carried in, and the repair of step 3 loops
once per level *holding a span of the batch*. Nesting deeper than :data:`MAX_DEPTH` levels is
:class:`~worker.errors.BadSourceData`, which bounds the carried stack and so the work per batch
whatever the source sends (a hostile source could otherwise make every batch cost its whole depth).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from worker.engine.lanes import MAX_DEPTH as MAX_DEPTH_PER_TRACK
from worker.engine.rows import CUT_BEGIN, CUT_END, NO_CUT, SLICE_BEGIN, SLICE_END
from worker.errors import BadSourceData

__all__ = ["MAX_DEPTH", "TRACK_DEPTH", "Events", "ThreadState"]

# Event kinds are computed as SLICE_END - is_begin.
assert SLICE_BEGIN == SLICE_END - 1
#: Deepest nesting of thread spans accepted (levels below a thread's first span).
MAX_DEPTH = 10_000
#: Open slices a Perfetto track holds at most (``lanes.MAX_DEPTH``, the trace processor's
#: ``SliceTracker::kMaxDepth``). Levels are cut into bands of this many, band k >= 1 on an overflow
#: track (see the module docstring).
TRACK_DEPTH = MAX_DEPTH_PER_TRACK

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


@dataclass
class Events:
    """Slice events of one track in file order."""

    ts: I64
    kind: npt.NDArray[np.uint8]
    #: Iids of the BEGIN events, in file order (an END carries none: it only closes its slice).
    name: U64
    cat: U64
    loc: U64
    #: Per event: NO_CUT, CUT_BEGIN (a BEGIN clipped to the range) or CUT_END (an END clipped to it).
    mark: npt.NDArray[np.uint8]
    #: The largest name, category and location iid of the spans whose BEGIN or END is among the
    #: events (0: none): the width of the iid fields of the block (``rows``).
    top: tuple[int, int, int] = (0, 0, 0)
    #: Per event, its span's depth band: level // TRACK_DEPTH (0: the thread's own track). None: every
    #: event is in band 0 (no level of the block reaches TRACK_DEPTH).
    band: I64 | None = None


def _top(new: U64, carried: U64) -> int:
    """The largest iid of the new spans and of the carried spans closed now."""
    return max(int(new.max()) if len(new) else 0, int(carried.max()) if len(carried) else 0)


def _empty_i64() -> I64:
    return np.zeros(0, dtype=np.int64)


def _empty_u64() -> U64:
    return np.zeros(0, dtype=np.uint64)


@dataclass
class ThreadState:
    """One thread's position in its call tree: the open stack (one span per level) and last begin."""

    begin: I64 = field(default_factory=_empty_i64)  # emitted (clamped) begin
    end: I64 = field(default_factory=_empty_i64)  # clamped end (not yet emitted)
    orig_end: I64 = field(default_factory=_empty_i64)
    counted: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    name: U64 = field(default_factory=_empty_u64)
    cat: U64 = field(default_factory=_empty_u64)
    loc: U64 = field(default_factory=_empty_u64)
    cut: npt.NDArray[np.uint8] = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    last_begin: int = 0
    base_depth: int | None = None
    clamped: int = 0

    def add(
        self,
        begin: I64,
        end: I64,
        depth: I64,
        *,
        name: U64,
        cat: U64,
        loc: U64,
        cut: npt.NDArray[np.uint8] | None = None,
    ) -> Events:
        """Events made complete by a batch of spans (preorder), and the new open stack.

        ``cut`` holds per span CUT_BEGIN / CUT_END bits (clipped to the range); the BEGIN and END
        events carry the matching mark.
        """
        m = len(begin)
        s = len(self.begin)
        if m == 0:
            return _no_events()
        # 1. Non-decreasing, non-negative begins (canonical input is sorted: checked, not accumulated).
        floor = max(self.last_begin, 0)
        if int(begin[0]) >= floor and _ascending(begin):
            b = begin
        else:
            b = np.maximum.accumulate(begin)
            np.maximum(b, floor, out=b)
        self.last_begin = int(b[-1])
        # 2. Levels: a Dyck path continuing the open stack (top level s - 1).
        if self.base_depth is None:
            self.base_depth = int(depth[0])
        e = depth - self.base_depth
        if int(e[0]) <= s and int(e.min()) >= 0 and bool(np.all(e[1:] <= e[:-1] + 1)):
            lv_new = e  # already a Dyck path continuing the stack (the usual case)
        else:
            np.maximum(e, 0, out=e)
            steps = np.arange(1, m + 1, dtype=np.int64)
            e -= steps
            np.minimum(e, s - 1, out=e)
            np.minimum.accumulate(e, out=e)
            e += steps
            lv_new = e
        n = s + m
        lv = np.concatenate((np.arange(s, dtype=np.int64), lv_new))
        top_level = max(int(lv_new.max()), s - 1)
        if top_level > MAX_DEPTH:
            raise BadSourceData(
                f"thread spans nest more than {MAX_DEPTH} levels deep (a call depth no real stack has)"
            )
        # Small ints sort by radix (linear time, one pass per byte) with kind="stable".
        small = np.int8 if top_level < 127 else np.int16
        order = np.argsort(lv.astype(small), kind="stable")  # spans by (level, index)
        # 3. Euler tour: each position k emits its BEGIN (new spans), then the closings of gap k, from
        # level lv[k] down to lv[k + 1].
        closing = np.empty(n, dtype=np.int64)
        np.subtract(lv[:-1], lv[1:], out=closing[:-1])
        closing[:-1] += 1
        closing[-1] = 0
        ends_before = np.cumsum(closing)
        n_ends = int(ends_before[-1])
        ends_before -= closing
        total = n_ends + m
        # Positions are scattered, not searched: new span k's BEGIN follows the ENDs of the gaps before
        # it and the k BEGINs before it. The tour starts s deep (the open stack); a BEGIN opens at the
        # depth so far and an END closes the deepest open span, so an END's level is the depth after
        # it: s plus the running sum of +1 per BEGIN and -1 per END (np.repeat of the gaps' levels
        # costs ~2x more: a call per gap).
        begin_at = ends_before[s:] + np.arange(m, dtype=np.int64)
        is_begin = np.zeros(total, dtype=bool)
        is_begin[begin_at] = True
        ends_at = ~is_begin
        end_pos = np.flatnonzero(ends_at)
        depth_after = is_begin.astype(np.int64)
        depth_after *= 2
        depth_after -= 1
        np.cumsum(depth_after, out=depth_after)
        slot_level = depth_after[end_pos]
        slot_level += s
        # At each level spans open and close alternately, so the i-th closing at level L closes the
        # i-th span at level L; the last span of each level <= the last span's level stays open.
        top = int(lv[-1])
        bounds = np.zeros(top_level + 2, dtype=np.int64)
        np.cumsum(np.bincount(lv, minlength=top_level + 1), out=bounds[1:])
        open_at = bounds[1 : top + 2] - 1
        closed = np.ones(n, dtype=bool)
        closed[open_at] = False
        slot_order = np.argsort(slot_level.astype(small), kind="stable")
        closes = np.empty(n_ends, dtype=np.int64)
        closes[slot_order] = order[closed]
        stack = order[open_at]
        band = None
        if top_level >= TRACK_DEPTH:
            band = np.empty(total, dtype=np.int64)
            band[begin_at] = lv_new
            band[end_pos] = slot_level
            band //= TRACK_DEPTH
        c_end = np.concatenate((self.end, end))
        ts = np.empty(total, dtype=np.int64)
        ts[begin_at] = b
        # By index, not by mask: a boolean assignment branches on every element (BEGINs and ENDs
        # interleave, so it mispredicts) and costs ~4x the index computation and scatter.
        ts[end_pos] = c_end[closes]
        span: I64 | None = None
        # 4. Well-nested data gives non-decreasing timestamps, including the ENDs still to come of the
        # open stack (deepest first). Otherwise clamp into parents and make the tour monotonic.
        stack_ends = c_end[stack][::-1]
        c_begin: I64 | None = None
        raw_end: I64 | None = None
        if _ascending(ts) and _ascending(np.concatenate((ts[-1:], stack_ends))):
            # Only carried ENDs may differ (an earlier batch clamped their open span).
            differ = self.end != self.orig_end
            changed_end = np.flatnonzero(differ & closed[:s]) if differ.any() else None
            changed_begin = b != begin if b is not begin else None
        else:
            c_begin = np.concatenate((self.begin, b))
            raw_end = np.concatenate((self.orig_end, end))
            self._clamp_top_down(c_begin, c_end, lv, order, bounds=bounds, s=s)
            span = _spans(total, begin_at, ends_at, closes, s)
            ts = np.where(is_begin, c_begin[span], c_end[span])
            ts = np.minimum.accumulate(ts[::-1])[::-1]
            changed_end = span[ends_at & (ts != raw_end[span])]
            changed_begin = c_begin[s:] != begin
        # Count spans whose emitted timestamps differ from the input (once each).
        if changed_begin is not None or changed_end is not None:
            c_counted = np.concatenate(
                (self.counted, changed_begin if changed_begin is not None else np.zeros(m, dtype=bool))
            )
            if changed_begin is not None:
                self.clamped += int(changed_begin.sum())
            if changed_end is not None and len(changed_end):
                newly = np.zeros(n, dtype=bool)
                newly[changed_end] = True
                newly &= ~c_counted
                self.clamped += int(newly.sum())
                c_counted |= newly
            counted = c_counted[stack]
        else:
            counted = _pick(self.counted, np.zeros(m, dtype=bool), stack, s)
        if cut is None:
            cut = np.zeros(m, dtype=np.uint8)
        if cut.any() or self.cut.any():
            if span is None:
                span = _spans(total, begin_at, ends_at, closes, s)
            mark = _marks(np.concatenate((self.cut, cut))[span], is_begin)
        else:
            mark = np.zeros(total, dtype=np.uint8)
        # BEGINs come in span order: their iids are the batch's, no gather. ENDs need none.
        closed_carried = closed[:s]
        events = Events(
            ts=ts,
            kind=np.subtract(SLICE_END, is_begin, dtype=np.uint8),  # SLICE_BEGIN = SLICE_END - 1
            name=name,
            cat=cat,
            loc=loc,
            mark=mark,
            top=(
                _top(name, self.name[closed_carried]),
                _top(cat, self.cat[closed_carried]),
                _top(loc, self.loc[closed_carried]),
            ),
            band=band,
        )
        self.begin = _pick(self.begin, b, stack, s) if c_begin is None else c_begin[stack]
        self.orig_end = _pick(self.orig_end, end, stack, s) if raw_end is None else raw_end[stack]
        self.end = c_end[stack]
        self.counted = counted
        self.name = _pick(self.name, name, stack, s)
        self.cat = _pick(self.cat, cat, stack, s)
        self.loc = _pick(self.loc, loc, stack, s)
        self.cut = _pick(self.cut, cut, stack, s)
        return events

    @staticmethod
    def _clamp_top_down(c_begin: I64, c_end: I64, lv: I64, order: I64, *, bounds: I64, s: int) -> None:
        """begin <= parent end, begin <= end <= parent end; parents before children (by level)."""
        n = len(lv)
        keys = lv[order] * n + order
        # Only levels holding a span of this batch need work (carried spans were clamped before).
        for level in np.unique(lv[s:]).tolist():
            idx = order[bounds[level] : bounds[level + 1]]
            idx = idx[idx >= s]
            if not len(idx):
                continue
            if level == 0:
                c_end[idx] = np.maximum(c_end[idx], c_begin[idx])
                continue
            # The parent: the latest span one level up before the child.
            parent = order[np.searchsorted(keys, (level - 1) * n + idx - 1, side="right") - 1]
            cap = c_end[parent]
            c_begin[idx] = np.minimum(c_begin[idx], cap)
            c_end[idx] = np.maximum(np.minimum(c_end[idx], cap), c_begin[idx])

    def close(self) -> Events:
        """ENDs of every open span, deepest first (the thread has no more spans)."""
        rev = slice(None, None, -1)
        ts = self.end[rev]
        band = None
        if len(ts) > TRACK_DEPTH:  # deepest first: levels len(ts) - 1 down to 0
            band = np.arange(len(ts) - 1, -1, -1, dtype=np.int64) // TRACK_DEPTH
        changed = (ts != self.orig_end[rev]) & ~self.counted[rev]
        self.clamped += int(changed.sum())
        events = Events(
            ts=ts.copy(),
            kind=np.full(len(ts), SLICE_END, dtype=np.uint8),
            name=_empty_u64(),
            cat=_empty_u64(),
            loc=_empty_u64(),
            mark=_marks(self.cut[rev], np.zeros(len(ts), dtype=bool)),
            top=(_top(self.name, self.name), _top(self.cat, self.cat), _top(self.loc, self.loc)),
            band=band,
        )
        self.begin = self.end = self.orig_end = _empty_i64()
        self.cut = np.zeros(0, dtype=np.uint8)
        self.counted = np.zeros(0, dtype=bool)
        self.name = self.cat = self.loc = _empty_u64()
        # Spans fed after this (the thread reopened) begin no earlier than what was written.
        if len(ts):
            self.last_begin = max(self.last_begin, int(ts.max()))
        self.base_depth = None
        return events


def _ascending(a: I64) -> bool:
    """Whether ``a`` is non-decreasing (a check costs a fraction of a running maximum)."""
    return bool(np.all(a[1:] >= a[:-1]))


_T = TypeVar("_T", bound=np.generic)


def _pick(carried: npt.NDArray[_T], new: npt.NDArray[_T], idx: I64, s: int) -> npt.NDArray[_T]:
    """``concatenate((carried, new))[idx]`` (``s`` = len(carried)) without the concatenation."""
    out = np.empty(len(idx), dtype=new.dtype)
    old = idx < s
    out[old] = carried[idx[old]]
    out[~old] = new[idx[~old] - s]
    return out


def _spans(total: int, begin_at: I64, ends_at: npt.NDArray[np.bool_], closes: I64, s: int) -> I64:
    """The span (index among carried + new) of each event in file order."""
    span = np.empty(total, dtype=np.int64)
    span[begin_at] = np.arange(s, s + len(begin_at), dtype=np.int64)
    span[ends_at] = closes
    return span


def _no_events() -> Events:
    return Events(
        ts=_empty_i64(),
        kind=np.zeros(0, dtype=np.uint8),
        name=_empty_u64(),
        cat=_empty_u64(),
        loc=_empty_u64(),
        mark=np.zeros(0, dtype=np.uint8),
    )


def _marks(span_cut: npt.NDArray[np.uint8], is_begin: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """The mark each event carries: CUT_BEGIN on a clipped BEGIN, CUT_END on a clipped END."""
    bit = np.where(is_begin, CUT_BEGIN, CUT_END).astype(np.uint8)
    return np.where((span_cut & bit) != 0, bit, NO_CUT).astype(np.uint8)
