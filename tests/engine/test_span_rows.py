"""Async BEGIN packets of mixed layouts built in one pass (worker/engine/span_rows.py ``begin_rows``):
byte for byte what ``event_matrix`` writes for each group of rows, whatever the layouts, widths and
times."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.packing import times
from worker.engine.span_rows import CUT_BEGIN, SLICE_BEGIN, begin_rows, event_matrix

T0 = 1_760_000_000_000_000_000

#: Per group: flows per row, terminating flow, annotation, cut, and how large its values get (bits).
_group = st.tuples(
    st.integers(0, 14),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.sampled_from([6, 7, 14, 21, 35, 63, 64]),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(_group, min_size=1, max_size=6), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_begin_rows_matches_one_event_matrix_per_group(
    groups: list[tuple[int, bool, bool, bool, int]], n: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    group = rng.integers(0, len(groups), n).astype(np.int64)
    k, term_on, ann_on, cut_on, bits = (np.array(col)[group] for col in zip(*groups, strict=True))

    def values(top_bits: int) -> np.ndarray:
        return rng.integers(0, 2**62, n, dtype=np.uint64) >> np.uint64(64 - min(top_bits, 62)) | (
            np.uint64(1 << 63) if top_bits == 64 else np.uint64(0)
        ) * rng.integers(0, 2, n).astype(np.uint64)

    uuid = np.maximum(values(int(bits.max())), 1)
    name, cat, loc = (values(int(b)) % np.uint64(2**35) for b in rng.integers(1, 36, 3))
    term = np.where(term_on, np.maximum(values(64), 1), np.uint64(0))
    parent = values(64).view(np.int64)
    flows = np.maximum(values(64)[:1], 1).repeat(int(k.sum())) + np.arange(int(k.sum()), dtype=np.uint64)
    # Times: small and large deltas, some going back (written absolute).
    ts = T0 + np.cumsum(rng.integers(0, 2**40, n) >> rng.integers(0, 40, n))
    ts[rng.random(n) < 0.2] -= 2**20
    t = times(ts.astype(np.int64), T0)
    widths = tuple(int(max(1, (int(c.max()).bit_length() + 6) // 7)) for c in (name, cat, loc))

    m, lengths = begin_rows(
        t,
        group=group,
        uuid=uuid,
        name=name,
        cat=cat,
        loc=loc,
        widths=(widths[0], widths[1], widths[2]),
        flow_count=k,
        flows=flows,
        term=term,
        parent_span=parent,
        ann=ann_on,
        cut=cut_on,
    )
    first = np.cumsum(k) - k
    for g, (kg, term_g, ann_g, cut_g, _) in enumerate(groups):
        sel = np.flatnonzero(group == g)
        if not len(sel):
            continue
        per_row = (first[sel][:, None] + np.arange(kg)).reshape(-1)
        want, want_len = event_matrix(
            t.take(sel),
            SLICE_BEGIN,
            uuid=uuid[sel],
            name=name[sel],
            cat=cat[sel],
            loc=loc[sel],
            widths=(widths[0], widths[1], widths[2]),
            flows=flows[per_row].reshape(len(sel), kg) if kg else None,
            term=term[sel] if term_g else None,
            parent_span=parent[sel] if ann_g else None,
            cut=CUT_BEGIN if cut_g else 0,
        )
        for i, row in enumerate(sel):
            assert bytes(m[row, : lengths[row]]) == bytes(want[i, : want_len[i]])
    assert m.shape[1] % 4 == 0 and m.shape[1] >= 12
