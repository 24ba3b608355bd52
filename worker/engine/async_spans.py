"""Async span events (begin/end, time-ordered, any thread) to slices on lane tracks, columnar.

The input is re-cut into windows of ``window`` events (the bytes depend only on the rows, not on the
caller's batching). Per window, pairing is vectorised: the open spans carried from earlier windows are
prepended as virtual begins, then events are stably sorted by span id. In a span id's run of events (in
time order) a begin right after a begin is a duplicate and is dropped; an end right after a begin closes
the span that begin opened; an end after an end (or first in its run) has no begin: it becomes a span cut
at the range begin. Begins left open are carried (memory grows with concurrency, not with trace length);
at the end they close at the range end, cut. A cut is marked with the debug annotation
``trace_worker_cut`` = "begin" (the BEGIN was made up) or "end" (the END was made up). An end earlier
than its begin is clamped to the begin.

Layout (``lanes.place``): a span that surely nests in its open parent goes on the parent's track, at a
depth below Perfetto's 512 (``lanes.MAX_DEPTH``); any other span is a lane root with a track of its own
under the "Async spans" group, linked by a flow from its parent (open at its begin, or closed before
it in the same window), with its ``parent_span_id`` as a debug annotation. A span's BEGIN is written
when it closes (so it lists the flows to all its children), in the window where it closes; a
flow-linked child that begins at its parent's very begin is held and written right after its parent's
BEGIN (``_defer``).

Span keys: a counter from 1 over the trace, in the order spans open in the canonical input (the spans
opened in a window, then its ends without a begin), skipping the process/thread/group uuids: unique per
span even when span ids are reused, independent of batching, and small (short varints). A lane root's
track uuid and the flow id from its parent are its key.

File order per window: the descriptors, then the BEGINs and then the ENDs, each run after a clock reset
and stably sorted by time (``_Parts``), so timestamps are small deltas (``packing``). Ties keep the order
the packets were added in, which is how a held child's BEGIN stays after its parent's at an equal time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from functools import partial

import numpy as np
import numpy.typing as npt

from worker.engine.lanes import NONE, Openers, place
from worker.engine.packing import Times, pack, packet_matrix, reset_packet, times
from worker.engine.rows import CUT_BEGIN, CUT_END, SLICE_BEGIN, SLICE_END, descriptor_matrix
from worker.engine.span_rows import begin_rows, event_matrix, group_vwidths
from worker.engine.wire import varint_width

__all__ = ["AsyncBatch", "AsyncState"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
B = npt.NDArray[np.bool_]
#: Whole packets and their sizes (an array, or one int when all are equal).
_Block = tuple[bytes | memoryview, npt.NDArray[np.int64] | int]


Build = Callable[[Times], tuple[U8, I64]]
_Group = tuple[I64 | None, Build]


class _Parts:
    """The packets of one output block: descriptors, then a reset and the BEGINs, then a reset and the
    ENDs, each run stably sorted by time (what Perfetto's sorter does anyway, ties kept in file order),
    so its timestamps are small deltas on the incremental clock (``packing``)."""

    def __init__(self) -> None:
        self.desc: list[tuple[U8, I64]] = []
        #: Per run, its parts in file order before the sort: the rows' times and the groups of rows
        #: (``sel`` into those rows, None for all of them, and their builder).
        self.runs: tuple[list[tuple[I64, list[_Group]]], list[tuple[I64, list[_Group]]]] = ([], [])
        #: The BEGIN run when it is one ``add_begins`` so far: its times and groups (else None).
        self.merged: tuple[I64, list[tuple[I64, Build]]] | None = None

    def add_desc(self, m: U8, lengths: I64) -> None:
        if len(m):
            self.desc.append((m, lengths))

    def add_begin(self, ts: I64, build: Build) -> None:
        if len(ts):
            self.runs[0].append((ts, [(None, build)]))
            self.merged = None

    def add_begins(self, ts: I64, groups: list[tuple[I64, Build]]) -> None:
        """BEGINs of rows with times ``ts``, in groups (rows ``sel``, ascending, and their builder):
        the same as ``add_begin(ts[sel], build)`` per group, but when they are the whole run and
        ``ts`` strictly increases, the run's time order is the rows' order: no sort (``assemble``)."""
        if not len(ts):
            return
        whole = not self.runs[0]
        for sel, build in groups:
            self.add_begin(ts[sel], build)
        if whole:
            self.merged = (ts, groups)

    def add_rows(self, run: int, ts: I64, groups: Sequence[tuple[I64, Build]]) -> None:
        """Rows with times ``ts`` appended to run ``run`` (0 BEGINs, 1 ENDs) in that order, built in
        groups (rows ``sel``, ascending, covering all rows, and their builder)."""
        if len(ts):
            self.runs[run].append((ts, list(groups)))
            if run == 0:
                self.merged = None

    def add_end(self, ts: I64, build: Build) -> None:
        if len(ts):
            self.runs[1].append((ts, [(None, build)]))

    def assemble(self, t0: int, reset: tuple[U8, I64]) -> tuple[memoryview, I64]:
        """The block's packets back to back, and their sizes."""
        mats: list[U8] = []
        lens: list[I64] = []
        where: list[I64 | None] = []
        pos = 0
        # ``where``: None for rows that stay where they are in the concatenation of the matrices.
        for m, length in self.desc:
            mats.append(m)
            lens.append(length)
            where.append(None)
            pos += len(m)
        for i, run in enumerate(self.runs):
            if not run:
                continue
            mats.append(reset[0])
            lens.append(reset[1])
            where.append(None)
            pos += 1
            if i == 0 and self.merged is not None and bool(np.all(self.merged[0][1:] > self.merged[0][:-1])):
                # Distinct times in row order: each packet's place is its row (the groups' stable sort
                # by time would give the same).
                ts, merged = self.merged
                t = times(ts, t0, ordered=True)
                for sel, build in merged:
                    m, length = build(t.take(sel))
                    mats.append(m)
                    lens.append(length)
                    where.append(pos + sel)
                pos += len(ts)
                continue
            ts = np.concatenate([r[0] for r in run]) if len(run) > 1 else run[0][0]
            if bool(np.all(ts[1:] >= ts[:-1])):  # already in time order (ENDs, mostly): no sort
                t = times(ts, t0, ordered=True)
                at = 0
                for part_ts, groups in run:
                    for part_sel, build in groups:
                        if part_sel is None:
                            m, length = build(t.take(slice(at, at + len(part_ts))))
                            where.append(None)
                        else:
                            m, length = build(t.take(at + part_sel))
                            where.append(pos + at + part_sel)
                        mats.append(m)
                        lens.append(length)
                    at += len(part_ts)
                pos += len(ts)
                continue
            order = np.argsort(ts, kind="stable")
            rank = np.empty(len(ts), dtype=np.int64)
            rank[order] = np.arange(len(ts))
            t = times(ts[order], t0, ordered=True)
            at = 0
            for part_ts, groups in run:
                r = rank[at : at + len(part_ts)]
                for part_sel, build in groups:
                    rs = r if part_sel is None else r[part_sel]
                    m, length = build(t.take(rs))
                    mats.append(m)
                    lens.append(length)
                    where.append(pos + rs)
                at += len(part_ts)
            pos += len(ts)
        return pack(mats, lens, where)


@dataclass
class _Open:
    """Per open span columns used to write BEGINs."""

    begin: I64
    track: U64
    name: U64
    cat: U64
    loc: U64
    parent_sid: I64
    term: U64
    marked: npt.NDArray[np.bool_]  # the BEGIN is cut (opened before the range)


def _begin_rows(
    t: Times,
    *,
    c: _Open,
    rows: I64,
    group: I64,
    widths: tuple[I64 | int, I64 | int, I64 | int],
    layout: I64,
    flows: U64,
) -> tuple[U8, I64]:
    """BEGIN packets of spans ``rows`` (their ``layout`` codes, ``_layouts``), written as one
    ``event_matrix`` call per ``group`` would write them (``span_rows.begin_rows``), ``flows`` the
    ids each owes, rows' runs back to back."""
    return begin_rows(
        t,
        group=group,
        uuid=c.track[rows],
        name=c.name[rows],
        cat=c.cat[rows],
        loc=c.loc[rows],
        widths=widths,
        flow_count=layout >> 3,
        flows=flows,
        term=c.term[rows],
        parent_span=c.parent_sid[rows],
        ann=(layout & 1) != 0,
        cut=(layout & 4) != 0,
    )


#: Rows per group from which a group's BEGINs are one ``event_matrix`` call (column writes, the least
#: work per row) rather than part of one ``begin_rows`` pass over all groups (no per-call overhead,
#: more work per row): small traces have a few thousand BEGINs in a dozen layouts, large windows tens
#: of thousands in two or three.
_GROUP_ROWS = 1024


def _begin_groups(
    c: _Open,
    rows: I64,
    *,
    group: I64,
    widths: tuple[I64 | int, I64 | int, I64 | int],
    layout: I64,
    flows: U64,
) -> list[tuple[I64, Build]]:
    """The builders of the BEGINs of spans ``rows`` (their ``layout`` codes, ``_layouts``; ``flows``
    the ids each owes, rows' runs back to back), written as one ``event_matrix`` call per ``group``
    (the same ``widths`` throughout a group) writes them: (rows' places among ``rows``, builder)."""
    n = len(rows)
    codes = _codes(group)
    if _one_pass(n, codes):
        build = partial(_begin_rows, c=c, rows=rows, group=group, widths=widths, layout=layout, flows=flows)
        return [(np.arange(n), build)]
    count = layout >> 3
    first = np.cumsum(count) - count
    out: list[tuple[I64, Build]] = []
    for code in codes.tolist():
        sel = np.flatnonzero(group == code)
        lay = int(layout[sel[0]])
        k = lay >> 3
        owed = flows[(first[sel][:, None] + np.arange(k)).reshape(-1)].reshape(len(sel), k) if k else None
        w = tuple(x if isinstance(x, int) else int(x[sel[0]]) for x in widths)
        build = partial(
            _begin_matrix,
            c=c,
            rows=rows[sel],
            widths=(w[0], w[1], w[2]),
            flows=owed,
            term=bool(lay & 2),
            ann=bool(lay & 1),
            cut=bool(lay & 4),
        )
        out.append((sel, build))
    return out


def _codes(group: I64) -> I64:
    """The distinct values of ``group`` (small ids: counted, not sorted), ascending."""
    if len(group) and int(group.min()) >= 0 and int(group.max()) < 2 * len(group) + 64:
        return np.flatnonzero(np.bincount(group))
    return np.unique(group)


def _one_pass(n: int, codes: I64) -> bool:
    """Whether ``n`` BEGINs in ``len(codes)`` groups are built by one ``begin_rows`` pass."""
    return n < _GROUP_ROWS * len(codes)


def _begin_matrix(
    t: Times,
    *,
    c: _Open,
    rows: I64,
    widths: tuple[int, int, int],
    flows: U64 | None,
    term: bool,
    ann: bool,
    cut: bool,
) -> tuple[U8, I64]:
    """BEGIN packets of spans ``rows`` of one layout."""
    return event_matrix(
        t,
        SLICE_BEGIN,
        uuid=c.track[rows],
        name=c.name[rows],
        cat=c.cat[rows],
        loc=c.loc[rows],
        widths=widths,
        flows=flows,
        term=c.term[rows] if term else None,
        parent_span=c.parent_sid[rows] if ann else None,
        cut=CUT_BEGIN if cut else 0,
    )


def _layouts(c: _Open, nflows: I64) -> I64:
    """Each span's BEGIN layout code, as ``AsyncState._begins`` groups them: flows, cut, term, annotation."""
    out: I64 = nflows * 8 + c.marked * 4 + (c.term != 0) * 2 + (c.parent_sid != 0)
    return out


def _shapes(c: _Open, layout: I64, group: I64) -> I64:
    """Per span, its layout and the varint widths its BEGIN gets when each ``group`` (dense ids from 0)
    is one ``AsyncState._begins`` call: name, category, location (largest of the group), track uuid
    and annotation (largest of the group's spans of that layout), packed (``_SHAPE_BITS``)."""
    _, by_layout = np.unique(group * (int(layout.max()) + 1) + layout, return_inverse=True)
    by_layout = by_layout.reshape(-1).astype(np.int64)
    ann = (layout & 1) != 0
    shape = layout << _SHAPE_BITS
    for at, g, col in (
        (16, group, c.name),
        (12, group, c.cat),
        (8, group, c.loc),
        (4, by_layout, c.track),
        (0, by_layout, np.where(ann, c.parent_sid.view(np.uint64), np.uint64(0))),
    ):
        shape |= group_vwidths(g, col) << at
    shape &= ~np.where(ann, 0, 15)  # no annotation, no width
    return shape


def _shaped_begins(parts: _Parts, c: _Open, shape: I64, flow_at: I64, flow_id: U64) -> None:
    """BEGINs of the spans of ``c`` added to ``parts`` in row order, written as if built together by
    ``shape`` (``_shapes``), with the flows they owe (``flow_at``: the row owing each, in creation order)."""
    if not len(shape):
        return
    order = np.argsort(flow_at, kind="stable")
    _, group = np.unique(shape, return_inverse=True)
    widths = ((shape >> 16) & 15, (shape >> 12) & 15, (shape >> 8) & 15)
    groups = _begin_groups(
        c,
        np.arange(len(shape)),
        group=group.reshape(-1),
        widths=widths,
        layout=shape >> _SHAPE_BITS,
        flows=flow_id[order],
    )
    parts.add_rows(0, c.begin, groups)


def _depths(up: I64) -> tuple[I64, I64]:
    """Per node of a forest (``up``: parent index, -1 for a root), its root and its depth below it, by
    pointer doubling (a pass per doubling of the depth)."""
    top = np.where(up >= 0, up, np.arange(len(up)))
    depth = (up >= 0).astype(np.int64)
    while True:
        nxt = top[top]
        if np.array_equal(nxt, top):
            return top, depth
        depth = depth + depth[top]
        top = nxt


@dataclass
class _Held:
    """Flow-linked children held until their parent's BEGIN is written (``AsyncState._defer``), one row
    each, in the order they were held (window, then opening order); what their BEGINs (with the flows
    to their own children) and ENDs need, copied out of their window (``AsyncState._hold``).

    A held span's packets are written as they were when each window's held children of one parent
    (a "hold") made their own ``AsyncState._begins`` / END matrices: ``shape`` packs the BEGIN's layout
    (``_begins``) with the varint widths of the name, category and location (largest of the hold), of
    the track uuid and of the annotation (largest of the hold's rows of that layout); ``end_width`` is
    the END's uuid width (largest of the hold). Rows of one shape are built together, whatever hold.
    """

    cols: _Open
    end: I64
    key: U64
    owner: U64  # the key of the parent whose BEGIN it waits for
    hold: I64  # serial of the window that held it
    shape: I64
    end_width: I64
    flow_key: U64  # flows owed by held spans, in creation order: key of the span owing each
    flow_id: U64

    @staticmethod
    def empty() -> _Held:
        e8 = np.zeros(0, dtype=bool)
        cols = _Open(_e_i64(), _e_u64(), _e_u64(), _e_u64(), _e_u64(), _e_i64(), _e_u64(), e8)
        return _Held(cols, _e_i64(), _e_u64(), _e_u64(), _e_i64(), _e_i64(), _e_i64(), _e_u64(), _e_u64())

    def __len__(self) -> int:
        return len(self.key)

    def take(self, rows: I64 | npt.NDArray[np.bool_], flows: npt.NDArray[np.bool_]) -> _Held:
        cols = _Open(*(getattr(self.cols, f.name)[rows] for f in fields(_Open)))
        return _Held(
            cols,
            self.end[rows],
            self.key[rows],
            self.owner[rows],
            self.hold[rows],
            self.shape[rows],
            self.end_width[rows],
            self.flow_key[flows],
            self.flow_id[flows],
        )

    def extend(self, more: _Held) -> None:
        for f in fields(_Held):
            if f.name == "cols":
                for g in fields(_Open):
                    setattr(
                        self.cols,
                        g.name,
                        np.concatenate((getattr(self.cols, g.name), getattr(more.cols, g.name))),
                    )
            else:
                setattr(self, f.name, np.concatenate((getattr(self, f.name), getattr(more, f.name))))


#: Bits of ``_Held.shape`` below the layout: five 4-bit varint widths.
_SHAPE_BITS = 20


def _by_value(values: I64) -> list[I64]:
    """The rows of each distinct value, ascending."""
    return [np.flatnonzero(values == v) for v in np.unique(values).tolist()]


def _end_matrix(t: Times, *, uuid: U64, cut: int = 0) -> tuple[U8, I64]:
    """END packets on tracks ``uuid`` (no name: Perfetto closes the track's most recent open slice)."""
    return event_matrix(t, SLICE_END, uuid=uuid, cut=cut)


@dataclass
class AsyncBatch:
    """Normalised async events of one input batch, in time order."""

    time: I64
    is_begin: npt.NDArray[np.bool_]
    span_id: I64
    parent_id: I64
    name: U64
    cat: U64
    loc: U64
    #: Events before the range, their time raised to its begin: a span opened by one is cut at its begin.
    before: npt.NDArray[np.bool_] | None = None


def _stable_order(values: I64) -> tuple[I64, I64]:
    """``np.argsort(values, kind="stable")`` and the sorted values. When the values' range leaves room,
    each is packed with its position into one int64 key: the keys are distinct, so a sort of the keys
    alone gives the stable order. The keys are sorted with numpy's timsort (``kind="stable"``): span
    ids mostly come in about the order they opened, so the keys are nearly sorted already and it is
    ~2.5x faster on them than the default introsort (and about as fast on random keys)."""
    n = len(values)
    if n:
        lo = int(values.min())
        bits = max(1, (n - 1).bit_length())
        if int(values.max()) - lo < 1 << (62 - bits):
            packed = ((values - lo) << bits) | np.arange(n, dtype=np.int64)
            packed.sort(kind="stable")
            order: I64 = packed & ((1 << bits) - 1)
            return order, (packed >> bits) + lo
    order = np.argsort(values, kind="stable")
    return order, values[order]


def _e_i64() -> I64:
    return np.zeros(0, dtype=np.int64)


def _e_u64() -> U64:
    return np.zeros(0, dtype=np.uint64)


@dataclass
class AsyncState:
    """Pairing and lane state: the spans open so far (in the order they opened) and their pending flows."""

    salt: int
    group_uuid: int
    reserved: U64
    range_begin: int
    range_end: int
    sid: I64 = field(default_factory=_e_i64)
    begin: I64 = field(default_factory=_e_i64)
    key: U64 = field(default_factory=_e_u64)  # unique per span (its own track when it is a root)
    track: U64 = field(default_factory=_e_u64)
    name: U64 = field(default_factory=_e_u64)
    cat: U64 = field(default_factory=_e_u64)
    loc: U64 = field(default_factory=_e_u64)
    parent_key: U64 = field(default_factory=_e_u64)
    parent_sid: I64 = field(default_factory=_e_i64)
    term: U64 = field(default_factory=_e_u64)  # flow id from the parent, 0 for none
    kids_end: I64 = field(default_factory=_e_i64)
    marked: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    flow_parent: I64 = field(default_factory=_e_i64)  # flows owed by open spans: index of the span
    parent_idx: I64 = field(default_factory=_e_i64)  # index of the parent when it is open too, else -1
    flow_id: U64 = field(default_factory=_e_u64)
    spans: int = 0
    cut: int = 0
    dropped: int = 0
    clamped: int = 0
    placed: int = 0
    flows: int = 0
    seen: int = 0  # events laid out so far
    #: Events laid out together: the input is re-cut into windows of this many events, so the layout
    #: and the bytes depend only on the rows, not on how the caller batches them.
    window: int = 1 << 16
    held: list[AsyncBatch] = field(default_factory=list)
    held_rows: int = 0
    #: Flow-linked children that begin at their parent's very begin, held until the parent's BEGIN is
    #: written (see ``_defer``).
    held_spans: _Held = field(default_factory=_Held.empty)
    holds: int = 0  # windows that held spans so far
    #: Where the incremental clock restarts (the trace's clock snapshot time, the range begin).
    t0: int = 0
    next_key: int = 1

    def __post_init__(self) -> None:
        self.reset = packet_matrix(reset_packet(self.t0))

    def _new_keys(self, k: int) -> U64:
        """``k`` fresh span keys (track uuids and flow ids): the next values of a per-trace counter from 1,
        skipping the reserved (process, thread, group) uuids."""
        out = np.arange(self.next_key, self.next_key + k + len(self.reserved), dtype=np.uint64)
        if len(out) and ((self.reserved >= out[0]) & (self.reserved <= out[-1])).any():
            out = out[~np.isin(out, self.reserved)]
        out = out[:k]
        if k:
            self.next_key = int(out[-1]) + 1
        return out

    def add(self, ev: AsyncBatch) -> list[_Block]:
        """Packets of every full window of events so far: blocks of (bytes, packet sizes)."""
        if ev.before is None:
            ev = AsyncBatch(**{**ev.__dict__, "before": np.zeros(len(ev.time), dtype=bool)})
        self.held.append(ev)
        self.held_rows += len(ev.time)
        out: list[_Block] = []
        while self.held_rows >= self.window:
            out += self._window(self._take(self.window))
        return out

    def _take(self, count: int) -> AsyncBatch:
        """The first ``count`` held events as one batch; the rest stay held."""
        names = ("time", "is_begin", "span_id", "parent_id", "name", "cat", "loc", "before")
        if len(self.held) == 1:
            cols = {name: getattr(self.held[0], name) for name in names}
        else:
            cols = {name: np.concatenate([getattr(b, name) for b in self.held]) for name in names}
        head = AsyncBatch(**{k: v[:count] for k, v in cols.items()})
        rest = AsyncBatch(**{k: v[count:] for k, v in cols.items()})
        self.held = [rest] if len(rest.time) else []
        self.held_rows = len(rest.time)
        return head

    def _window(self, ev: AsyncBatch) -> list[_Block]:
        """Packets for one window of events."""
        p = len(self.sid)
        m = len(ev.time)
        if m == 0:
            return []
        n = p + m
        # (nothing carried, as in a small trace's one window: the event columns as they are)
        sid = np.concatenate((self.sid, ev.span_id)) if p else ev.span_id
        is_b = np.concatenate((np.ones(p, dtype=bool), ev.is_begin)) if p else ev.is_begin
        order, s_sid = _stable_order(sid)
        s_b = is_b[order]
        prev_b = np.zeros(n, dtype=bool)  # the previous event (by span id, position) is a begin of this id
        prev_b[1:] = (s_sid[1:] == s_sid[:-1]) & s_b[:-1]
        opener_s = s_b & ~prev_b
        dropped_s = s_b & prev_b
        paired_s = ~s_b & prev_b
        orphan_s = ~s_b & ~prev_b
        # For each paired end (sorted position q), its opener is the last opener before q: the begin
        # right before it unless duplicate begins were dropped in between.
        q = np.flatnonzero(paired_s)
        dropped = int(np.count_nonzero(dropped_s))
        if dropped:
            last_opener = np.maximum.accumulate(np.where(opener_s, np.arange(n), -1))
            opener_of_q = last_opener[q - 1]
        else:
            opener_of_q = q - 1
        # (np.compress, not a boolean subscript: numpy copies a boolean selection run by run, ~4x slower
        # on masks that alternate like these)
        pos_o = np.compress(opener_s, order)  # combined positions of openers, sorted by (sid, position)
        close_at = np.full(n, NONE, dtype=np.int64)
        close_at[order[opener_of_q]] = order[q]
        self.dropped += dropped

        time = np.maximum(ev.time, 0)
        if p:
            time = np.concatenate((self.begin, time))
        self.seen += m

        # The open spans of the batch in opening order.
        is_opener = np.zeros(n, dtype=bool)
        is_opener[pos_o] = True
        op = np.flatnonzero(is_opener)
        k_open = len(op)
        index_of = np.empty(n, dtype=np.int64)  # read at openers only
        index_of[op] = np.arange(k_open)
        ev_rows = op[p:] - p  # the new openers' rows in ``ev``

        # Parent of each new opener (index into ``op``, -1 for none): the last opener of the parent's
        # span id before the child in this window (open at the child's begin, or closed before it).
        parent = np.full(k_open, -1, dtype=np.int64)
        new_open = pos_o[pos_o >= p]
        want = ev.parent_id[new_open - p]
        with_parent = np.flatnonzero(want != 0)  # parent id 0: none (lane roots: searched for no parent)
        if len(with_parent) < len(want):
            new_open, want = new_open[with_parent], want[with_parent]
        if len(new_open):
            o_sid = sid[pos_o]
            step = o_sid[1:] != o_sid[:-1]
            lo = np.searchsorted(o_sid, want, side="left")
            lo_c = np.minimum(lo, len(o_sid) - 1)
            exists = (lo < len(o_sid)) & (o_sid[lo_c] == want)
            if step.all():
                # One opener per span id (the usual case): the parent's opener is the one found, if it
                # opened before the child (else j < lo: none; lo_c keeps a missing parent id in range).
                j = np.where(pos_o[lo_c] < new_open, lo_c, lo - 1)
            else:
                # The last opener of the parent's span id before the child.
                rank = np.concatenate(([0], np.cumsum(step)))
                okey = rank * (n + 1) + pos_o
                j = np.searchsorted(okey, rank[lo_c] * (n + 1) + new_open, side="left") - 1
            parent_pos = pos_o[np.maximum(j, 0)]
            # Open at the child's begin, or closed before it in this window: its BEGIN is still to be
            # written (at the end of this window), so it can carry the flow to the child.
            ok = exists & (j >= lo) & (parent_pos < new_open)
            found = np.flatnonzero(ok)
            parent[index_of[new_open[found]]] = index_of[parent_pos[found]]

        # The lane layout.
        new = op >= p
        cpos = close_at[op]
        closed = cpos != NONE
        begin_t = time[op]
        end_t = np.full(k_open, NONE, dtype=np.int64)
        t_close, t_open = time[cpos[closed]], begin_t[closed]
        end_t[closed] = np.maximum(t_close, t_open)
        self.clamped += int(np.count_nonzero(t_close < t_open))
        par_all = parent.copy()  # new spans' parents, and carried spans' open parents
        par_all[:p] = self.parent_idx
        key = np.zeros(k_open, dtype=np.uint64)
        key[:p] = self.key
        key[p:] = self._new_keys(k_open - p)
        parent_key = np.zeros(k_open, dtype=np.uint64)
        parent_key[:p] = self.parent_key
        has_parent = parent >= 0
        with_open_parent = np.flatnonzero(has_parent)
        parent_key[with_open_parent] = key[parent[with_open_parent]]
        kids_end = np.full(k_open, -1, dtype=np.int64)
        kids_end[:p] = self.kids_end
        track0 = np.zeros(k_open, dtype=np.uint64)
        track0[:p] = self.track
        lanes = Openers(op, begin_t, cpos, end_t, parent, parent_key, key, new, kids_end, track0)
        placed, track = place(lanes)
        self.placed += int(placed.sum())
        parent_sid = np.zeros(k_open, dtype=np.int64)
        parent_sid[:p] = self.parent_sid
        parent_sid[p:] = ev.parent_id[ev_rows]
        term = np.zeros(k_open, dtype=np.uint64)
        term[:p] = self.term
        marked = np.zeros(k_open, dtype=bool)
        marked[:p] = self.marked
        assert ev.before is not None
        marked[p:] = ev.before[ev_rows]
        self.cut += int(np.count_nonzero(marked[p:]))
        linked = new & has_parent & ~placed
        linked_at = np.flatnonzero(linked)
        term[linked_at] = key[linked_at]
        self.flows += len(linked_at)
        flow_parent, flow_id = parent[linked_at], key[linked_at]
        if len(self.flow_parent):
            flow_parent = np.concatenate((self.flow_parent, flow_parent))
            flow_id = np.concatenate((self.flow_id, flow_id))

        names, cats, locs = (np.empty(k_open, dtype=np.uint64) for _ in range(3))
        names[:p], cats[:p], locs[:p] = self.name, self.cat, self.loc
        names[p:], cats[p:], locs[p:] = ev.name[ev_rows], ev.cat[ev_rows], ev.loc[ev_rows]
        cols = _Open(begin_t, track, names, cats, locs, parent_sid, term, marked)
        # Descriptors of the tracks opened in the batch, then the BEGINs, then the ENDs by closing
        # position: every track is declared before use, a slice's BEGIN precedes its END, and at equal
        # timestamps a child's END precedes its parent's (placed children begin strictly after their
        # parent and after their earlier siblings ended, so no other tie on a track depends on file order).
        roots = np.flatnonzero(new & ~placed)
        defer = self._defer(closed, begin_t, (par_all, parent_key, term))
        if defer.any():
            self._hold(
                np.flatnonzero(defer), cols, end=end_t, keys=(key, parent_key), flows=(flow_parent, flow_id)
            )
        closers = np.flatnonzero(closed & ~defer)
        ends_at = np.zeros(n, dtype=bool)
        ends_at[cpos[closers]] = True
        closer_at = np.zeros(n, dtype=np.int64)
        closer_at[cpos[closers]] = closers
        closers_by_end = np.compress(ends_at, closer_at)
        orphans = np.sort(order[orphan_s])
        parts = _Parts()
        parts.add_desc(*descriptor_matrix(track[roots], self.group_uuid))
        ann = ~placed & (parent_sid != 0)
        self._begins(parts, closers, cols, ann=ann, flow_parent=flow_parent, flow_id=flow_id)
        c = closers_by_end
        parts.add_end(end_t[c], partial(_end_matrix, uuid=track[c]))
        self._orphans(parts, orphans, time=time, ev=ev, p=p)
        if len(self.held_spans):  # after the closers' BEGINs: a stable sort keeps that order at equal times
            self._release(parts, key[closers])
        self.spans += int(np.count_nonzero(closed)) + len(orphans)  # held ones included
        self.cut += len(orphans)

        # Carry the spans still open, their children's latest end and the flows they still owe.
        still = np.flatnonzero(~closed)
        # (held ones included: a parent's later children are placed after all its earlier ones ended)
        kid_closed = np.flatnonzero(closed & (par_all >= 0))
        kid_closed = kid_closed[~closed[par_all[kid_closed]]]
        if len(kid_closed):
            np.maximum.at(kids_end, par_all[kid_closed], end_t[kid_closed])
        carried_index = np.full(k_open, -1, dtype=np.int64)
        carried_index[still] = np.arange(len(still))
        self.parent_idx = np.where(par_all[still] >= 0, carried_index[np.maximum(par_all[still], 0)], -1)
        owed_by = carried_index[flow_parent]
        owed = owed_by >= 0
        self.flow_parent, self.flow_id = owed_by[owed], flow_id[owed]
        self.sid, self.begin, self.key, self.track = sid[op[still]], begin_t[still], key[still], track[still]
        self.name, self.cat, self.loc = names[still], cats[still], locs[still]
        self.parent_key, self.parent_sid, self.term = parent_key[still], parent_sid[still], term[still]
        self.kids_end, self.marked = kids_end[still], marked[still]
        data, sizes = parts.assemble(self.t0, self.reset)
        return [(data, sizes)] if data else []

    def _defer(self, closed: B, begin: I64, links: tuple[I64, U64, U64]) -> B:
        """Which spans closing now wait for their parent's BEGIN: linked to it by a flow and beginning at
        the parent's very begin, or whose parent waits itself.

        Perfetto reads events in (timestamp, file position) order and the first event carrying a flow id
        is the flow's source: at equal timestamps the parent's BEGIN (``flow_ids``) must come before the
        child's (``terminating_flow_ids``) in the file. A BEGIN is written only when its span closes, so
        such a child is held and its packets are added to the runs of the window where its parent's BEGIN
        is written, after that BEGIN (``_release``); the runs' stable sort by time keeps them after it.
        ``links``: per span, the index of its parent when open in this window (else -1), the parent's key,
        the flow id from the parent.
        """
        parent, parent_key, term = links
        linked = (term != 0) & closed
        if not linked.any():
            return np.zeros(len(closed), dtype=bool)
        has = parent >= 0
        defer: B = linked & has & (begin == begin[np.maximum(parent, 0)])
        if len(self.held_spans):  # parents closed in an earlier window whose packets are still held
            cand = np.flatnonzero(linked & ~has)
            defer[cand[np.isin(parent_key[cand], self.held_spans.key)]] = True
        return defer

    def _hold(
        self, idx: I64, cols: _Open, *, end: I64, keys: tuple[U64, U64], flows: tuple[I64, U64]
    ) -> None:
        """Hold the spans ``idx`` (ascending; lane roots linked to their parent): their columns, the flows
        they owe, their ends and the shapes of their packets (``_Held``), copied so that the window's
        columns are not kept. Each parent's rows are one hold."""
        key, parent_key = keys
        flow_parent, flow_id = flows
        slot_of = np.full(len(cols.begin), -1, dtype=np.int64)
        slot_of[idx] = np.arange(len(idx))
        slot = slot_of[flow_parent]
        hit = slot >= 0
        sub = _Open(*(getattr(cols, f.name)[idx] for f in fields(_Open)))
        owner = parent_key[idx]
        layout = _layouts(sub, np.bincount(slot[hit], minlength=len(idx)))
        _, hold = np.unique(owner, return_inverse=True)
        hold = hold.reshape(-1).astype(np.int64)
        shape = _shapes(sub, layout, hold)
        self.held_spans.extend(
            _Held(
                sub,
                end[idx],
                key[idx],
                owner,
                np.full(len(idx), self.holds, dtype=np.int64),
                shape,
                group_vwidths(hold, sub.track),
                key[flow_parent[hit]],
                flow_id[hit],
            )
        )
        self.holds += 1

    def _release(self, parts: _Parts, written: U64) -> None:
        """Add the held children of spans whose BEGINs ``parts`` now holds (keys ``written``), and their
        held children, level after level, to its runs after those BEGINs.

        The order is a breadth-first walk: level by level; in a level by parent (the spans ``written``
        in their order, then the held ones in the order their ENDs were added), then by hold; in a hold,
        BEGINs by layout then opening order (``_begins``) and ENDs by opening order. A row's place among
        its level is the order of its path from the written span down (pointer doubling: a sort per
        doubling of the depth, not a pass per level)."""
        h = self.held_spans
        n = len(h)
        if not n or not len(written):
            return
        by_key = np.argsort(h.key)
        sorted_keys = h.key[by_key]
        at = np.minimum(np.searchsorted(sorted_keys, h.owner), n - 1)
        up = np.where(sorted_keys[at] == h.owner, by_key[at], -1)  # the held parent's row
        # The held span at the top of each row's chain, and the row's depth below it.
        top, depth = _depths(up)
        w_order = np.argsort(written, kind="stable")
        w_sorted = written[w_order]
        root_owner = h.owner[top]
        at = np.minimum(np.searchsorted(w_sorted, root_owner), len(w_sorted) - 1)
        out = w_sorted[at] == root_owner
        if not out.any():
            return
        rows = np.flatnonzero(out)
        m = len(rows)
        index = np.full(n, -1, dtype=np.int64)
        index[rows] = np.arange(m)
        parent = np.where(up[rows] >= 0, index[np.maximum(up[rows], 0)], -1)
        level = depth[rows]
        wpos = w_order[at[rows]]
        # Rank of each row's path (the written span's place, then each held span's row, which orders
        # siblings by hold then opening order), compared between rows of one level only.
        _, path = np.unique(wpos * (n + 1) + rows, return_inverse=True)
        path = path.reshape(-1).astype(np.int64)
        jump = parent
        while (jump >= 0).any():
            above = np.where(jump >= 0, path[np.maximum(jump, 0)], -1)
            _, path = np.unique((above + 1) * (m + 1) + path, return_inverse=True)
            path = path.reshape(-1).astype(np.int64)
            jump = np.where(jump >= 0, jump[np.maximum(jump, 0)], -1)
        parent_place = np.where(parent >= 0, path[np.maximum(parent, 0)], wpos)
        shape = h.shape[rows]
        b_rows = rows[np.lexsort((rows, shape >> _SHAPE_BITS, h.hold[rows], parent_place, level))]
        e_rows = rows[np.lexsort((path, level))]

        # BEGINs, built by shape, with the flows each owes in creation order.
        place = np.full(n, -1, dtype=np.int64)
        place[b_rows] = np.arange(m)
        f_place = place[by_key[np.minimum(np.searchsorted(sorted_keys, h.flow_key), n - 1)]]
        f_out = f_place >= 0
        cols = _Open(*(getattr(h.cols, f.name)[b_rows] for f in fields(_Open)))
        _shaped_begins(parts, cols, h.shape[b_rows], f_place[f_out], h.flow_id[f_out])
        e_width = h.end_width[e_rows]
        e_track = h.cols.track[e_rows]
        ends = [(sel, partial(_end_matrix, uuid=e_track[sel])) for sel in _by_value(e_width)]
        parts.add_rows(1, h.end[e_rows], ends)
        self.held_spans = h.take(~out, ~f_out)

    @staticmethod
    def _begins(
        parts: _Parts, idx: I64, c: _Open, *, ann: npt.NDArray[np.bool_], flow_parent: I64, flow_id: U64
    ) -> None:
        """BEGIN rows of spans ``idx``, each with the flows to its children, grouped by layout.

        ``flow_parent`` is the index (into the columns of ``c``) of the span owing each flow.
        """
        if not len(idx):
            return
        nflows = np.zeros(len(idx), dtype=np.int64)
        pair_slot = np.zeros(0, dtype=np.int64)
        pair_flow = np.zeros(0, dtype=np.uint64)
        if len(flow_parent):
            slot_of = np.full(len(c.begin), -1, dtype=np.int64)
            slot_of[idx] = np.arange(len(idx))
            slot = slot_of[flow_parent]
            hit = slot >= 0
            pair_slot = slot[hit]  # index into idx of the parent, in flow creation order
            pair_flow = flow_id[hit]
            nflows = np.bincount(pair_slot, minlength=len(idx))
            ordering = np.argsort(pair_slot, kind="stable")
            pair_slot, pair_flow = pair_slot[ordering], pair_flow[ordering]
        layout = nflows * 8 + c.marked[idx] * 4 + (c.term[idx] != 0) * 2 + ann[idx]
        wn, wc, wl = (varint_width(int(col[idx].max())) for col in (c.name, c.cat, c.loc))
        if not _one_pass(len(idx), _codes(layout)):
            groups = _begin_groups(c, idx, group=layout, widths=(wn, wc, wl), layout=layout, flows=pair_flow)
            parts.add_begins(c.begin[idx], groups)
            return
        # One pass: rows by layout, then opening order, as ``add_begins`` keeps rows of one group per
        # call together, in that order, and ties in time keep it (the flows each row owes move with it).
        perm = np.argsort(layout, kind="stable")
        count = nflows[perm]
        if len(pair_flow):
            start = (np.cumsum(nflows) - nflows)[perm]
            pair_flow = pair_flow[
                np.repeat(start - (np.cumsum(count) - count), count) + np.arange(len(pair_flow))
            ]
        layout = layout[perm]
        groups = _begin_groups(
            c, idx[perm], group=layout, widths=(wn, wc, wl), layout=layout, flows=pair_flow
        )
        parts.add_begins(c.begin[idx], [(perm[sel], build) for sel, build in groups])

    def _orphans(self, parts: _Parts, pos: I64, *, time: I64, ev: AsyncBatch, p: int) -> None:
        """Descriptors, cut BEGINs at the range begin and ENDs of the ends without a begin (own tracks)."""
        if not len(pos):
            return
        uuid = self._new_keys(len(pos))
        parts.add_desc(*descriptor_matrix(uuid, self.group_uuid))
        begin_ts = np.minimum(self.range_begin, time[pos])
        name, cat, loc = ev.name[pos - p], ev.cat[pos - p], ev.loc[pos - p]
        parts.add_begin(
            begin_ts,
            lambda t: event_matrix(t, SLICE_BEGIN, uuid=uuid, name=name, cat=cat, loc=loc, cut=CUT_BEGIN),
        )
        parts.add_end(time[pos], partial(_end_matrix, uuid=uuid))

    def close(self) -> list[_Block]:
        """The last (partial) window, then BEGINs (with their flows) and cut ENDs (at the range end) of
        every span still open."""
        out = self._window(self._take(self.held_rows)) if self.held_rows else []
        k = len(self.sid)
        if k == 0:
            return out
        idx = np.arange(k)
        cols = _Open(
            self.begin, self.track, self.name, self.cat, self.loc, self.parent_sid, self.term, self.marked
        )
        self.cut -= int(np.count_nonzero(self.marked))  # already counted when their begin was cut
        ann = self.parent_sid != 0
        # A flow-linked child beginning at its open parent's very begin goes after it (see ``_defer``):
        # BEGINs added by levels of such ties (the run's stable sort keeps that order at equal times).
        par = self.parent_idx
        tie = (self.term != 0) & (par >= 0) & (self.begin == self.begin[np.maximum(par, 0)])
        parts = _Parts()
        if not tie.any():
            self._begins(parts, idx, cols, ann=ann, flow_parent=self.flow_parent, flow_id=self.flow_id)
        else:
            # Level: how many such ties up from the span; one ``_begins`` per level, ascending, is
            # what is written: rows by level, layout, opening order; the iids' widths of their level,
            # the uuid's and annotation's of their level and layout (``_begin_rows`` groups).
            _, level = _depths(np.where(tie, par, -1))
            layout = _layouts(cols, np.bincount(self.flow_parent, minlength=k))
            rows = np.lexsort((idx, layout, level))
            place = np.empty(k, dtype=np.int64)
            place[rows] = np.arange(k)
            ordered = _Open(*(getattr(cols, f.name)[rows] for f in fields(_Open)))
            level, layout = level[rows], layout[rows]
            span = int(layout.max()) + 1
            group = level * span + layout
            wn, wc, wl = (group_vwidths(level, col) for col in (ordered.name, ordered.cat, ordered.loc))
            order = np.argsort(place[self.flow_parent], kind="stable")
            groups = _begin_groups(
                ordered, idx, group=group, widths=(wn, wc, wl), layout=layout, flows=self.flow_id[order]
            )
            parts.add_rows(0, ordered.begin, groups)
        ts = np.maximum(self.begin, self.range_end)
        parts.add_end(ts, partial(_end_matrix, uuid=self.track, cut=CUT_END))
        if len(self.held_spans):
            self._release(parts, self.key)
        self.spans += k
        self.cut += k
        self.sid = self.begin = self.parent_sid = self.kids_end = _e_i64()
        self.marked = np.zeros(0, dtype=bool)
        self.key = self.track = self.name = self.cat = self.loc = _e_u64()
        self.parent_key = self.term = self.flow_id = _e_u64()
        self.parent_idx = _e_i64()
        self.flow_parent = _e_i64()
        data, sizes = parts.assemble(self.t0, self.reset)
        return [*out, (data, sizes)]
