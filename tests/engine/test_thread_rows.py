"""The word-at-a-time thread row builder writes exactly the bytes of the byte-column one, and a
thread's closing ENDs joined to its last block write the bytes of the two blocks."""

from __future__ import annotations

import numpy as np
import pytest

from worker.engine.encoder import _joined
from worker.engine.packing import times
from worker.engine.rows import (
    SLICE_BEGIN,
    SLICE_END,
    _plain_thread_rows,
    _word_thread_rows,
    thread_event_rows,
)
from worker.engine.thread_spans import ThreadState
from worker.engine.wire import varint_width


@pytest.mark.parametrize("seed", range(40))
def test_word_rows_match_byte_rows(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    # Deltas of every varint width (1-9 bytes), iids of every width up to 8 bytes.
    step_bits = int(rng.integers(0, 63))
    ts = np.cumsum(rng.integers(0, 1 << step_bits, n, dtype=np.int64) // max(n, 1)).astype(np.int64)
    t = times(ts, 0)
    # Every fifth block holds ENDs only (a thread's last open spans), built without iid words.
    share = 0.0 if seed % 5 == 0 else 0.5
    kinds = np.where(rng.random(n) < share, SLICE_BEGIN, SLICE_END).astype(np.uint8)
    is_begin = kinds == SLICE_BEGIN
    # Dense iids (looked up in a table) and sparse ones up to 8 varint bytes (computed).
    iids = [rng.integers(0, 1 << int(rng.integers(1, 56)), n, dtype=np.uint64) for _ in range(3)]
    if seed % 2:
        iids[0] = rng.integers(0, 5000, n, dtype=np.uint64)
    top = (int(iids[0].max()), int(iids[1].max()), int(iids[2].max()))
    widths = (varint_width(top[0]), varint_width(top[1]), varint_width(top[2]))
    kw = {"name": iids[0], "cat": iids[1], "loc": iids[2], "widths": widths}
    want, want_sizes = _plain_thread_rows(t, kinds, is_begin, **kw)  # type: ignore[arg-type]
    # The word builder takes the BEGINs' iids only (an END writes none).
    begin_kw = {**kw, "name": iids[0][is_begin], "cat": iids[1][is_begin], "loc": iids[2][is_begin]}
    got, sizes = _word_thread_rows(t, is_begin, **begin_kw, top=top)
    assert bytes(got) == bytes(want)
    assert np.array_equal(sizes, want_sizes)


@pytest.mark.parametrize("seed", range(30))
def test_closing_ends_joined_to_the_last_block_write_the_same_bytes(seed: int) -> None:
    """A thread's last block and the ENDs closing its open spans, joined (encoder._joined), are the
    bytes of the two blocks written one after the other; a join that would change them is refused."""
    rng = np.random.default_rng(seed)
    m = int(rng.integers(1, 300))
    depth = np.zeros(m, dtype=np.int64)
    for i in range(1, m):
        depth[i] = max(0, int(depth[i - 1]) + int(rng.integers(-2, 2)))
    begin = np.cumsum(rng.integers(0, 3, m)).astype(np.int64) + 1000
    end = begin + 10_000 - depth * 10  # children end before their parents: well nested
    if seed % 3 == 0:
        end[-1] = begin[-1] - 5  # bad data: the last span is clamped
    # Iids of every width: the open stack may hold wider ones than the block's other spans.
    iids = [rng.integers(1, 1 << int(rng.integers(1, 15)), m, dtype=np.uint64) for _ in range(3)]
    state = ThreadState()
    state.add(begin[:1], end[:1], depth[:1], name=iids[0][:1], cat=iids[1][:1], loc=iids[2][:1])
    events = state.add(begin[1:], end[1:], depth[1:], name=iids[0][1:], cat=iids[1][1:], loc=iids[2][1:])
    closing = state.close()
    base = 1000
    joined = _joined(events, closing, base)
    parts = []
    t0 = base
    for e in (events, closing):
        if len(e.ts):
            data, sizes = thread_event_rows(
                e.ts, e.kind, name=e.name, cat=e.cat, loc=e.loc, marks=e.mark, t0=t0, top=e.top
            )
            parts.append((bytes(data), sizes))
            t0 = max(t0, int(e.ts.max()))
    if joined is None:
        assert any(
            varint_width(a) != varint_width(max(a, b)) for a, b in zip(events.top, closing.top, strict=True)
        )
        return
    data, sizes = thread_event_rows(
        joined.ts,
        joined.kind,
        name=joined.name,
        cat=joined.cat,
        loc=joined.loc,
        marks=joined.mark,
        t0=base,
        top=joined.top,
    )
    assert bytes(data) == b"".join(p for p, _ in parts)
    assert np.array_equal(sizes, np.concatenate([s for _, s in parts]))
