"""`trace-worker inspect`: clean engine output passes; each defect class is found in a hand-built trace."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from contracts.request import SpanTypes
from tests.engine.data import PROCESS, RANGE, THREADS, AsyncEvent, Span, async_batch, thread_batch
from worker.cli import main
from worker.engine import encode
from worker.inspect import inspect_trace
from worker.perfetto_pb import pb

TRACK = 42


def packet(seq: int | None = 1, flags: int = 2, **fields: object) -> pb.TracePacket:
    p = pb.TracePacket(**fields)  # type: ignore[arg-type]
    if seq is not None:
        p.trusted_packet_sequence_id = seq
    if flags:
        p.sequence_flags = flags
    return p


def header(names: dict[int, str] | None = None) -> list[pb.TracePacket]:
    interned = pb.InternedData(
        event_names=[pb.EventName(iid=i, name=n) for i, n in (names or {1: "a", 2: "b"}).items()],
        event_categories=[pb.EventCategory(iid=1, name="cat")],
        source_locations=[pb.SourceLocation(iid=1, file_name="f.rs", line_number=3)],
    )
    return [
        packet(flags=3, first_packet_on_sequence=True, interned_data=interned),
        packet(track_descriptor=pb.TrackDescriptor(uuid=TRACK, name="t")),
    ]


def event(ts: int, kind: int, name_iid: int, track: int = TRACK, clock: int | None = None) -> pb.TracePacket:
    te = pb.TrackEvent(track_uuid=track, name_iid=name_iid, category_iids=[1], source_location_iid=1)
    te.type = kind  # type: ignore[assignment]
    p = packet(timestamp=ts, track_event=te)
    if clock is not None:
        p.timestamp_clock_id = clock
    return p


B, E = pb.TrackEvent.TYPE_SLICE_BEGIN, pb.TrackEvent.TYPE_SLICE_END


def trace_bytes(packets: list[pb.TracePacket]) -> bytes:
    return b"".join(pb.Trace(packet=[p]).SerializeToString() for p in packets)


def kinds(packets: list[pb.TracePacket] | bytes) -> dict[str, int]:
    data = packets if isinstance(packets, bytes) else trace_bytes(packets)
    return inspect_trace(io.BytesIO(data)).defect_counts


def test_engine_output_is_clean_and_summarised() -> None:
    thread = [("stream-a", thread_batch([Span(RANGE.begin_ns, RANGE.begin_ns + 10, 0, "root")]))]
    events = [AsyncEvent(RANGE.begin_ns + i, "begin", i) for i in range(1, 8)]
    data = b"".join(
        encode(PROCESS, THREADS, thread, [async_batch(events)], span_types=SpanTypes.BOTH, time_range=RANGE)
    )
    report = inspect_trace(io.BytesIO(data))
    assert report.ok, report.defects
    assert report.bytes == len(data)
    assert report.slices == 8
    by_kind = {(t.kind, t.name): t for t in report.tracks}
    assert by_kind[("thread", "main-101")].slices == 1
    assert by_kind[("process", PROCESS.exe)].pid == -1210682551
    assert sum(t.slices for t in report.tracks if t.name == "async") == 7
    assert report.interned == {
        "event_names": 2,
        "event_categories": 2,
        "source_locations": 2,
        "debug_annotation_names": 2,  # parent_span_id and trace_worker_cut, in the header
        "log_message_bodies": 0,
    }
    # Open async spans end at the last time the process has data (the thread span's end).
    assert (report.first_ts, report.last_ts) == (RANGE.begin_ns, RANGE.begin_ns + 10)


def test_partial_overlap_is_a_misnested_end() -> None:
    got = kinds([*header(), event(100, B, 1), event(200, B, 2), event(300, E, 1), event(400, E, 2)])
    assert got == {"misnested_end": 2}


def test_properly_nested_and_sorted_from_any_file_order() -> None:
    # Perfetto sorts by timestamp: reverse file order still nests.
    assert kinds([*header(), event(400, E, 1), event(300, E, 2), event(200, B, 2), event(100, B, 1)]) == {}


def test_unmatched_end_and_unterminated_slice() -> None:
    assert kinds([*header(), event(100, E, 1), event(200, B, 2)]) == {"unmatched_end": 1, "unterminated": 1}


def test_a_begin_with_512_slices_open_exceeds_perfettos_max_depth() -> None:
    # Perfetto's SliceTracker keeps at most 512 open slices per track and drops the BEGIN beyond.
    for depth, dropped in ((512, {}), (514, {"max_depth_exceeded": 2})):
        packets = [
            *header(),
            *(event(i, B, 1) for i in range(depth)),
            *(event(1000, E, 1) for _ in range(depth)),
        ]
        assert kinds(packets) == dropped


def test_iid_used_before_definition() -> None:
    late_names = packet(interned_data=pb.InternedData(event_names=[pb.EventName(iid=9, name="late")]))
    got = kinds([*header(), event(100, B, 9), late_names, event(200, E, 9)])
    # The BEGIN has no name, so Perfetto would also reject the named END: both are reported.
    assert got == {"iid_undefined": 1, "misnested_end": 1}


def test_interned_data_and_needs_flag_without_cleared() -> None:
    interned = pb.InternedData(event_names=[pb.EventName(iid=1, name="a")])
    packets = [
        packet(flags=2, interned_data=interned),
        packet(track_descriptor=pb.TrackDescriptor(uuid=TRACK, name="t")),
        event(100, B, 1),
        event(200, E, 1),
    ]
    got = kinds(packets)
    # NEEDS flag on all 4 packets + the interned data itself; both events' iids are unusable.
    assert got == {"state_not_cleared": 5, "iid_undefined": 2}


def test_packet_without_sequence_id() -> None:
    assert kinds([*header(), event(100, B, 1), packet(seq=None, flags=0, timestamp=5)]) == {
        "no_sequence_id": 1,
        "unterminated": 1,
    }


def test_events_on_an_undeclared_track() -> None:
    assert kinds([*header(), event(1, B, 1, track=7), event(2, E, 1, track=7)]) == {"undeclared_track": 1}


def test_realtime_without_snapshot_is_an_unresolved_clock() -> None:
    got = kinds([*header(), event(1, B, 1, clock=1), event(2, E, 1, clock=1)])
    assert got == {"clock_unresolved": 1}  # reported once; Perfetto drops both events


def test_malformed_packets_and_framing() -> None:
    good = trace_bytes([*header(), event(1, B, 1), event(2, E, 1)])
    assert kinds(good + b"\x0a\x05\xff\xff") == {"malformed": 1}  # truncated last packet
    assert kinds(good + b"\x0a\x03\x0b\x0b\x0b") == {"malformed": 1}  # a body that does not decode
    assert kinds(good + b"\x0f") == {"malformed": 1}  # wire type 7


def test_large_trace_is_read_in_blocks(tmp_path: Path) -> None:
    packets = [*header()]
    for i in range(20_000):
        packets += [event(2 * i, B, 1), event(2 * i + 1, E, 1)]
    path = tmp_path / "big.pftrace"
    path.write_bytes(trace_bytes(packets))
    report = inspect_trace(path)
    assert report.ok and report.slices == 20_000 and report.bytes == path.stat().st_size


def test_cli_exit_status_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.pftrace"
    good.write_bytes(trace_bytes([*header(), event(1, B, 1), event(2, E, 1)]))
    assert main(["inspect", str(good)]) == 0
    out = capsys.readouterr().out
    assert "defects: none" in out and "slices=1" in out
    bad = tmp_path / "bad.pftrace"
    bad.write_bytes(
        trace_bytes([*header(), event(100, B, 1), event(200, B, 2), event(300, E, 1), event(400, E, 2)])
    )
    assert main(["inspect", str(bad), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["defect_counts"] == {"misnested_end": 2}
    assert main(["inspect", str(tmp_path / "missing")]) == 2


def test_progress_is_reported_while_decoding_and_at_the_end() -> None:
    events = [AsyncEvent(RANGE.begin_ns + i, "begin", i) for i in range(1, 400)]
    data = b"".join(
        encode(PROCESS, THREADS, [], [async_batch(events)], span_types=SpanTypes.ASYNC, time_range=RANGE)
    )
    seen: list[int] = []
    report = inspect_trace(io.BytesIO(data), progress=seen.append, progress_every=4096)
    assert report.ok and report.slices == 399
    assert len(seen) >= len(data) // 4096
    assert seen == sorted(seen) and seen[-1] == len(data)


def test_small_blocks_and_batches_give_the_same_report(monkeypatch: pytest.MonkeyPatch) -> None:
    # Replayed in many small batches (a few events each) with carried open slices: same result as one.
    thread = [("stream-a", thread_batch([Span(RANGE.begin_ns, RANGE.begin_ns + 500, 0, "root")]))]
    events = [AsyncEvent(RANGE.begin_ns + i, "begin", i) for i in range(1, 300)]
    events += [AsyncEvent(RANGE.begin_ns + 400 - i, "end", i) for i in range(1, 300, 3)]
    data = b"".join(
        encode(PROCESS, THREADS, thread, [async_batch(events)], span_types=SpanTypes.BOTH, time_range=RANGE)
    )
    whole = inspect_trace(io.BytesIO(data))
    monkeypatch.setattr("worker.inspect.BATCH_EVENTS", 3)
    pieces = inspect_trace(io.BytesIO(data), progress=lambda _: None, progress_every=200)
    assert whole.ok and pieces.ok, pieces.defects
    assert [(t.uuid, t.slices) for t in pieces.tracks] == [(t.uuid, t.slices) for t in whole.tracks]
    assert pieces.slices == whole.slices == 300
    # The same batching still finds a partial overlap split across blocks.
    bad = trace_bytes([*header(), event(100, B, 1), event(200, B, 2), event(300, E, 1), event(400, E, 2)])
    assert inspect_trace(io.BytesIO(bad), progress=lambda _: None, progress_every=40).defect_counts == {
        "misnested_end": 2
    }


# Incremental timestamps (Perfetto's rules, shared/reference/perfetto.md §8): a sequence-scoped clock
# declared incremental in a ClockSnapshot; each packet's timestamp is a delta from the clock's last value.
INC = 64


def clocks(base: int, *, unit: int = 1, boot: int | None = None) -> pb.TracePacket:
    snap = pb.ClockSnapshot(
        clocks=[
            pb.ClockSnapshot.Clock(clock_id=6, timestamp=base * unit if boot is None else boot),
            pb.ClockSnapshot.Clock(
                clock_id=INC, timestamp=base, is_incremental=True, unit_multiplier_ns=unit
            ),
        ]
    )
    return packet(flags=0, clock_snapshot=snap)


def incremental_header(base: int, unit: int = 1) -> list[pb.TracePacket]:
    first, desc = header()
    first.trace_packet_defaults.timestamp_clock_id = INC
    return [first, desc, clocks(base, unit=unit)]


def deltas(
    times: Sequence[int], kinds: Sequence[int], names: Sequence[int], start: int
) -> list[pb.TracePacket]:
    out, last = [], start
    for t, k, n in zip(times, kinds, names, strict=True):
        out.append(event(t - last, k, n))
        last = t
    return out


def test_incremental_timestamps_are_resolved_before_the_replay() -> None:
    times, kinds_, names = [100, 200, 300, 400], [B, B, E, E], [1, 2, 1, 2]
    # Deltas from the snapshot's value: B a@100, B b@200, E a@300, E b@400 is a partial overlap.
    report = inspect_trace(
        io.BytesIO(trace_bytes([*incremental_header(0), *deltas(times, kinds_, names, 0)]))
    )
    assert report.defect_counts == {"misnested_end": 2}
    assert (report.first_ts, report.last_ts) == (100, 400)
    # The same deltas read as absolute times (1, 2, ...) would nest: the clock is what makes the overlap.
    nested = deltas([100, 200, 300, 400], [B, B, E, E], [1, 2, 2, 1], 0)
    report = inspect_trace(io.BytesIO(trace_bytes([*incremental_header(0), *nested])))
    assert report.ok and report.slices == 2 and (report.first_ts, report.last_ts) == (100, 400)


def test_unit_multiplier_snapshot_reset_and_cleared_defaults() -> None:
    base = 1_000_000
    packets = [*incremental_header(base, unit=1000)]  # microsecond deltas from base µs
    packets += [event(5, B, 1), event(5, E, 1)]  # 5 µs and 10 µs after base
    assert inspect_trace(io.BytesIO(trace_bytes(packets))).first_ts == base * 1000 + 5000
    # A new snapshot sets the clock's value again: the next delta counts from it.
    later = [*packets, clocks(2 * base, unit=1000), event(1, B, 2), event(1, E, 2)]
    report = inspect_trace(io.BytesIO(trace_bytes(later)))
    assert report.ok and report.slices == 2 and report.last_ts == 2 * base * 1000 + 2000
    # CLEARED drops the packet defaults: later timestamps are absolute (trace clock) again.
    cleared = [
        *later,
        packet(flags=3, interned_data=header()[0].interned_data),
        event(7, B, 1),
        event(9, E, 1),
    ]
    report = inspect_trace(io.BytesIO(trace_bytes(cleared)))
    assert report.ok and report.slices == 3 and report.first_ts == 7


def test_incremental_clock_without_snapshot_is_unresolved() -> None:
    first, desc = header()
    first.trace_packet_defaults.timestamp_clock_id = INC
    got = kinds([first, desc, event(1, B, 1), event(1, E, 1)])
    assert got == {"clock_unresolved": 1}  # Perfetto drops both events: no slice, no unterminated


def test_many_incremental_events_decode_columnar_like_absolute_ones(tmp_path: Path) -> None:
    # Deltas of every varint width (1-5 bytes) in one sequence: the columnar paths (templates and the
    # walk) must give what the same events with absolute times give.
    rng = np.random.default_rng(7)
    gaps = rng.integers(0, 1 << 35, size=6000) >> rng.integers(0, 35, size=6000)
    times = (np.cumsum(gaps) + 1_700_000_000_000_000_000).tolist()
    kinds_ = [B, E] * (len(times) // 2)
    names = [1 + (i // 2) % 2 for i in range(len(times))]
    absolute = [*header(), *(event(t, k, n) for t, k, n in zip(times, kinds_, names, strict=True))]
    incremental = [*incremental_header(times[0]), *deltas(times, kinds_, names, times[0])]
    for packets in (absolute, incremental):
        path = tmp_path / "t.pftrace"
        path.write_bytes(trace_bytes(packets))
        report = inspect_trace(path)
        assert report.ok, report.defects
        assert report.slices == 3000 and (report.first_ts, report.last_ts) == (times[0], times[-1])


class _NoTemplates:
    """Stands in for inspect_templates.Templates: every packet goes to the columnar walk."""

    def match(
        self, buf: bytes, w8: object, starts: np.ndarray, lens: np.ndarray
    ) -> tuple[list[object], np.ndarray]:
        return [], np.zeros(len(starts), dtype=bool)


def test_the_walk_alone_gives_the_templates_report(monkeypatch: pytest.MonkeyPatch) -> None:
    # Thread spans, async lanes with flows, parent annotations and cut marks: decoded by templates
    # first, then by the walk alone, the reports must match field for field.
    thread = [
        (
            "stream-a",
            thread_batch(
                [
                    Span(RANGE.begin_ns + 2 * i, RANGE.begin_ns + 2 * i + 1, 0, f"s{i % 7}")
                    for i in range(3000)
                ]
            ),
        )
    ]
    events = [
        AsyncEvent(RANGE.begin_ns + i, "begin", i, max(0, i - 3), name=f"a{i % 5}") for i in range(1, 2000)
    ]
    events += [AsyncEvent(RANGE.begin_ns + 2500 - i, "end", i, name=f"a{i % 5}") for i in range(1, 2000, 2)]
    data = b"".join(
        encode(PROCESS, THREADS, thread, [async_batch(events)], span_types=SpanTypes.BOTH, time_range=RANGE)
    )
    with_templates = inspect_trace(io.BytesIO(data)).to_dict()
    monkeypatch.setattr("worker.inspect.Templates", _NoTemplates)
    walked = inspect_trace(io.BytesIO(data)).to_dict()
    assert walked == with_templates
    assert with_templates["ok"] and with_templates["slices"] == 3000 + 1999
