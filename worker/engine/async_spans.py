"""Async span events (begin/end, time-ordered, any thread) to one track per span, columnar.

Every async span gets its own TrackDescriptor named "async"; Perfetto merges same-named siblings into
as many rows as the peak number of spans open at once, and a track holding one slice cannot hold a
partial overlap. A span whose parent span is open at its begin gets its track under the parent's track
(merging applies there too); other spans go under the "Async spans" group track.

Pairing, per batch, vectorised: the open spans carried from earlier batches are prepended as virtual
begins, then events are stably sorted by span id. In a span id's run of events (in time order) a begin
right after a begin is a duplicate and is dropped; an end right after a begin closes the span that
begin opened; an end after an end (or first in its run) has no begin: it becomes a span cut at the range
begin. Begins left open are carried (memory grows with concurrency, not with trace length); at the end
they close at the range end, cut. A cut is marked with the debug annotation ``trace_worker_cut`` =
"begin" (the BEGIN was made up) or "end" (the END was made up). An end earlier than its begin is clamped
to the begin.

Track uuids: ``splitmix64(splitmix64(span_id ^ salt) ^ n)`` where salt = the process uuid and n = the
position of the span's first event in the whole input (``^ ORPHAN`` for a span cut at its begin). Every
span gets its own track, even when span ids are reused or repeated, and the uuid does not depend on how
the input is batched. Uuids equal to 0 or to a process/thread/group uuid are re-hashed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from worker.engine.rows import (
    CUT_BEGIN,
    CUT_END,
    NO_CUT,
    SLICE_BEGIN,
    SLICE_END,
    descriptor_rows,
    marked_slice_rows,
    slice_rows,
)

__all__ = ["AsyncBatch", "AsyncState", "splitmix64"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
_ORPHAN = np.uint64(0x6F727068616E2121)
#: Whole packets and their sizes (an array, or one int when all are equal).
_Block = tuple[bytes, npt.NDArray[np.int64] | int]


def splitmix64(x: U64) -> U64:
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


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


@dataclass
class _Columns:
    """Per-event columns of a batch with the carried open spans in front."""

    time: I64
    name: U64
    cat: U64
    loc: U64
    uuid: U64
    before: npt.NDArray[np.bool_]


def _e_i64() -> I64:
    return np.zeros(0, dtype=np.int64)


def _e_u64() -> U64:
    return np.zeros(0, dtype=np.uint64)


@dataclass
class AsyncState:
    """Pairing state: the spans open so far, in the order they opened."""

    salt: int
    group_uuid: int
    reserved: U64
    range_begin: int
    range_end: int
    sid: I64 = field(default_factory=_e_i64)
    begin: I64 = field(default_factory=_e_i64)
    uuid: U64 = field(default_factory=_e_u64)
    name: U64 = field(default_factory=_e_u64)
    cat: U64 = field(default_factory=_e_u64)
    loc: U64 = field(default_factory=_e_u64)
    marked: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    spans: int = 0
    cut: int = 0
    dropped: int = 0
    clamped: int = 0
    seen: int = 0  # events passed to add() so far

    def _uuids(self, sid: I64, seq: I64, extra: np.uint64 | None = None) -> U64:
        """Track uuids from span ids and the events' positions in the whole input (unique per span)."""
        x = sid.view(np.uint64) ^ np.uint64(self.salt)
        if extra is not None:
            x = x ^ extra
        u = splitmix64(splitmix64(x) ^ seq.view(np.uint64))
        bad = (u == 0) | np.isin(u, self.reserved)
        while bad.any():
            u[bad] = splitmix64(u[bad] ^ _ORPHAN)
            bad = (u == 0) | np.isin(u, self.reserved)
        return u

    def add(self, ev: AsyncBatch) -> list[_Block]:
        """Packets for one batch: blocks of (bytes, packet sizes or one size for all)."""
        p = len(self.sid)
        m = len(ev.time)
        if m == 0:
            return []
        n = p + m
        sid = np.concatenate((self.sid, ev.span_id))
        is_b = np.concatenate((np.ones(p, dtype=bool), ev.is_begin))
        order = np.argsort(sid, kind="stable")
        s_sid = sid[order]
        s_b = is_b[order]
        same = np.zeros(n, dtype=bool)
        same[1:] = s_sid[1:] == s_sid[:-1]
        prev_b = np.zeros(n, dtype=bool)
        prev_b[1:] = same[1:] & s_b[:-1]
        opener_s = s_b & ~prev_b
        dropped_s = s_b & prev_b
        paired_s = ~s_b & prev_b
        orphan_s = ~s_b & ~prev_b
        last_opener = np.maximum.accumulate(np.where(opener_s, np.arange(n), -1))
        # For each paired end (sorted position q), its opener is the last opener before q.
        q = np.flatnonzero(paired_s)
        opener_of_q = last_opener[q - 1]
        closed_s = np.zeros(n, dtype=bool)
        closed_s[opener_of_q] = True
        # Positions back in combined (pending + batch) order.
        pos_o = order[opener_s]  # combined positions of openers, sorted by (sid, position)
        close_pos = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        close_pos[order[opener_of_q]] = order[q]

        time = np.concatenate((self.begin, np.maximum(ev.time, 0)))
        name = np.concatenate((self.name, ev.name))
        cat = np.concatenate((self.cat, ev.cat))
        loc = np.concatenate((self.loc, ev.loc))
        uuid = np.zeros(n, dtype=np.uint64)
        uuid[:p] = self.uuid
        new_open = pos_o[pos_o >= p]
        # Position of each event in the whole input (after dropped rows), whatever the batching.
        seq = np.arange(self.seen - p, self.seen + m, dtype=np.int64)
        self.seen += m
        uuid[new_open] = self._uuids(sid[new_open], seq[new_open])

        # Parent track of each new opener: the parent span's opener open at the child's begin.
        parent_uuid = np.full(n, self.group_uuid, dtype=np.uint64)
        if len(new_open):
            parent_id = np.concatenate((np.zeros(p, dtype=np.int64), ev.parent_id))
            o_sid = sid[pos_o]
            rank = np.concatenate(([0], np.cumsum(o_sid[1:] != o_sid[:-1])))
            okey = rank * (n + 1) + pos_o
            want = parent_id[new_open]
            lo = np.searchsorted(o_sid, want, side="left")
            lo_c = np.minimum(lo, len(o_sid) - 1)
            exists = (lo < len(o_sid)) & (o_sid[lo_c] == want) & (want != 0)
            j = np.searchsorted(okey, rank[lo_c] * (n + 1) + new_open, side="left") - 1
            j_c = np.maximum(j, 0)
            parent_pos = pos_o[j_c]
            ok = exists & (j >= lo) & (close_pos[parent_pos] > new_open) & (parent_pos < new_open)
            parent_uuid[new_open[ok]] = uuid[parent_pos[ok]]

        # Per batch token (combined position p..n-1): which packets it produces.
        kind = np.zeros(n, dtype=np.int8)  # 0 nothing, 1 new opener, 2 paired end, 3 orphan end
        kind[order[opener_s]] = 1
        kind[order[paired_s]] = 2
        kind[order[orphan_s]] = 3
        kind[:p] = 0
        kind = kind[p:]
        end_ref = np.arange(n, dtype=np.int64)  # for paired ends: the opener's combined position
        end_ref[order[q]] = order[opener_of_q]
        end_ref = end_ref[p:]
        self.dropped += int(dropped_s.sum())

        before = ev.before if ev.before is not None else np.zeros(m, dtype=bool)
        cols = _Columns(time, name, cat, loc, uuid, np.concatenate((self.marked, before)))
        self.cut += int(np.count_nonzero(cols.before[np.flatnonzero(kind == 1) + p]))
        self.spans += int(((kind == 2) | (kind == 3)).sum())
        self.cut += int((kind == 3).sum())
        blocks = [
            self._opened(np.flatnonzero(kind == 1) + p, cols, parent_uuid),
            self._orphans(np.flatnonzero(kind == 3) + p, cols, sid, seq),
            self._closed(np.flatnonzero(kind == 2) + p, cols, end_ref[kind == 2]),
        ]
        # Carry the spans still open, in opening order.
        still = np.zeros(n, dtype=bool)
        still[order[opener_s & ~closed_s]] = True
        keep = np.flatnonzero(still)
        self.sid, self.begin, self.uuid = sid[keep], time[keep], uuid[keep]
        self.name, self.cat, self.loc = name[keep], cat[keep], loc[keep]
        self.marked = cols.before[keep]
        return [blk for blk in blocks if blk[0]]

    # Each block below is rows of equal layout; within a batch, descriptors and BEGINs come before
    # the ENDs, so a track is declared before use and a slice's BEGIN precedes its END in the file.

    @staticmethod
    def _opened(idx: I64, c: _Columns, parent: U64) -> _Block:
        """Descriptor + BEGIN of each span opened in the batch."""
        if not len(idx):
            return b"", 0
        desc = descriptor_rows(c.uuid[idx], parent[idx])
        marks = np.where(c.before[idx], CUT_BEGIN, NO_CUT).astype(np.uint8)
        if marks.any():  # BEGINs of spans open at the range begin (found by the look-back) are cut
            packets, marked_sizes = marked_slice_rows(
                c.time[idx],
                SLICE_BEGIN,
                c.uuid[idx],
                name=c.name[idx],
                cat=c.cat[idx],
                loc=c.loc[idx],
                marks=marks,
            )
            return _interleave(desc, packets, np.asarray(marked_sizes))
        begin = slice_rows(
            c.time[idx], SLICE_BEGIN, c.uuid[idx], name=c.name[idx], cat=c.cat[idx], loc=c.loc[idx]
        )
        sizes = np.tile(np.array([desc.shape[1], begin.shape[1]], dtype=np.int64), len(idx))
        return np.hstack((desc, begin)).tobytes(), sizes

    def _orphans(self, idx: I64, c: _Columns, sid: I64, seq: I64) -> _Block:
        """Descriptor + cut BEGIN at the range begin + END of each end without a begin."""
        if not len(idx):
            return b"", 0
        uuid = self._uuids(sid[idx], seq[idx], _ORPHAN)
        desc = descriptor_rows(uuid, np.full(len(idx), self.group_uuid, dtype=np.uint64))
        begin_ts = np.minimum(self.range_begin, c.time[idx])
        name, cat, loc = c.name[idx], c.cat[idx], c.loc[idx]
        begin = slice_rows(begin_ts, SLICE_BEGIN, uuid, name=name, cat=cat, loc=loc, annotation=CUT_BEGIN)
        end = slice_rows(c.time[idx], SLICE_END, uuid, name=name, cat=cat, loc=loc)
        sizes = np.tile(np.array([desc.shape[1], begin.shape[1], end.shape[1]], dtype=np.int64), len(idx))
        return np.hstack((desc, begin, end)).tobytes(), sizes

    def _closed(self, idx: I64, c: _Columns, ref: I64) -> _Block:
        """END of each span closed in the batch (never before its begin)."""
        if not len(idx):
            return b"", 0
        ts = np.maximum(c.time[idx], c.time[ref])
        self.clamped += int((ts != c.time[idx]).sum())
        end = slice_rows(ts, SLICE_END, c.uuid[ref], name=c.name[ref], cat=c.cat[ref], loc=c.loc[ref])
        return end.tobytes(), end.shape[1]

    def close(self) -> _Block:
        """ENDs (cut, at the range end) of every span still open, in opening order."""
        k = len(self.sid)
        if k == 0:
            return b"", 0
        self.cut -= int(np.count_nonzero(self.marked))  # already counted when their begin was cut
        self.marked = np.zeros(0, dtype=bool)
        ts = np.maximum(self.begin, self.range_end)
        rows = slice_rows(
            ts, SLICE_END, self.uuid, name=self.name, cat=self.cat, loc=self.loc, annotation=CUT_END
        )
        self.spans += k
        self.cut += k
        self.sid = _e_i64()
        self.begin = _e_i64()
        self.uuid = self.name = self.cat = self.loc = _e_u64()
        return rows.tobytes(), rows.shape[1]


def _interleave(desc: U8, packets: bytes, sizes: npt.NDArray[np.int64]) -> _Block:
    """Descriptor i, then packet i, for each i (packets of varying sizes, back to back)."""
    body = np.frombuffer(packets, dtype=np.uint8)
    n, width = desc.shape
    out = np.empty(n * width + len(body), dtype=np.uint8)
    starts = np.arange(n, dtype=np.int64) * width + np.concatenate(([0], np.cumsum(sizes)[:-1]))
    desc_pos = starts[:, None] + np.arange(width)
    out[desc_pos.ravel()] = desc.ravel()
    mask = np.ones(len(out), dtype=bool)
    mask[desc_pos.ravel()] = False
    out[mask] = body
    all_sizes = np.empty(2 * n, dtype=np.int64)
    all_sizes[0::2], all_sizes[1::2] = width, sizes
    return out.tobytes(), all_sizes
