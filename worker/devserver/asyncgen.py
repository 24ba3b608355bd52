"""Async span events: begin/end pairs across thread streams, generated block by block with numpy.

The process's timeline is cut into equal windows, one per block of ``block_items`` spans. A
generated block holds small span trees (a root at depth 0 and children at depth 1-2, linked by
``parent_span_id``) whose roots begin inside the window; many overlap (real concurrency). Every span
has a ``begin`` event; its ``end`` event may come from another stream (a future resumed on another
worker thread), and is missing when the span is still open at the end of the data (its end falls
after the process's last time, or it never ends). Durations are capped at :data:`MAX_WINDOWS`
windows, so the events recorded in a window come from that window's block and the
:data:`MAX_WINDOWS` blocks before it: :func:`select_window` assembles them, which makes the
served blocks ordered by time (as each stream's blocks are upstream) and disjoint in time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.devserver.windows import WindowPlan

__all__ = ["MAX_WINDOWS", "AsyncBlock", "generate_block", "select_window"]

#: Longest async span, in block windows (bounds which blocks a time range needs).
MAX_WINDOWS = 2
#: Fraction of spans that never end (still open at the end of the data).
_NEVER_ENDS = 0.002
#: Fraction of spans whose end event is recorded on another stream than the begin.
_CROSS_STREAM = 0.3


@dataclass(frozen=True)
class AsyncBlock:
    """Events of one block, ordered by time: numpy columns."""

    time: np.ndarray  # int64 epoch ns
    is_begin: np.ndarray  # bool
    span_id: np.ndarray  # int64
    parent_span_id: np.ndarray  # int64, 0 for roots
    depth: np.ndarray  # int64
    stream_index: np.ndarray  # int64, index of the thread stream that recorded the event
    name_index: np.ndarray  # int32, into the process's async name table


def generate_block(
    rng: np.random.Generator, plan: WindowPlan, block: int, stream_count: int, name_count: int
) -> AsyncBlock:
    """Generate the events of ``block``; span ids are unique in the process (block-based)."""
    n = plan.block_item_count(block)
    w_begin, _ = plan.block_window(block)
    window = plan.window_ns
    # Trees of 1-6 spans: root, then depth-1 children, some with depth-2 grandchildren.
    sizes = rng.integers(1, 7, size=n)
    cut = int(np.searchsorted(np.cumsum(sizes), n)) + 1
    sizes = sizes[:cut]
    sizes[-1] -= int(sizes.sum()) - n
    sizes = sizes[sizes > 0]
    roots = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    tree = np.repeat(np.arange(len(sizes)), sizes)
    is_root = np.zeros(n, dtype=bool)
    is_root[roots] = True
    depth = np.where(is_root, 0, np.where(rng.random(n) < 0.35, 2, 1)).astype(np.int64)
    depth[roots[sizes > 1] + 1] = 1  # the first child of a root is at depth 1
    # A depth-2 span's parent is the nearest preceding depth-1 span of its tree; depth-1's is the root.
    ones = np.flatnonzero(depth == 1)
    idx = np.arange(n)
    parent_idx = np.where(depth == 1, roots[tree], -1)
    twos = depth == 2
    parent_idx[twos] = ones[np.searchsorted(ones, idx[twos]) - 1]
    span_id = block * plan.block_items + idx.astype(np.int64) + 1
    parent_span_id = np.where(parent_idx >= 0, span_id[np.maximum(parent_idx, 0)], 0)

    # Roots begin anywhere in the window; children start and end inside their parent.
    max_dur = float(MAX_WINDOWS * window)
    root_begin = w_begin + np.floor(rng.random(len(sizes)) * window)
    root_dur = np.minimum(rng.lognormal(np.log(max(window, 1000) / 20.0), 1.2, size=len(sizes)), max_dur)
    begin = np.empty(n)
    dur = np.empty(n)
    begin[roots], dur[roots] = root_begin, np.maximum(root_dur, 10.0)
    for level in (1, 2):  # parents are always generated before their children
        rows = np.flatnonzero(depth == level)
        p = parent_idx[rows]
        frac = rng.random(len(rows)) * 0.5
        begin[rows] = begin[p] + frac * dur[p]
        dur[rows] = dur[p] * (1.0 - frac) * rng.uniform(0.2, 0.95, size=len(rows))
    # Nothing is recorded after the process's last time (its last block ends there, and upstream's
    # events live in blocks): a span that would begin later begins then, still open.
    begin_ns = np.minimum(np.floor(begin).astype(np.int64), plan.end_ns)
    end_ns = begin_ns + np.maximum(np.floor(dur).astype(np.int64), 1)

    ends = (end_ns <= plan.end_ns) & (rng.random(n) >= _NEVER_ENDS)
    begin_stream = rng.integers(0, stream_count, size=n)
    cross = rng.random(n) < _CROSS_STREAM
    end_stream = np.where(cross, rng.integers(0, stream_count, size=n), begin_stream)
    name_index = rng.integers(0, name_count, size=n).astype(np.int32)

    e = np.flatnonzero(ends)
    time = np.concatenate([begin_ns, end_ns[e]])
    order = np.argsort(time, kind="stable")
    pick = np.concatenate([idx, e])[order]
    return AsyncBlock(
        time=time[order],
        is_begin=(np.concatenate([np.ones(n, bool), np.zeros(len(e), bool)]))[order],
        span_id=span_id[pick],
        parent_span_id=parent_span_id[pick],
        depth=depth[pick],
        stream_index=np.concatenate([begin_stream, end_stream[e]])[order],
        name_index=name_index[pick],
    )


def select_window(blocks: list[AsyncBlock], lo: int | None, hi: int | None) -> AsyncBlock:
    """The events of ``blocks`` with ``lo <= time < hi`` (None: unbounded), ordered by time."""
    time = np.concatenate([b.time for b in blocks])
    keep = np.ones(len(time), dtype=bool)
    if lo is not None:
        keep &= time >= lo
    if hi is not None:
        keep &= time < hi
    order = np.flatnonzero(keep)
    order = order[np.argsort(time[order], kind="stable")]

    def pick(column: str) -> np.ndarray:
        values: np.ndarray = np.concatenate([getattr(b, column) for b in blocks])[order]
        return values

    return AsyncBlock(
        time=pick("time"),
        is_begin=pick("is_begin"),
        span_id=pick("span_id"),
        parent_span_id=pick("parent_span_id"),
        depth=pick("depth"),
        stream_index=pick("stream_index"),
        name_index=pick("name_index"),
    )
