"""Test-side decoder: trace bytes -> slices, the way Perfetto's importer pairs BEGIN and END.

Independent of worker.inspect on purpose (the tests check the engine and inspect separately). Events
of a track are stably sorted by timestamp (file order breaks ties) and an END closes the most recent
open slice of its track; an END that names a slice other than that one is recorded as a misnesting.

Timestamps are resolved as Perfetto's trace processor does (:class:`Clocks`): a packet's clock is its
``timestamp_clock_id`` or its sequence's ``trace_packet_defaults``; clock ids 64-127 belong to the
sequence; an incremental clock adds each packet's value to its running value, which a ClockSnapshot
sets; a clock is mapped to BOOTTIME (the trace clock) through the latest snapshot holding both. An
event without ``track_uuid`` is on its sequence's default track (``track_event_defaults``). A BEGIN on
a track already holding :data:`MAX_OPEN` open slices is a problem: Perfetto's trace processor drops it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from worker.perfetto_pb import pb

#: Perfetto's trace processor drops a slice begun on a track holding this many open (``kMaxDepth``).
MAX_OPEN = 512

Links = tuple[tuple[int, ...], tuple[int, ...], int | None, str | None]


@dataclass(frozen=True, order=True)
class Slice:
    track: int
    begin: int
    end: int
    name: str
    category: str
    file: str
    line: int
    #: "begin" / "end" (the BEGIN or the END carries the cut mark), "both" (each carries its own).
    cut: str = ""
    #: From the slice's BEGIN: flows it starts (``flow_ids``), the flow it ends
    #: (``terminating_flow_ids``) and its ``parent_span_id`` debug annotation.
    flows: tuple[int, ...] = field(default=(), compare=False)
    term_flows: tuple[int, ...] = field(default=(), compare=False)
    parent_span: int | None = field(default=None, compare=False)
    #: Name of the slice this one opened inside on its track (Perfetto's parent slice), if any.
    under: str | None = field(default=None, compare=False)


@dataclass
class Decoded:
    packets: list[pb.TracePacket]
    slices: list[Slice]
    problems: list[str]
    descriptors: dict[int, pb.TrackDescriptor] = field(default_factory=dict)
    #: Each packet's trace time (None without a timestamp), resolved through the clocks.
    times: list[int | None] = field(default_factory=list)
    #: Each packet's track (``track_uuid`` or the sequence default; None for non-events).
    tracks: list[int | None] = field(default_factory=list)

    def events_on(self, uuid: int) -> list[tuple[int, int]]:
        """(type, trace time) of the track events on ``uuid``, in file order."""
        return [
            (p.track_event.type, t)
            for p, t, k in zip(self.packets, self.times, self.tracks, strict=True)
            if k == uuid and t is not None
        ]

    def event_times(self) -> list[int]:
        """Trace times of the track-event packets, in file order."""
        return [
            t
            for p, t in zip(self.packets, self.times, strict=True)
            if p.HasField("track_event") and t is not None
        ]

    def on_track(self, uuid: int) -> list[Slice]:
        return sorted(s for s in self.slices if s.track == uuid)


def packet_sizes(data: bytes) -> list[int]:
    """Byte length of each framed packet (tag + length + body), checking the framing."""
    sizes = []
    pos = 0
    while pos < len(data):
        start = pos
        assert data[pos] == 0x0A, f"packet at {pos} is not Trace field 1"
        pos += 1
        length = shift = 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        pos += length
        assert pos <= len(data), "truncated packet"
        sizes.append(pos - start)
    return sizes


_BOOTTIME = 6


class Clocks:
    """Timestamp resolution (see the module docstring), packet by packet in file order."""

    def __init__(self) -> None:
        self.incremental: dict[tuple[int, int], bool] = {}
        self.running: dict[tuple[int, int], int] = {}
        self.to_boot: dict[tuple[int, int], tuple[int, int]] = {}  # clock -> (clock value, BOOTTIME)
        self.defaults: dict[int, pb.TracePacketDefaults] = {}
        self.problems: list[str] = []

    @staticmethod
    def key(seq: int, clock: int) -> tuple[int, int]:
        return (seq if 64 <= clock < 128 else 0, clock)

    def packet(self, index: int, packet: pb.TracePacket) -> int | None:
        """Note the packet's defaults / snapshot; return its trace time (None: it has no timestamp)."""
        seq = packet.trusted_packet_sequence_id
        if packet.sequence_flags & 1:
            self.defaults.pop(seq, None)
        if packet.HasField("trace_packet_defaults"):
            self.defaults[seq] = packet.trace_packet_defaults
        if packet.HasField("clock_snapshot"):
            values = {self.key(seq, c.clock_id): c for c in packet.clock_snapshot.clocks}
            boot = values.get((0, _BOOTTIME))
            for k, c in values.items():
                self.incremental[k] = c.is_incremental
                if c.is_incremental:
                    self.running[k] = c.timestamp
                if boot is not None:
                    self.to_boot[k] = (c.timestamp, boot.timestamp)
            return None
        if not packet.HasField("timestamp"):
            return None
        clock = packet.timestamp_clock_id
        if not clock and seq in self.defaults:
            clock = self.defaults[seq].timestamp_clock_id
        if not clock or clock == _BOOTTIME:
            return packet.timestamp
        k = self.key(seq, clock)
        raw = packet.timestamp
        if self.incremental.get(k):
            raw = self.running[k] = self.running[k] + packet.timestamp
        if k not in self.to_boot:
            self.problems.append(f"packet {index}: clock {clock} has no snapshot with BOOTTIME")
            return raw
        clock_at, boot_at = self.to_boot[k]
        return boot_at + raw - clock_at

    def default_track(self, seq: int) -> int | None:
        d = self.defaults.get(seq)
        if d is not None and d.HasField("track_event_defaults"):
            return d.track_event_defaults.track_uuid
        return None


