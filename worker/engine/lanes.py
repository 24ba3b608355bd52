"""Lane layout of async spans: which spans sit under their parent on the parent's track, columnar.

A span opened in a batch is **placed** on its parent's track (drawn under the parent) when, from the
events of that batch and the state carried from earlier ones, it is certain to nest there strictly:

- its parent span is open when it begins, and it begins strictly after the parent began;
- it closes in this batch, no later than its parent (and its END event comes before the parent's);
- it begins strictly after every earlier child of the same parent has ended (siblings on one track never
  touch, so equal timestamps never depend on file order).

Every other span is a **lane root**: it gets a track of its own (named "async", under the async group),
and its placed descendants share that track. A root track holds strictly nested slices, so Perfetto
merges the root tracks (same name, same parent) into as many rows as the peak number of roots open at
once, which is at most the peak number of spans open at once.

The decision uses only sorts, cumulative maxima and a few pointer-following passes (as many as the
nesting depth of placed spans opened in the batch): no Python work per span.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["NONE", "Openers", "place"]

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]
#: "Not in this batch": a close position or an end time beyond every event of the batch.
NONE = np.iinfo(np.int64).max


@dataclass
class Openers:
    """The spans open during one batch, in the order they opened (carried ones first).

    pos: position of the opening event among the batch's events (carried spans: their index).
    begin: begin time (ns). close_pos: position of the closing event, or NONE. end: end time, or NONE.
    parent: index (in these arrays) of the parent span open at the begin, or -1.
    parent_key: key of the parent span (0: none). key: unique key of the span.
    new: opened in this batch. kids_end: for carried spans, the latest end of their children closed in
    earlier batches (NONE's opposite, -1, when none). track: carried spans' track (0 for new ones).
    """

    pos: I64
    begin: I64
    close_pos: I64
    end: I64
    parent: I64
    parent_key: U64
    key: U64
    new: B
    kids_end: I64
    track: U64


def _group_exclusive_max(group: U64, order_key: I64, values: list[I64]) -> list[I64]:
    """Per element and per value array, the max over earlier elements (by ``order_key``) of its group.

    -1 where there is none. Values are mapped to small codes in their order (shifted by their minimum
    when their range is narrow, NONE above all; else ranked), so the segmented maximum is a plain
    cumulative one over ``group rank * (codes + 1) + code``.
    """
    n = len(group)
    if np.all(order_key[1:] >= order_key[:-1]):
        order = np.argsort(group, kind="stable")
    else:
        order = np.lexsort((order_key, group))
    g = group[order]
    start = np.ones(n, dtype=bool)
    start[1:] = g[1:] != g[:-1]
    gid = np.cumsum(start) - 1
    out = []
    groups = int(gid[-1]) + 1 if n else 0
    for value in values:
        v = value[order]
        none = v == NONE
        finite = v[~none] if none.any() else v
        lo, hi = (int(finite.min()), int(finite.max())) if len(finite) else (0, 0)
        top = hi - lo + 2  # the code of NONE, above every other value's
        if (top + 1) * (groups + 1) < 1 << 62:
            # Values in a narrow range (positions, times of one window) and NONE: shifted, not ranked.
            span = top + 1
            code = np.where(none, top, v - (lo - 1))
            uniq = None
        else:
            # Wide values: ranked first, so the keys below cannot overflow.
            uniq, rank = np.unique(v, return_inverse=True)
            span = len(uniq) + 1
            code = rank.astype(np.int64) + 1
        base = gid * span
        run = np.maximum.accumulate(base + code)
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = run[:-1]
        prev_code = prev - base
        prev_code[start] = 0
        res = np.full(n, -1, dtype=np.int64)
        if uniq is None:
            res[order] = np.where(prev_code > 0, np.where(prev_code == top, NONE, prev_code + (lo - 1)), -1)
        else:
            res[order] = np.where(prev_code > 0, uniq[np.maximum(prev_code - 1, 0)], -1)
        out.append(res)
    return out


def place(o: Openers) -> tuple[B, U64]:
    """(placed, track) per opener: whether a new span sits on its parent's track, and every track.

    Carried spans keep their track; roots get their own key as track.
    """
    n = len(o.pos)
    has_parent = o.parent >= 0
    closed = o.close_pos != NONE
    sib = o.parent_key != 0
    prev_close = np.full(n, -1, dtype=np.int64)
    prev_end = np.full(n, -1, dtype=np.int64)
    if sib.any():
        idx = np.flatnonzero(sib)
        prev_close[idx], prev_end[idx] = _group_exclusive_max(
            o.parent_key[idx], o.pos[idx], [o.close_pos[idx], o.end[idx]]
        )
    # The conditions on the new closed spans with an open parent only (gathers of a subset).
    cand = np.flatnonzero(o.new & has_parent & closed)
    par = o.parent[cand]
    begin = o.begin[cand]
    fits = (
        (o.close_pos[cand] < o.close_pos[par])
        & (o.end[cand] <= o.end[par])
        & (prev_close[cand] < o.pos[cand])
        & (prev_end[cand] < begin)
        & (o.kids_end[par] < begin)
        & (begin > o.begin[par])
    )
    placed = np.zeros(n, dtype=bool)
    placed[cand[fits]] = True
    track = np.where(o.new, o.key, o.track)
    resolved = ~placed
    pending = np.flatnonzero(placed)
    # Follow parents until each placed span reaches a root (a parent opens before its child): one pass
    # per level of placed nesting among the spans opened in this batch.
    while len(pending):
        parents = o.parent[pending]
        ready = resolved[parents]
        done = pending[ready]
        track[done] = track[parents[ready]]
        resolved[done] = True
        pending = pending[~ready]
    return placed, track
