"""Thread spans: call trees planned per stream, generated block by block with numpy.

A stream's timeline is a sequence of call trees (one per "frame" of work), each in its own time
slot. The plan (:class:`ThreadPlan`) holds only per-tree sizes and slots, a few arrays of a few
thousand entries, so counts and time bounds are exact without generating a span. Trees are grouped
into blocks of about ``block_rows`` rows; a block is generated from ``(seed, process, stream,
block)`` alone, so any block can be produced independently and skipped when outside a range.

Within a tree, rows are in preorder, which is ascending ``begin`` (as Micromegas serves them), the
first row being the synthetic root (``id = -1``, ``depth = 0``, named after the thread, spanning
the tree) as Micromegas's call-tree builder emits it. Nesting is exact: every child lies within its
parent and siblings never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worker.devserver.names import NameTable

__all__ = ["ThreadBlock", "ThreadPlan", "generate_block", "plan_stream"]

#: Mean raw time per preorder step reserved in a tree's slot (ns); trees rarely need it all.
_SLOT_NS_PER_ROW = 60_000
#: Padding between nested ends (ns), keeps ends strictly ordered before scaling.
_PAD_NS = 100.0
#: Minimum extra gap between consecutive begins (ns).
_MIN_GAP_NS = 50.0
#: Depth random-walk steps and their probabilities: slightly negative drift, so trees are mostly
#: shallow with excursions beyond depth 8 in most large trees.
_STEPS = np.array([1, 0, -1, -2, -4], dtype=np.int64)
_STEP_P = np.array([0.42, 0.30, 0.17, 0.07, 0.04])


@dataclass(frozen=True)
class ThreadPlan:
    """Per-stream layout: trees, their slots and the blocks that group them."""

    tree_rows: np.ndarray  # int64, rows per tree including its synthetic root
    tree_start: np.ndarray  # int64 epoch ns, slot start = root begin
    tree_slot: np.ndarray  # int64 ns, slot length (the tree ends within it)
    tree_row_start: np.ndarray  # int64, rows of the stream before this tree
    block_first_tree: np.ndarray  # int64, len = blocks + 1 (sentinel = number of trees)

    @property
    def rows(self) -> int:
        return int(self.tree_rows.sum())

    @property
    def block_count(self) -> int:
        return len(self.block_first_tree) - 1

    def block_bounds(self, block: int) -> tuple[int, int]:
        """[first begin, last possible end] of a block, epoch ns."""
        first, last = int(self.block_first_tree[block]), int(self.block_first_tree[block + 1]) - 1
        return int(self.tree_start[first]), int(self.tree_start[last] + self.tree_slot[last])

    def block_rows(self, block: int) -> int:
        first, stop = int(self.block_first_tree[block]), int(self.block_first_tree[block + 1])
        return int(self.tree_rows[first:stop].sum())

    @property
    def end_ns(self) -> int:
        return int(self.tree_start[-1] + self.tree_slot[-1]) if len(self.tree_start) else 0


def plan_stream(rng: np.random.Generator, target_rows: int, start_ns: int, block_rows: int) -> ThreadPlan:
    """Lay out about ``target_rows`` rows (at least one tree) of call trees from ``start_ns``."""
    draws = max(16, target_rows // 40 + 16)
    sizes = np.empty(0, dtype=np.int64)
    while True:  # draw tree sizes until they cover the target (one or two rounds)
        more = np.clip(np.rint(rng.lognormal(np.log(80.0), 1.1, size=draws)), 1, 4000).astype(np.int64)
        sizes = np.concatenate([sizes, more + 1])  # + the synthetic root
        if sizes.sum() >= target_rows:
            break
    cut = int(np.searchsorted(np.cumsum(sizes), target_rows)) + 1
    rows = sizes[: max(cut, 1)]
    slot = rows * _SLOT_NS_PER_ROW
    idle = np.rint(rng.lognormal(np.log(2e6), 1.0, size=len(rows))).astype(np.int64)
    step = slot + idle
    tree_start = start_ns + np.concatenate([[0], np.cumsum(step)[:-1]])
    row_start = np.concatenate([[0], np.cumsum(rows)[:-1]])
    block_of_tree = row_start // block_rows
    firsts = np.flatnonzero(np.concatenate([[True], block_of_tree[1:] != block_of_tree[:-1]]))
    return ThreadPlan(
        tree_rows=rows,
        tree_start=tree_start.astype(np.int64),
        tree_slot=slot.astype(np.int64),
        tree_row_start=row_start.astype(np.int64),
        block_first_tree=np.concatenate([firsts, [len(rows)]]).astype(np.int64),
    )


@dataclass(frozen=True)
class ThreadBlock:
    """One generated block of a stream's thread spans, as plain numpy columns."""

    id: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    begin: np.ndarray
    end: np.ndarray
    name_index: np.ndarray  # into the process's span-name dictionary