def decode(data: bytes) -> Decoded:
    trace = pb.Trace.FromString(data)
    names: dict[int, str] = {}
    cats: dict[int, str] = {}
    locs: dict[int, tuple[str, int]] = {}
    ann_names: dict[int, str] = {}
    problems: list[str] = []
    events: dict[int, list[tuple[int, int, int, str, str, str, int, str, Links]]] = defaultdict(list)
    descriptors: dict[int, pb.TrackDescriptor] = {}
    cleared = False
    clocks = Clocks()
    resolved: list[int | None] = []
    tracks: list[int | None] = []
    for index, packet in enumerate(trace.packet):
        ts = clocks.packet(index, packet)
        resolved.append(ts)
        tracks.append(None)
        if not packet.HasField("trusted_packet_sequence_id"):
            problems.append(f"packet {index} has no sequence id")
        if packet.sequence_flags & 1:
            cleared = True
            names, cats, locs, ann_names = {}, {}, {}, {}
        if packet.HasField("interned_data"):
            if not cleared:
                problems.append(f"packet {index}: interned data before CLEARED")
            for n in packet.interned_data.event_names:
                names[n.iid] = n.name
            for c in packet.interned_data.event_categories:
                cats[c.iid] = c.name
            for s in packet.interned_data.source_locations:
                locs[s.iid] = (s.file_name, s.line_number)
            for a in packet.interned_data.debug_annotation_names:
                ann_names[a.iid] = a.name
        if packet.HasField("track_descriptor"):
            descriptors[packet.track_descriptor.uuid] = packet.track_descriptor
        if packet.HasField("track_event"):
            te = packet.track_event
            if te.HasField("log_message") or te.type == pb.TrackEvent.TYPE_COUNTER:
                continue  # log messages and counters: tests/engine/decode_logs.py
            for iid, table in ((te.name_iid, names), (te.source_location_iid, locs)):
                if iid and iid not in table:
                    problems.append(f"packet {index}: iid {iid} used before definition")
            cat = cats.get(te.category_iids[0], "?") if te.category_iids else ""
            file, line = locs.get(te.source_location_iid, ("?", -1))
            cut = ""
            parent_span = None
            for ann in te.debug_annotations:
                if (ann.name or ann_names.get(ann.name_iid)) == "trace_worker_cut":
                    cut = ann.string_value
                if ann_names.get(ann.name_iid) == "parent_span_id":
                    parent_span = ann.int_value
            links: Links = (tuple(te.flow_ids), tuple(te.terminating_flow_ids), parent_span, None)
            track = (
                te.track_uuid
                if te.HasField("track_uuid")
                else clocks.default_track(packet.trusted_packet_sequence_id)
            )
            if track is None:
                problems.append(f"packet {index}: track event without a track")
                track = 0
            tracks[-1] = track
            if ts is None:
                problems.append(f"packet {index}: track event without a timestamp")
                ts = 0
            name = names.get(te.name_iid, "?") if te.HasField("name_iid") else ""
            events[track].append((ts, index, te.type, name, cat, file, line, cut, links))
    slices: list[Slice] = []
    for track, evs in events.items():
        if track not in descriptors:
            problems.append(f"events on undeclared track {track}")
        evs.sort(key=lambda e: (e[0], e[1]))
        stack: list[tuple[int, str, str, str, int, str, Links]] = []
        for ts, index, kind, name, cat, file, line, cut, links in evs:
            if kind == pb.TrackEvent.TYPE_SLICE_BEGIN:
                if len(stack) >= MAX_OPEN:
                    problems.append(f"track {track}: BEGIN {name!r}@{ts} at depth {len(stack)}")
                under = stack[-1][1] if stack else None
                stack.append((ts, name, cat, file, line, cut, (*links[:3], under)))
            elif kind == pb.TrackEvent.TYPE_SLICE_END:
                if not stack:
                    problems.append(f"track {track}: END at {ts} (packet {index}) with nothing open")
                    continue
                b, bname, bcat, bfile, bline, bcut, (flows, term, parent, under) = stack.pop()
                if (name and name != bname) or (cat and cat != bcat):
                    problems.append(f"track {track}: END {name!r}@{ts} closes {bname!r}@{b}")
                marks = {bcut, cut} - {""}
                cut_mark = "both" if len(marks) == 2 else bcut or cut
                links_out = (flows, term, parent, under)
                slices.append(Slice(track, b, ts, bname, bcat, bfile, bline, cut_mark, *links_out))
        for b, bname, *_ in stack:
            problems.append(f"track {track}: {bname!r}@{b} never ends")
    return Decoded(
        list(trace.packet), sorted(slices), problems + clocks.problems, descriptors, resolved, tracks
    )
