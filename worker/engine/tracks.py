"""Header packets: the clock, the process, thread and async-group track descriptors, and track uuids.

Uuids: process = xxh64(process_id, seed 0) and thread = xxh64(stream_id, seed 0), as upstream, so traces
stay comparable; pid = low 32 bits of the process uuid (signed), as upstream. The async group track
keeps upstream's async track uuid, xxh64(b"async_track", seed=process uuid). Per-span async track
uuids are a per-trace counter (``async_spans``) steered away from these reserved ones. A thread's
depth-overflow track for band k (spans nested 512k to 512k + 511 levels deep, see ``thread_spans``) is
xxh64(b"depth_band_<k>", seed=thread uuid).

Tids: a thread id that parses as an integer in [1, 2**63) is used as is, unless an earlier thread (in
the order given) already has it. Otherwise (missing, non-numeric, out of range, or colliding) the tid
is synthetic: 2**31 + (xxh64(stream_id) mod 2**30), probing +1 until unused. That range is above every
32-bit thread id, so a synthetic tid only meets a real one from a 64-bit source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import xxhash

from worker.engine.wire import field_bytes, field_varint
from worker.model import ProcessInfo, ThreadInfo, TimeRange

__all__ = [
    "ThreadTrack",
    "async_group_uuid",
    "clock_packet",
    "depth_track_descriptor",
    "depth_track_uuid",
    "descriptor_packet",
    "group_descriptor",
    "log_track",
    "pid_of",
    "process_descriptor",
    "process_uuid",
    "thread_descriptor",
    "thread_tracks",
]

SEQUENCE_ID = 1
SEQ_CLEARED = 1
SEQ_NEEDS = 2
CLOCK_REALTIME = 1
CLOCK_BOOTTIME = 6
#: Name of the plain track that groups the per-span async tracks under the process.
ASYNC_GROUP_NAME = "Async spans"
_CHRONOLOGICAL = 2


def xxh64(data: bytes, seed: int = 0) -> int:
    return int(xxhash.xxh64_intdigest(data, seed=seed))


def process_uuid(process: ProcessInfo) -> int:
    return xxh64(process.process_id.encode())


def pid_of(uuid: int) -> int:
    return ((uuid & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000


def async_group_uuid(proc_uuid: int) -> int:
    return xxh64(b"async_track", seed=proc_uuid)


def _packet(body: bytes) -> bytes:
    return field_bytes(1, field_varint(10, SEQUENCE_ID) + body)


def clock_packet(time_range: TimeRange) -> bytes:
    """The first packet: clears incremental state, declares REALTIME, defaults events to REALTIME.

    The snapshot maps BOOTTIME (the trace clock) to REALTIME one to one (both = range begin), so
    trace timestamps stay epoch nanoseconds, the UI can show the time of day, and spans that began
    before the range do not turn into negative (dropped) trace times.
    """
    t = max(time_range.begin_ns, 0)
    clocks = field_bytes(1, field_varint(1, CLOCK_BOOTTIME) + field_varint(2, t)) + field_bytes(
        1, field_varint(1, CLOCK_REALTIME) + field_varint(2, t)
    )
    snapshot = clocks + field_varint(2, CLOCK_BOOTTIME)
    body = (
        field_bytes(6, snapshot)
        + field_varint(13, SEQ_CLEARED | SEQ_NEEDS)
        + field_bytes(59, field_varint(58, CLOCK_REALTIME))
        + field_varint(87, 1)
    )
    return _packet(body)


def _descriptor(desc: bytes) -> bytes:
    return _packet(field_varint(13, SEQ_NEEDS) + field_bytes(60, desc))


def descriptor_packet(desc: bytes) -> bytes:
    """A framed TracePacket carrying one TrackDescriptor body."""
    return _descriptor(desc)


def process_descriptor(process: ProcessInfo, time_range: TimeRange | None = None) -> bytes:
    """The process track. Its labels carry the process's identity and, with ``time_range``, the
    range the trace covers (``trace_begin_ns=``/``trace_end_ns=``, epoch ns: for an open-ended
    request, the end resolved when the job started)."""
    uuid = process_uuid(process)
    labels = [
        f"{key}={value}"
        for key, value in (
            ("username", process.username),
            ("realname", process.realname),
            ("computer", process.computer),
            ("distro", process.distro),
            ("cpu", process.cpu_brand),
            ("process_id", process.process_id),
        )
        if value
    ]
    labels += [f"{k}={v}" for k, v in sorted(process.properties.items())]
    if time_range is not None:
        labels += [f"trace_begin_ns={time_range.begin_ns}", f"trace_end_ns={time_range.end_ns}"]
    proc = field_varint(1, pid_of(uuid)) + field_bytes(6, process.exe)
    if process.start_time_ns is not None:
        proc += field_varint(7, process.start_time_ns)
    proc += b"".join(field_bytes(8, label) for label in labels)
    return _descriptor(field_varint(1, uuid) + field_bytes(3, proc))


@dataclass(frozen=True)
class ThreadTrack:
    stream_id: str
    uuid: int
    tid: int
    name: str


def _display_name(thread: ThreadInfo) -> str:
    if thread.thread_id:
        return f"{thread.thread_name}-{thread.thread_id}" if thread.thread_name else thread.thread_id
    return thread.thread_name or thread.stream_id


def _parse_tid(value: str) -> int | None:
    try:
        tid = int(value.strip())
    except ValueError:
        return None
    return tid if 1 <= tid < 1 << 63 else None


def thread_tracks(threads: Sequence[ThreadInfo]) -> list[ThreadTrack]:
    """One track per distinct stream id, in the given order, with unique tids."""
    tracks: list[ThreadTrack] = []
    seen_streams: set[str] = set()
    used: set[int] = set()
    for thread in threads:
        if thread.stream_id in seen_streams:
            continue
        seen_streams.add(thread.stream_id)
        uuid = xxh64(thread.stream_id.encode())
        tid = _parse_tid(thread.thread_id)
        if tid is None or tid in used:
            tid = (1 << 31) + uuid % (1 << 30)
            while tid in used:
                tid += 1
        used.add(tid)
        tracks.append(ThreadTrack(thread.stream_id, uuid, tid, _display_name(thread)))
    return tracks


#: Name of a log stream's track: "log stream <stream id>" (its own thread, see log_track).
LOG_TRACK_NAME = "log stream"


def log_track(stream_id: str, used_tids: set[int]) -> ThreadTrack:
    """The track of log entries from a stream that is not one of the process's threads.

    A thread of its own (uuid = xxh64(stream_id), as a thread track; synthetic tid as in
    :func:`thread_tracks`, probing past ``used_tids``, to which it is added), because Perfetto's
    importer puts a ``log_message`` into its log table (the UI's log panel) only for an event on a
    thread's track: on a process track it drops it ("LogMessage without thread association").
    """
    uuid = xxh64(stream_id.encode())
    tid = (1 << 31) + uuid % (1 << 30)
    while tid in used_tids:
        tid += 1
    used_tids.add(tid)
    name = f"{LOG_TRACK_NAME} {stream_id}" if stream_id else LOG_TRACK_NAME
    return ThreadTrack(stream_id, uuid, tid, name)


#: Thread names up to this many characters have their descriptor cached: names have no length
#: limit, and a hostile source's long ones would otherwise stay in memory for the worker's life.
_CACHED_NAME_CHARS = 256


def thread_descriptor(track: ThreadTrack, pid: int) -> bytes:
    """The TrackDescriptor packet of a thread's track (cached: many jobs ask for the same process)."""
    if len(track.name) <= _CACHED_NAME_CHARS:
        return _cached_thread_descriptor(track, pid)
    return _thread_descriptor(track, pid)


def _thread_descriptor(track: ThreadTrack, pid: int) -> bytes:
    thread = field_varint(1, pid) + field_varint(2, track.tid) + field_bytes(5, track.name)
    return _descriptor(field_varint(1, track.uuid) + field_bytes(4, thread))


# At most ~4,096 x (2 x 256 characters + the packet): a few MB.
_cached_thread_descriptor = lru_cache(maxsize=1 << 12)(_thread_descriptor)


def depth_track_uuid(thread_uuid: int, band: int) -> int:
    """Uuid of a thread's overflow track for depth band ``band`` (>= 1)."""
    return xxh64(b"depth_band_%d" % band, seed=thread_uuid)


def depth_track_descriptor(track: ThreadTrack, band: int, band_size: int) -> bytes:
    """The TrackDescriptor body of ``track``'s overflow track for levels [band * band_size, (band + 1) *
    band_size - 1]: a plain track under the thread's track (Perfetto shows it in the thread's group),
    named "<thread name> depth <first>-<last>"."""
    first = band * band_size
    name = f"{track.name} depth {first}-{first + band_size - 1}"
    return (
        field_varint(1, depth_track_uuid(track.uuid, band))
        + field_bytes(2, name)
        + field_varint(5, track.uuid)
    )


@lru_cache(maxsize=1 << 10)
def group_descriptor(proc_uuid: int) -> bytes:
    desc = (
        field_varint(1, async_group_uuid(proc_uuid))
        + field_varint(5, proc_uuid)
        + field_bytes(2, ASYNC_GROUP_NAME)
        + field_varint(11, _CHRONOLOGICAL)
    )
    return _descriptor(desc)
