"""Delta timestamps and variable-length packets (worker/engine/packing.py), checked by decoding the
bytes with the generated protobuf classes, the test decoder and ``inspect``."""

from __future__ import annotations

import io

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.decode import decode
from worker.engine.packing import pack, reset_packet, times
from worker.engine.rows import SLICE_BEGIN, SLICE_END, thread_event_rows
from worker.engine.span_rows import event_matrix
from worker.engine.tracks import clock_packet, thread_descriptor, thread_tracks
from worker.inspect import inspect_trace
from worker.model import ThreadInfo, TimeRange
from worker.perfetto_pb import pb

T0 = 1_760_000_000_000_000_000


def test_times_are_deltas_from_the_running_maximum_and_absolute_when_time_goes_back() -> None:
    ts = np.array([T0 + 5, T0 + 5, T0 + 300, T0 + 200, T0 + 301, T0 + 2**40], dtype=np.int64)
    t = times(ts, T0)
    assert t.absolute.tolist() == [False, False, False, True, False, False]
    assert t.value.tolist() == [5, 0, 295, T0 + 200, 1, 2**40 - 301]
    assert t.width.tolist() == [1, 1, 2, 9, 1, 6]
    assert t.lengths.tolist() == [2, 2, 3, 13, 2, 7]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40)), min_size=1, max_size=60))
def test_pack_cuts_and_orders_rows_like_plain_concatenation(rows: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(len(rows))
    mats = [rng.integers(0, 256, (n, 44), dtype=np.uint8) for n in range(1, 5)]
    lengths = [rng.integers(1, 45, len(m)).astype(np.int64) for m in mats]
    # Output order: an arbitrary interleaving of every row of every matrix.
    order = [(g, r) for g, m in enumerate(mats) for r in range(len(m))]
    rng.shuffle(order)
    where = [np.zeros(len(m), np.int64) for m in mats]
    for pos, (g, r) in enumerate(order):
        where[g][r] = pos
    data, sizes = pack(mats, lengths, list(where))
    expected = b"".join(bytes(mats[g][r, : lengths[g][r]]) for g, r in order)
    assert bytes(data) == expected
    assert sizes.tolist() == [int(lengths[g][r]) for g, r in order]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 30), st.booleans(), st.booleans()), min_size=1, max_size=8),
    st.integers(0, 2**32 - 1),
)
def test_pack_keeps_unplaced_matrices_in_place_and_scatters_the_others(
    specs: list[tuple[int, bool, bool]], seed: int
) -> None:
    """Matrices with no positions stay at their concatenated slots, the others fill the rest in the
    order given; rows longer than 12 bytes (no inline view) and inline ones alike."""
    rng = np.random.default_rng(seed)
    mats = [rng.integers(0, 256, (n, 28 + 4 * (n % 3)), dtype=np.uint8) for n, _, _ in specs]
    lengths = [
        rng.integers(13 if long_only else 1, m.shape[1] + 1, len(m)).astype(np.int64)
        for m, (_, _, long_only) in zip(mats, specs, strict=True)
    ]
    bounds = np.cumsum([0] + [len(m) for m in mats])
    free = np.concatenate(
        [np.arange(bounds[g], bounds[g + 1]) for g, (_, placed, _) in enumerate(specs) if placed] + [[]]
    ).astype(np.int64)
    rng.shuffle(free)
    where: list[np.ndarray | None] = []
    slot: dict[int, tuple[int, int]] = {}
    at = 0
    for g, (m, (_, placed, _)) in enumerate(zip(mats, specs, strict=True)):
        if placed:
            pos = free[at : at + len(m)]
            at += len(m)
        else:
            pos = np.arange(bounds[g], bounds[g + 1])
        where.append(pos if placed else None)
        slot.update({int(p): (g, r) for r, p in enumerate(pos)})
    data, sizes = pack(mats, lengths, where)
    order = [slot[p] for p in range(int(bounds[-1]))]
    assert bytes(data) == b"".join(bytes(mats[g][r, : lengths[g][r]]) for g, r in order)
    assert sizes.tolist() == [int(lengths[g][r]) for g, r in order]


