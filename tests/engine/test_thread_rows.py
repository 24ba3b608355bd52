"""The word-at-a-time thread row builder writes exactly the bytes of the byte-column one."""

from __future__ import annotations

import numpy as np
import pytest

from worker.engine.packing import times
from worker.engine.rows import SLICE_BEGIN, SLICE_END, _plain_thread_rows, _word_thread_rows
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
