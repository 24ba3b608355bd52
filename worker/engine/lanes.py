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

    -1 where there is none. Values are ranked first, so the segmented maximum is a plain cumulative one
    over ``group rank * (distinct values + 1) + value rank``.
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
    for value in values:
        uniq, rank = np.unique(value[order], return_inverse=True)
        span = len(uniq) + 1
        run = np.maximum.accumulate(gid * span + rank.astype(np.int64) + 1)
        prev = np.empty(n, dtype=np.int64)
        prev[1:] = run[:-1]
        prev_rank = prev - gid * span - 1
        prev_rank[start] = -1
        res = np.full(n, -1, dtype=np.int64)
        res[order] = np.where(prev_rank >= 0, uniq[np.maximum(prev_rank, 0)], -1)
        out.append(res)
    return out


def place(o: Openers) -> tuple[B, U64]:
    """(placed, track) per opener: whether a new span sits on its parent's track, and every track.

    Carried spans keep their track; roots get their own key as track.
    """
    n = len(o.pos)
    has_parent = o.parent >= 0
    par = np.where(has_parent, o.parent, 0)
    closed = o.close_pos != NONE
    sib = o.parent_key != 0
    prev_close = np.full(n, -1, dtype=np.int64)
    prev_end = np.full(n, -1, dtype=np.int64)
    if sib.any():
        idx = np.flatnonzero(sib)
        prev_close[idx], prev_end[idx] = _group_exclusive_max(
            o.parent_key[idx], o.pos[idx], [o.close_pos[idx], o.end[idx]]
        )
    placed = (
        o.new
        & has_parent
        & closed
        & (o.close_pos < o.close_pos[par])
        & (o.end <= o.end[par])
        & (prev_close < o.pos)
        & (prev_end < o.begin)
        & (o.kids_end[par] < o.begin)
        & (o.begin > o.begin[par])
    )
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