def _trace(*parts: bytes) -> bytes:
    rng = TimeRange(T0, T0 + 10**12)
    track = thread_tracks([ThreadInfo("s", "main", "7")])[0]
    return clock_packet(rng) + thread_descriptor(track, 1) + b"".join(parts)


def test_backward_time_in_a_block_is_written_absolute_and_resolves() -> None:
    """A block whose times go back (bad order) stays exact: the late packet is absolute REALTIME."""
    track = thread_tracks([ThreadInfo("s", "main", "7")])[0]
    ts = np.array([T0 + 100, T0 + 50, T0 + 60, T0 + 400], dtype=np.int64)
    kinds = np.array([SLICE_BEGIN, SLICE_BEGIN, SLICE_END, SLICE_END], dtype=np.uint8)
    one = np.ones(2, np.uint64)  # iids of the BEGINs
    data, _ = thread_event_rows(ts, kinds, name=one, cat=one, loc=one, marks=np.zeros(4, np.uint8), t0=T0)
    trace = _trace(reset_packet(T0, track.uuid), bytes(data))
    events = [p for p in pb.Trace.FromString(trace).packet if p.HasField("track_event")]
    assert [p.timestamp_clock_id for p in events] == [0, 1, 1, 0]  # 1 = REALTIME, absolute
    assert [p.timestamp for p in events] == [100, T0 + 50, T0 + 60, 300]
    decoded = decode(trace)
    assert decoded.event_times() == ts.tolist()
    assert decoded.events_on(track.uuid) == [(1, T0 + 100), (1, T0 + 50), (2, T0 + 60), (2, T0 + 400)]
    report = inspect_trace(io.BytesIO(trace))
    assert (report.first_ts, report.last_ts) == (T0 + 50, T0 + 400)


def test_inspect_resolves_deltas_and_default_tracks_like_the_test_decoder() -> None:
    track = thread_tracks([ThreadInfo("s", "main", "7")])[0]
    ts = np.arange(T0 + 10, T0 + 10 + 4000, 10, dtype=np.int64)  # 200 spans, one after another
    kinds = np.tile(np.array([SLICE_BEGIN, SLICE_END], dtype=np.uint8), len(ts) // 2)
    iid = np.ones(len(ts) // 2, np.uint64)  # iids of the BEGINs
    data, _ = thread_event_rows(
        ts, kinds, name=iid, cat=iid, loc=iid, marks=np.zeros(len(ts), np.uint8), t0=T0
    )
    interned = pb.TracePacket(trusted_packet_sequence_id=1, sequence_flags=2)
    interned.interned_data.event_names.add(iid=1, name="f")
    interned.interned_data.event_categories.add(iid=1, name="c")
    interned.interned_data.source_locations.add(iid=1, file_name="f.rs", line_number=1)
    framed = pb.Trace(packet=[interned]).SerializeToString()
    trace = _trace(framed, reset_packet(T0, track.uuid), bytes(data))
    report = inspect_trace(io.BytesIO(trace))
    assert report.ok, report.defects
    assert (report.first_ts, report.last_ts) == (int(ts[0]), int(ts[-1]))
    assert {t.uuid: t.slices for t in report.tracks}[track.uuid] == 200
    first = decode(trace).on_track(track.uuid)[0]
    assert (first.begin, first.end, first.name) == (T0 + 10, T0 + 20, "f")


def test_inspect_flags_a_sequence_clock_no_snapshot_declares() -> None:
    m, lengths = event_matrix(times(np.array([T0], np.int64), T0), SLICE_BEGIN, uuid=np.array([5], np.uint64))
    defaults = pb.TracePacket(trusted_packet_sequence_id=1, sequence_flags=2)
    defaults.trace_packet_defaults.timestamp_clock_id = 64
    packed, _ = pack([m], [lengths], [None])
    trace = _trace(pb.Trace(packet=[defaults]).SerializeToString(), bytes(packed))
    assert "clock_unresolved" in inspect_trace(io.BytesIO(trace)).defect_counts
