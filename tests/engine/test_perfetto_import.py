"""The import model (tests/engine/perfetto_import.py) against the trace processor results recorded in
shared/reference/perfetto.md (test traces t2b, t6, t7 and the flow tests there, loaded into Perfetto v58)."""

from __future__ import annotations

from tests.engine.perfetto_import import import_trace
from worker.perfetto_pb import pb

B, E = pb.TrackEvent.TYPE_SLICE_BEGIN, pb.TrackEvent.TYPE_SLICE_END
PROCESS = 1000


def trace(packets: list[pb.TracePacket]) -> bytes:
    head = pb.TracePacket(trusted_packet_sequence_id=1, sequence_flags=3)
    head.interned_data.event_names.add(iid=1, name="a")
    head.interned_data.event_names.add(iid=2, name="b")
    proc = pb.TracePacket(trusted_packet_sequence_id=1)
    proc.track_descriptor.uuid = PROCESS
    proc.track_descriptor.process.pid = 1
    return pb.Trace(packet=[head, proc, *packets]).SerializeToString()


def track(uuid: int, name: str = "spans", merge: int = 0) -> pb.TracePacket:
    p = pb.TracePacket(trusted_packet_sequence_id=1)
    p.track_descriptor.uuid = uuid
    p.track_descriptor.parent_uuid = PROCESS
    p.track_descriptor.name = name
    if merge:
        p.track_descriptor.sibling_merge_behavior = merge  # type: ignore[assignment]
    return p


def event(
    ts: int, kind: int, uuid: int, name: int = 1, *, flows: tuple[int, ...] = (), term: tuple[int, ...] = ()
) -> pb.TracePacket:
    p = pb.TracePacket(trusted_packet_sequence_id=1, timestamp=ts, sequence_flags=2)
    p.track_event.type = kind  # type: ignore[assignment]
    p.track_event.track_uuid = uuid
    p.track_event.name_iid = name
    p.track_event.flow_ids.extend(flows)
    p.track_event.terminating_flow_ids.extend(term)
    return p


def test_t6_same_named_siblings_merge_into_peak_overlap_rows() -> None:
    # 1000 one-span tracks, at most 10 overlapping: 10 rows by default, 1000 with merging off.
    for merge, rows in ((0, 10), (2, 1000)):
        packets = [track(10 + i, merge=merge) for i in range(1000)]
        for i in range(1000):
            packets += [event(100 * i, B, 10 + i), event(100 * i + 950, E, 10 + i)]
        got = import_trace(trace(packets))
        assert not got.stats and len(got.slices) == 1000
        key = ("merged", PROCESS, "spans")
        assert (got.rows[key] if merge == 0 else len(got.rows)) == rows


def test_t2b_partial_overlap_on_one_track_is_misplaced() -> None:
    got = import_trace(
        trace([track(7), event(100, B, 7, 1), event(200, B, 7, 2), event(300, E, 7, 1), event(400, E, 7, 2)])
    )
    assert got.stats["misplaced_end_event"] >= 1


def test_t7_begin_before_end_at_one_timestamp_misnests() -> None:
    packets = [track(7), event(100, B, 7, 1), event(200, B, 7, 2), event(200, E, 7, 1), event(300, E, 7, 2)]
    got = import_trace(trace(packets))
    assert got.stats["misplaced_end_event"] >= 1
    ends_first = [
        track(7),
        event(100, B, 7, 1),
        event(200, E, 7, 1),
        event(200, B, 7, 2),
        event(300, E, 7, 2),
    ]
    assert not import_trace(trace(ends_first)).stats


def test_flows_link_slices_and_need_their_source_first() -> None:
    packets = [track(7), track(8), event(100, B, 7, flows=(55,)), event(150, B, 8, term=(55,))]
    packets += [event(200, E, 7), event(300, E, 8)]
    got = import_trace(trace(packets))
    assert not got.stats and got.flows == [(0, 1)]
    # At one timestamp the file order decides: the terminating event first has no source.
    late = [track(7), track(8), event(100, B, 8, term=(55,)), event(100, B, 7, flows=(55,))]
    late += [event(200, E, 7), event(300, E, 8)]
    got = import_trace(trace(late))
    assert got.stats["flow_end_without_start"] == 1 and got.dangling_flows == 1


def test_a_begin_at_depth_512_is_dropped_and_its_end_closes_the_parent() -> None:
    # slice_tracker kMaxDepth = 512: the 513th nested BEGIN is dropped, its END closes slice 511.
    for depth, dropped in ((512, 0), (513, 1)):
        packets = [track(7)]
        packets += [event(i, B, 7) for i in range(depth)]
        packets += [event(1000 + i, E, 7) for i in range(depth)]
        got = import_trace(trace(packets))
        assert got.stats["slice_max_depth_exceeded"] == dropped
        assert len(got.slices) == 512 and max(s.depth for s in got.slices) == 511
        # Every END closes the top slice, so with one dropped each kept slice ends one END early (the
        # outermost at the next-to-last END) and the last END finds nothing open.
        assert got.slices[0].end == 1000 + depth - 1 - dropped
        assert got.stats["end_without_begin"] == dropped


def test_events_without_track_uuid_are_on_the_sequence_default_track() -> None:
    defaults = pb.TracePacket(trusted_packet_sequence_id=1, sequence_flags=2)
    defaults.trace_packet_defaults.track_event_defaults.track_uuid = 7
    first, last = event(100, B, 7), event(200, E, 7)
    first.track_event.ClearField("track_uuid")
    last.track_event.ClearField("track_uuid")
    got = import_trace(trace([track(7), defaults, first, last]))
    assert not got.stats and [(s.uuid, s.begin, s.end) for s in got.slices] == [(7, 100, 200)]
