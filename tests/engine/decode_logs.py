"""Test-side decoder of log messages and counter values, the way Perfetto's importer reads them.

Independent of the engine: interned tables are rebuilt packet by packet (an interned entry in a
packet is visible to that packet's event, as in Perfetto), and every use of an unknown iid is a
problem. A log message reaches Perfetto's log table (SQL ``android_logs``, the UI's log panel) only
from an event on a thread's track (its importer needs the thread: "LogMessage without thread
association" otherwise), so one on any other track is a problem too; the table's row gets the
thread's pid and tid, and the tag ``file_name:line_number`` of the interned source location.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from tests.engine.decode import Clocks
from worker.perfetto_pb import pb


@dataclass(frozen=True, order=True)
class Log:
    ts: int
    track: int
    prio: int
    body: str
    tag: str
    name: str
    pid: int = 0
    tid: int = 0


@dataclass
class LogsAndCounters:
    logs: list[Log]
    counters: dict[int, list[tuple[int, float]]]
    descriptors: dict[int, pb.TrackDescriptor]
    problems: list[str] = field(default_factory=list)


def decode_logs(data: bytes) -> LogsAndCounters:
    trace = pb.Trace.FromString(data)
    names: dict[int, str] = {}
    locs: dict[int, str] = {}
    bodies: dict[int, str] = {}
    logs: list[Log] = []
    counters: dict[int, list[tuple[int, float]]] = defaultdict(list)
    descriptors: dict[int, pb.TrackDescriptor] = {}
    problems: list[str] = []
    clocks = Clocks()
    for index, packet in enumerate(trace.packet):
        ts = clocks.packet(index, packet)
        if packet.sequence_flags & 1:
            names, locs, bodies = {}, {}, {}
        if packet.HasField("interned_data"):
            data_ = packet.interned_data
            for n in data_.event_names:
                names[n.iid] = n.name
            for s in data_.source_locations:
                locs[s.iid] = f"{s.file_name}:{s.line_number}"
            for b in data_.log_message_body:
                if b.iid in bodies:
                    problems.append(f"packet {index}: body iid {b.iid} redefined")
                bodies[b.iid] = b.body
        if packet.HasField("track_descriptor"):
            descriptors[packet.track_descriptor.uuid] = packet.track_descriptor
        if not packet.HasField("track_event"):
            continue
        te = packet.track_event
        if not te.HasField("log_message") and te.type != pb.TrackEvent.TYPE_COUNTER:
            continue  # slices: tests/engine/decode.py
        if te.track_uuid not in descriptors:
            problems.append(f"packet {index}: event on undeclared track {te.track_uuid}")
        if te.HasField("log_message"):
            lm = te.log_message
            if te.type != pb.TrackEvent.TYPE_INSTANT:
                problems.append(f"packet {index}: log message on a {te.type} event")
            for iid, table in ((lm.body_iid, bodies), (lm.source_location_iid, locs), (te.name_iid, names)):
                if iid not in table:
                    problems.append(f"packet {index}: iid {iid} used before definition")
            desc = descriptors.get(te.track_uuid)
            if desc is None or not desc.HasField("thread"):
                problems.append(
                    f"packet {index}: log message on a track without a thread (not in the log table)"
                )
                continue
            logs.append(
                Log(
                    ts if ts is not None else -1,
                    te.track_uuid,
                    lm.prio,
                    bodies.get(lm.body_iid, "?"),
                    locs.get(lm.source_location_iid, "?"),
                    names.get(te.name_iid, "?"),
                    desc.thread.pid,
                    desc.thread.tid,
                )
            )
        elif te.type == pb.TrackEvent.TYPE_COUNTER:
            if not te.HasField("double_counter_value"):
                problems.append(f"packet {index}: counter event without a double value")
            desc = descriptors.get(te.track_uuid)
            if desc is None or not desc.HasField("counter"):
                problems.append(f"packet {index}: counter value on a track that is not a counter")
            counters[te.track_uuid].append((ts if ts is not None else -1, te.double_counter_value))
    return LogsAndCounters(logs, dict(counters), descriptors, problems + clocks.problems)
