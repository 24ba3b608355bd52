"""A model of how Perfetto's trace processor (v58) imports our traces, for tests (its binary cannot be
fetched here). Each rule below is Perfetto's, from shared/reference/perfetto.md §3 and the trace
processor's sources (slice_tracker, track_compressor, flow_tracker, proto_trace_reader):

- **Order**: track events are processed in (trace time, file position) order. Trace time comes from
  ``worker.inspect_clocks`` (Perfetto's clock rules: incremental clocks, snapshots, packet defaults).
- **Track merging**: plain descriptor tracks (neither process nor thread) with the same parent uuid and
  the same name are one merge set (the default ``SIBLING_MERGE_BEHAVIOR_BY_TRACK_NAME``; ``NONE`` keeps a
  track apart). Perfetto lays a merge set onto rows with its track compressor, the track uuid being the
  cookie: an event goes to the row holding its uuid, else to the first row with no open slice (which
  adopts the uuid), else to a new row; a BEGIN adds one open slice to the row, an END removes one (never
  below zero). The rows are the tracks one sees after import.
- **Track**: an event's ``track_uuid``, else its sequence's ``track_event_defaults.track_uuid``.
- **Depth** (slice_tracker ``kMaxDepth``): a BEGIN on a row already holding 512 open slices is dropped
  (stat ``slice_max_depth_exceeded``, slice_tracker.cc ``StartSlice``), with its flows; its END then
  closes the slice below it, as Perfetto's does.
- **Nesting** (slice_tracker), per row: an END closes the most recent open slice of the row; an END
  naming another slice is counted as ``misplaced_end_event`` (Perfetto then keeps going, misnested); an
  END with nothing open is ignored (``end_without_begin`` here); a slice never closed has ``dur = -1``.
- **Flows** (flow_tracker, v2 ids): each ``flow_ids`` value on an event starts a flow at its slice, or, if
  the id is already pending, links the pending slice to this one and continues from here; each
  ``terminating_flow_ids`` value links the pending slice to this one and closes the id, or is counted as
  ``flow_end_without_start``.

Not modelled: instants, counters and log messages (not on the async or thread tracks' slices), interned
data generations beyond event names (the engine and inspect tests check those).
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

from worker.inspect_clocks import Clocks
from worker.perfetto_pb import pb

_BEGIN = pb.TrackEvent.TYPE_SLICE_BEGIN
_END = pb.TrackEvent.TYPE_SLICE_END
_NONE = 2  # SIBLING_MERGE_BEHAVIOR_NONE
#: slice_tracker.h ``kMaxDepth``: a slice begun on a stack this deep is dropped.
MAX_DEPTH = 512


@dataclass
class Slice:
    """One imported slice. row: (merge set or track key, row number); end None: never closed. A merge
    set's key is ("merged", parent uuid, name), an unmerged track's ("track", uuid)."""

    row: tuple[object, int]
    uuid: int  # the descriptor track its BEGIN was written on
    begin: int
    end: int | None
    name: str
    depth: int
    parent: int | None  # index of the enclosing slice on the same row


@dataclass
class Imported:
    slices: list[Slice] = field(default_factory=list)
    flows: list[tuple[int, int]] = field(default_factory=list)  # (from slice, to slice) indexes
    rows: Counter[object] = field(default_factory=Counter)  # rows per merge set / unmerged track
    stats: Counter[str] = field(default_factory=Counter)
    #: Flow ids started and never continued or terminated (no Perfetto stat: a flow from nowhere).
    dangling_flows: int = 0


@dataclass
class _Row:
    cookie: int
    open_count: int = 0
    stack: list[int] = field(default_factory=list)  # open slice indexes


@dataclass
class _Set:
    """The rows of one merge set (Perfetto's track compressor, with the uuid as cookie)."""

    rows: list[_Row] = field(default_factory=list)
    by_cookie: dict[int, int] = field(default_factory=dict)
    free: list[int] = field(default_factory=list)  # heap of rows that had no open slice (lazy)

    def row_for(self, cookie: int) -> int:
        """The row holding ``cookie``, else the first row with no open slice (adopting it), else a new one."""
        at = self.by_cookie.get(cookie)
        if at is not None:
            return at
        while self.free and self.rows[self.free[0]].open_count:
            heapq.heappop(self.free)  # busy again since it was freed
        if self.free:
            at = heapq.heappop(self.free)
            del self.by_cookie[self.rows[at].cookie]
            self.rows[at].cookie = cookie
        else:
            at = len(self.rows)
            self.rows.append(_Row(cookie))
        self.by_cookie[cookie] = at
        return at


def import_trace(data: bytes) -> Imported:
    """Import ``data`` (a serialized Trace) by the rules above."""
    trace = pb.Trace.FromString(data)
    clocks = Clocks()
    defaults: dict[int, int] = {}
    default_track: dict[int, int] = {}
    names: dict[int, dict[int, str]] = {}
    descriptors: dict[int, pb.TrackDescriptor] = {}
    events: list[tuple[int, int, pb.TrackEvent, str, int]] = []
    for index, packet in enumerate(trace.packet):
        seq = packet.trusted_packet_sequence_id
        if packet.sequence_flags & 1:
            defaults.pop(seq, None)
            default_track.pop(seq, None)
            names[seq] = {}
        if packet.HasField("trace_packet_defaults"):
            packet_defaults = packet.trace_packet_defaults
            defaults[seq] = packet_defaults.timestamp_clock_id
            default_track.pop(seq, None)
            if packet_defaults.HasField("track_event_defaults"):
                default_track[seq] = packet_defaults.track_event_defaults.track_uuid
        if packet.HasField("interned_data"):
            names.setdefault(seq, {}).update((n.iid, n.name) for n in packet.interned_data.event_names)
        if packet.HasField("clock_snapshot"):
            snap = packet.clock_snapshot
            clocks.snapshot(
                seq,
                [(c.clock_id, c.timestamp, c.unit_multiplier_ns, c.is_incremental) for c in snap.clocks],
                snap.primary_trace_clock or None,
            )
            continue
        if packet.HasField("track_descriptor"):
            descriptors.setdefault(packet.track_descriptor.uuid, packet.track_descriptor)
        clock = packet.timestamp_clock_id or defaults.get(seq, 0)
        ts, ok = clocks.resolve_one(seq, clock, packet.timestamp, packet.HasField("timestamp"))
        if packet.HasField("track_event") and ok:
            te = packet.track_event
            if te.type in (_BEGIN, _END):
                name = te.name if te.HasField("name") else names.get(seq, {}).get(te.name_iid, "?")
                uuid = te.track_uuid if te.HasField("track_uuid") else default_track.get(seq, 0)
                events.append((ts, index, te, name, uuid))
    events.sort(key=lambda e: (e[0], e[1]))

    out = Imported()
    sets: dict[object, _Set] = {}
    pending: dict[int, int] = {}  # flow id -> slice it leaves from
    for ts, _, te, name, uuid in events:
        desc = descriptors.get(uuid)
        if desc is None:
            out.stats["undeclared_track"] += 1
            continue
        plain = not desc.HasField("process") and not desc.HasField("thread")
        merged = plain and desc.sibling_merge_behavior != _NONE
        key: object = ("merged", desc.parent_uuid, desc.name) if merged else ("track", uuid)
        group = sets.setdefault(key, _Set())
        at = group.row_for(uuid)
        out.rows[key] = len(group.rows)
        row = group.rows[at]
        if te.type == _BEGIN:
            row.open_count += 1
            if len(row.stack) >= MAX_DEPTH:
                out.stats["slice_max_depth_exceeded"] += 1
                continue
            index = len(out.slices)
            parent = row.stack[-1] if row.stack else None
            out.slices.append(Slice((key, at), uuid, ts, None, name, len(row.stack), parent))
            row.stack.append(index)
            for flow in te.flow_ids:
                if flow in pending:
                    out.flows.append((pending[flow], index))
                pending[flow] = index
            for flow in te.terminating_flow_ids:
                if flow in pending:
                    out.flows.append((pending.pop(flow), index))
                else:
                    out.stats["flow_end_without_start"] += 1
        else:
            row.open_count = max(0, row.open_count - 1)
            if row.open_count == 0:
                heapq.heappush(group.free, at)
            if not row.stack:
                out.stats["end_without_begin"] += 1
                continue
            top = out.slices[row.stack.pop()]
            if te.HasField("name_iid") and name != top.name:
                out.stats["misplaced_end_event"] += 1
            top.end = ts
    out.stats["unfinished_slices"] = sum(s.end is None for s in out.slices)
    out.stats += Counter()  # drop zero counts
    out.dangling_flows = len(pending)
    return out