def _depths(rng: np.random.Generator, tree_rows: np.ndarray) -> np.ndarray:
    """Preorder depths for consecutive trees: 0 for each root, a reflected random walk below."""
    total = int(tree_rows.sum())
    steps = rng.choice(_STEPS, size=total, p=_STEP_P)
    roots = np.concatenate([[0], np.cumsum(tree_rows)[:-1]])
    tree_of_row = np.repeat(np.arange(len(tree_rows)), tree_rows)
    walk = np.cumsum(steps)
    firsts = roots + 1  # every tree has a root and at least one real span
    walk = walk - walk[firsts][tree_of_row]  # the first real span sits at 0, i.e. depth 1
    walk[roots] = 0
    # Segments drift down by a large offset so the running minimum restarts in each tree.
    shifted = walk - tree_of_row.astype(np.int64) * (2 * total + 2)
    depth = shifted - np.minimum.accumulate(shifted) + 1
    depth[roots] = 0
    result: np.ndarray = depth.astype(np.int64)
    return result


def _last_descendant_and_parent(depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For preorder ``depth``: index of each row's last descendant, and of its parent (-1 for roots).

    One stable sort by depth gives every level's rows in index order; a row's parent is the last
    row one level up before it, and a parent's last descendant is its last child's (deepest first).
    """
    n = len(depth)
    order = np.argsort(depth, kind="stable")
    top = int(depth[order[-1]]) if n else 0
    bounds = np.searchsorted(depth[order], np.arange(top + 2))
    parent = np.full(n, -1, dtype=np.int64)
    for d in range(1, top + 1):
        rows, above = order[bounds[d] : bounds[d + 1]], order[bounds[d - 1] : bounds[d]]
        parent[rows] = above[np.searchsorted(above, rows) - 1]
    last = np.arange(n, dtype=np.int64)
    for d in range(top, 0, -1):
        rows = order[bounds[d] : bounds[d + 1]]
        np.maximum.at(last, parent[rows], last[rows])
    return last, parent


def generate_block(
    rng: np.random.Generator,
    plan: ThreadPlan,
    block: int,
    names: NameTable,
    root_name_index: int,
) -> ThreadBlock:
    """Generate every row of ``block`` (see the module docstring for the guarantees)."""
    first, stop = int(plan.block_first_tree[block]), int(plan.block_first_tree[block + 1])
    tree_rows = plan.tree_rows[first:stop]
    n = int(tree_rows.sum())
    roots = np.concatenate([[0], np.cumsum(tree_rows)[:-1]])
    tree_of_row = np.repeat(np.arange(len(tree_rows)), tree_rows)
    depth = _depths(rng, tree_rows)
    last, parent_idx = _last_descendant_and_parent(depth)

    # Raw times (float ns from each tree's root): begins advance by the previous row's leaf time
    # plus padding per level closed, so ends computed from last descendants nest strictly.
    leaf = np.clip(rng.lognormal(np.log(8_000.0), 1.3, size=n), 200.0, 5e6)
    leaf[roots] = 0.0
    extra = _MIN_GAP_NS + rng.lognormal(np.log(2_000.0), 1.2, size=n)
    gap = np.empty(n)
    gap[0] = 0.0
    gap[1:] = leaf[:-1] + _PAD_NS * (depth[:-1] - depth[1:] + 1) + extra[1:]
    gap[roots] = 0.0
    cum = np.cumsum(gap)
    rel_begin = cum - cum[roots][tree_of_row]
    rel_end = rel_begin[last] + leaf[last] + _PAD_NS * (depth[last] - depth)
    # Fit each tree into its slot (shrink only): keeps the plan's bounds exact.
    extent = rel_end[roots]
    slots = plan.tree_slot[first:stop].astype(np.float64)
    scale = np.minimum(1.0, slots / np.maximum(extent, 1.0))[tree_of_row]
    start = plan.tree_start[first:stop][tree_of_row]
    begin = start + np.floor(rel_begin * scale).astype(np.int64)
    end = start + np.floor(rel_end * scale).astype(np.int64)

    # Ids are unique in the stream: its row number + 1; roots carry Micromegas's -1.
    ordinal = plan.tree_row_start[first] + np.arange(n, dtype=np.int64) + 1
    ids = ordinal.copy()
    ids[roots] = -1
    parent = np.where(parent_idx >= 0, ids[np.maximum(parent_idx, 0)], -1)
    # Names skew towards a few hot functions; roots are named after the thread.
    u = rng.random(n)
    name_index = np.floor(len(names) * u * u).astype(np.int32)
    name_index[roots] = root_name_index
    return ThreadBlock(id=ids, parent=parent, depth=depth, begin=begin, end=end, name_index=name_index)
