"""Decode a Perfetto trace and list its tracks, sizes and defects (`trace-worker inspect`).

The file is read packet by packet (never whole), decoded with the generated classes, and checked the
way Perfetto's trace processor reads it:

- framing: every top-level field must be a well-formed ``Trace.packet`` (``malformed``);
- every packet has a ``trusted_packet_sequence_id`` (``no_sequence_id``);
- interned data, and packets flagged SEQ_NEEDS_INCREMENTAL_STATE, only after a packet of the same
  sequence set SEQ_INCREMENTAL_STATE_CLEARED (``state_not_cleared``);
- every iid a track event uses is defined earlier in the same sequence and generation
  (``iid_undefined``);
- log messages' body and source location iids too (``iid_undefined``);
- track events only on tracks some descriptor declares (``undeclared_track``); an event without
  ``track_uuid`` is on its sequence's ``TrackEventDefaults.track_uuid``;
- a uuid described twice only with the same bytes (``conflicting_descriptor``);
- log messages only on tracks of a thread (``log_without_thread``: Perfetto's importer drops the others,
  "LogMessage without thread association"), counter values only on counter tracks
  (``counter_on_non_counter_track``);
- timestamps resolved by Perfetto's clock rules (``worker/inspect_clocks.py``): a clock no ClockSnapshot
  read so far relates to the trace clock (``clock_unresolved``, e.g. REALTIME without a snapshot or an
  undeclared sequence clock 64-127), a snapshot Perfetto rejects (``bad_clock_snapshot``), a negative
  trace time (``invalid_timestamp``);
- per track, events sorted by (timestamp, file position) and an END closing the most recent open slice:
  an END whose name/category differs from that slice (a partial overlap, ``misnested_end``; an END
  without a name cannot show it), an END with nothing open (``unmatched_end``), slices never closed
  (``unterminated``), a BEGIN on a track already holding :data:`MAX_OPEN_SLICES` open slices
  (``max_depth_exceeded``: Perfetto drops it, stat ``slice_max_depth_exceeded``, and its END then
  closes the slice below).

Example:
    >>> report = inspect_trace("trace.pftrace")  # doctest: +SKIP
    >>> report.ok, report.slices  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from worker import inspect_columns as cols
from worker.inspect_clocks import ClockError, Clocks
from worker.inspect_templates import Templates
from worker.perfetto_pb import pb

__all__ = ["Defect", "InspectReport", "TrackSummary", "inspect_trace"]

#: Defect messages kept per kind (all are counted).
MAX_EXAMPLES = 20
#: Open slices a track holds at most in Perfetto's trace processor (``SliceTracker::kMaxDepth``).
MAX_OPEN_SLICES = 512
_CLEARED = 1
_NEEDS = 2
_BEGIN = pb.TrackEvent.TYPE_SLICE_BEGIN
_END = pb.TrackEvent.TYPE_SLICE_END
_INSTANT = pb.TrackEvent.TYPE_INSTANT
_COUNTER = pb.TrackEvent.TYPE_COUNTER
#: Added to an event's kind (its type) in the replay when it carries a log message.
_LOG = 16


@dataclass
class Defect:
    kind: str
    message: str
    packet: int | None = None


@dataclass
class TrackSummary:
    uuid: int
    name: str
    kind: str  # "process", "thread", "counter", "track" (plain) or "undeclared"
    parent: int | None = None
    slices: int = 0  # BEGIN and INSTANT events without a log message
    logs: int = 0  # events with a log message
    counter_values: int = 0  # TYPE_COUNTER events
    pid: int | None = None
    tid: int | None = None


@dataclass
class InspectReport:
    """What ``inspect_trace`` found."""

    bytes: int = 0
    packets: int = 0
    track_events: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    tracks: list[TrackSummary] = field(default_factory=list)
    interned: dict[str, int] = field(default_factory=dict)
    defect_counts: dict[str, int] = field(default_factory=dict)
    defects: list[Defect] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.defect_counts

    @property
    def slices(self) -> int:
        return sum(t.slices for t in self.tracks)

    @property
    def logs(self) -> int:
        return sum(t.logs for t in self.tracks)

    @property
    def counter_values(self) -> int:
        return sum(t.counter_values for t in self.tracks)

    def add(self, kind: str, message: str, packet: int | None = None) -> None:
        count = self.defect_counts.get(kind, 0)
        self.defect_counts[kind] = count + 1
        if count < MAX_EXAMPLES:
            self.defects.append(Defect(kind, message, packet))

    def add_count(self, kind: str, count: int, message: str, packet: int | None = None) -> None:
        """``count`` defects of one kind with one example message."""
        seen = self.defect_counts.get(kind, 0)
        self.defect_counts[kind] = seen + count
        if seen < MAX_EXAMPLES:
            self.defects.append(Defect(kind, message, packet))

    def add_many(self, kind: str, packets: npt.NDArray[np.int64], message: Callable[[int], str]) -> None:
        """One defect per packet index in ``packets``; ``message(k)`` (k: position in ``packets``) is only
        called for the examples kept."""
        count = self.defect_counts.get(kind, 0)
        self.defect_counts[kind] = count + len(packets)
        for k in range(max(0, min(len(packets), MAX_EXAMPLES - count))):
            self.defects.append(Defect(kind, message(k), int(packets[k])))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["slices"] = self.slices
        out["logs"] = self.logs
        out["counter_values"] = self.counter_values
        return out


class _Malformed(Exception):
    pass


def _varint(buf: bytes | bytearray, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise IndexError
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise _Malformed("varint longer than 10 bytes")


def frame_fast(buf: bytes, pos: int) -> tuple[I64, I64, int]:
    """Frame the run of ``Trace.packet`` fields with a one- or two-byte length from ``pos``, columnar.

    Every position holding 0x0A followed by a short length is a candidate whose successor is known; the
    candidates reachable from ``pos`` are found by pointer doubling (marking distances < 2^k in round k).
    Returns (body starts, body lengths, end of the run): the run stops at the first field of another
    shape or at one cut off by the end of ``buf``.
    """
    b = np.frombuffer(buf, np.uint8)
    n = len(b)
    cand = np.flatnonzero(b[pos : n - 2] == 0x0A) + pos
    one, two = b[cand + 1].astype(np.int64), b[cand + 2].astype(np.int64)
    short = one < 0x80
    keep = short | (two < 0x80)
    cand, one, two, short = cand[keep], one[keep], two[keep], short[keep]
    if not len(cand) or cand[0] != pos:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), pos
    header = np.where(short, 2, 3)
    nxt_pos = cand + header + np.where(short, one, (one & 0x7F) | (two << 7))
    at = np.searchsorted(cand, nxt_pos)
    found = (at < len(cand)) & (cand[np.minimum(at, len(cand) - 1)] == nxt_pos)
    stop = len(cand)  # sentinel: the chain leaves the candidates
    jump = np.where(found, at, stop)
    jump = np.append(jump, stop)
    mark = np.zeros(len(cand) + 1, np.bool_)
    mark[0] = True
    span = 1
    while span <= len(cand):
        mark[jump[mark]] = True
        jump = jump[jump]
        span *= 2
    chain = np.flatnonzero(mark[:-1])
    starts, ends, head = cand[chain], nxt_pos[chain], header[chain]
    ok = ends <= n  # only the last can be cut off by the end of the block
    starts, ends, head = starts[ok], ends[ok], head[ok]
    if not len(starts):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), pos
    return starts + head, ends - starts - head, int(ends[-1])


def frame_block(buf: bytes, base: int) -> tuple[I64, I64, int, str | None]:
    """Like ``frame``, with runs of small packets framed columnar (``frame_fast``)."""
    parts_s: list[I64] = []
    parts_l: list[I64] = []
    pos = 0
    while pos < len(buf):
        starts, lens, end = frame_fast(buf, pos)
        if len(starts):
            parts_s.append(starts)
            parts_l.append(lens)
            pos = end
            continue
        one_s, one_l, used, error = frame(buf, base, pos, max_fields=64)
        parts_s.append(np.asarray(one_s, np.int64))
        parts_l.append(np.asarray(one_l, np.int64))
        if error is not None or used == pos:
            return _cat(parts_s), _cat(parts_l), used, error
        pos = used
    return _cat(parts_s), _cat(parts_l), pos, None


def _cat(parts: list[I64]) -> I64:
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def frame(
    buf: bytes, base: int, pos: int = 0, max_fields: int | None = None
) -> tuple[list[int], list[int], int, str | None]:
    """Packet bodies in ``buf`` (offset ``base`` in the file).

    Returns (body starts, body lengths, bytes used, framing error or None). Top-level fields other than
    ``Trace.packet`` are skipped; a field cut off at the end of ``buf`` is left for the next block.
    """
    starts: list[int] = []
    lens: list[int] = []
    add_start, add_len = starts.append, lens.append
    n = len(buf)
    fields = 0
    while pos < n and (max_fields is None or fields < max_fields):
        fields += 1
        if buf[pos] == 0x0A and pos + 1 < n:
            length = buf[pos + 1]
            if length < 0x80:
                if pos + 2 + length > n:
                    break
                add_start(pos + 2)
                add_len(length)
                pos += 2 + length
                continue
        try:
            start = pos
            key, pos = _varint(buf, pos)
            wire = key & 7
            if wire == 2:
                length, pos = _varint(buf, pos)
                if pos + length > n:
                    raise IndexError
                if key >> 3 == 1:
                    add_start(pos)
                    add_len(length)
                pos += length
            elif wire == 0:
                _, pos = _varint(buf, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
                if pos > n:
                    raise IndexError
            else:
                return starts, lens, start, f"wire type {wire} at offset {base + start}"
        except (IndexError, _Malformed):
            pos = start
            break
    return starts, lens, pos, None


def iter_blocks(stream: BinaryIO, block: int = 4 << 20) -> Iterator[tuple[bytes, int, I64, I64]]:
    """(block bytes, file offset of the block, body starts, body lengths), reading ``block`` at a time.

    Raises:
        _Malformed: on a framing error (bad wire type, truncated field); every packet before it was
            yielded.
    """
    buf = b""
    base = 0
    while True:
        data = stream.read(block)
        eof = not data
        buf += data
        starts, lens, used, error = frame_block(buf, base)
        if error is not None:
            if len(starts):
                yield buf, base, starts, lens
            raise _Malformed(error)
        if len(starts):
            yield buf, base, starts, lens
        buf = buf[used:]
        base += used
        if eof:
            if buf:
                raise _Malformed(f"truncated field at offset {base} ({len(buf)} bytes left)")
            return


class _Lookup:
    """iid -> value of one interned table, for arrays of iids (dense when the iids are small)."""

    def __init__(self, table: dict[int, int]) -> None:
        keys = np.fromiter(table.keys(), np.uint64, len(table))
        values = np.fromiter(table.values(), np.int64, len(table))
        self.dense: I64 | None = None
        if not len(keys) or int(keys.max()) < 1 << 20:
            size = int(keys.max()) + 1 if len(keys) else 0
            self.dense = np.full(size + 1, -1, dtype=np.int64)  # last slot: every iid past the table
            self.dense[keys.astype(np.int64)] = values
        else:
            order = np.argsort(keys)
            self.keys, self.values = keys[order], values[order]

    def __call__(self, iids: U64) -> tuple[npt.NDArray[np.bool_], I64]:
        """(found, value or -1) per iid."""
        if self.dense is not None:
            got = self.dense[np.minimum(iids, np.uint64(len(self.dense) - 1)).astype(np.int64)]
        else:
            at = np.minimum(np.searchsorted(self.keys, iids), len(self.keys) - 1)
            got = np.where(self.keys[at] == iids, self.values[at], -1)
        return got >= 0, got


class _IidRuns:
    """A set of iids kept as sorted runs of consecutive values (a writer's log bodies: usually one run)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []  # inclusive

    def __len__(self) -> int:
        return sum(e - s + 1 for s, e in zip(self.starts, self.ends, strict=True))

    def __contains__(self, iid: int) -> bool:
        i = bisect.bisect_right(self.starts, iid) - 1
        return i >= 0 and iid <= self.ends[i]

    def add(self, iid: int) -> None:
        starts, ends = self.starts, self.ends
        i = bisect.bisect_right(starts, iid) - 1
        if i >= 0 and iid <= ends[i]:
            return
        joins_next = i + 1 < len(starts) and starts[i + 1] == iid + 1
        if i >= 0 and ends[i] == iid - 1:
            ends[i] = iid
            if joins_next:
                ends[i] = ends.pop(i + 1)
                starts.pop(i + 1)
        elif joins_next:
            starts[i + 1] = iid
        else:
            starts.insert(i + 1, iid)
            ends.insert(i + 1, iid)


@dataclass
class _Sequence:
    """One sequence's incremental state (one generation: a CLEARED packet starts a new one)."""

    cleared: bool = False  # valid: CLEARED seen and no packet loss since
    tables: tuple[dict[int, int], ...] = field(default_factory=lambda: ({}, {}, {}, {}))  # by iid table
    clock: int = 0  # TracePacketDefaults.timestamp_clock_id (0: none)
    default_track: int | None = None  # TracePacketDefaults.track_event_defaults.track_uuid
    bodies: _IidRuns = field(default_factory=_IidRuns)  # InternedData.log_message_body iids
    lookups: dict[int, _Lookup] = field(default_factory=dict)
    dense: I64 | None = None  # (tables, max iid + 2): value or -1, when every iid is small

    def lookup(self, table: int) -> _Lookup:
        got = self.lookups.get(table)
        if got is None:
            got = self.lookups[table] = _Lookup(self.tables[table])
        return got

    def find(self, table: I64, iid: U64) -> tuple[npt.NDArray[np.bool_], I64]:
        """(defined, value or -1) of each (table, iid), in one gather when the iids are small."""
        if self.dense is None and all(not t or max(t) < 1 << 16 for t in self.tables):
            size = max((max(t) for t in self.tables if t), default=0) + 2
            self.dense = np.full((len(self.tables), size), -1, dtype=np.int64)
            for k, t in enumerate(self.tables):
                if t:
                    self.dense[k, np.fromiter(t.keys(), np.int64, len(t))] = np.fromiter(
                        t.values(), np.int64, len(t)
                    )
        if self.dense is not None:
            got = self.dense[table, np.minimum(iid, np.uint64(self.dense.shape[1] - 1)).astype(np.int64)]
            return got >= 0, got
        found = np.zeros(len(iid), dtype=bool)
        value = np.full(len(iid), -1, dtype=np.int64)
        for k in range(len(self.tables)):
            m = table == k
            if m.any():
                found[m], value[m] = self.lookup(k)(iid[m])
        return found, value


_TABLE_WORDS = {cols.NAME: "name", cols.CATEGORY: "category", cols.LOCATION: "source location"}
_TABLE_WORDS[cols.ANNOTATION] = "debug annotation name"

#: Track events replayed together: the memory held is proportional to this, not to the file.
BATCH_EVENTS = 1 << 19
_COLUMNS = ("track", "ts", "pos", "kind", "name", "cat")
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]


class _SortedSet:
    """A growing set of uint64 kept sorted (insertions in bulk), with ``width`` int64 counters per member."""

    def __init__(self, width: int = 1) -> None:
        self.keys = np.zeros(0, dtype=np.uint64)
        self.counts = np.zeros((0, width), dtype=np.int64)

    def add(self, values: U64, *, distinct: bool = False) -> U64:
        """Insert ``values`` (``distinct``: already sorted and distinct); returns the new ones."""
        uniq = values if distinct else np.unique(values)
        at = np.searchsorted(self.keys, uniq)
        present = at < len(self.keys)
        present[present] = self.keys[at[present]] == uniq[present]
        new = uniq[~present]
        if len(new):
            self.keys = np.insert(self.keys, at[~present], new)
            self.counts = np.insert(self.counts, at[~present], 0, axis=0)
        return new

    def count(self, members: U64, counts: I64) -> None:
        """Add ``counts`` (shape (len(members), width)) to the counters of ``members`` (distinct, all
        already in the set)."""
        if len(members):
            self.counts[np.searchsorted(self.keys, members)] += counts

    def set(self, members: U64, values: I64) -> None:
        """Set the counters of ``members`` (distinct, all already in the set) to ``values``."""
        if len(members):
            self.counts[np.searchsorted(self.keys, members)] = values

    def counts_of(self, values: U64) -> tuple[npt.NDArray[np.bool_], I64]:
        """(member, counters or 0) of each of ``values``."""
        if not len(self.keys):
            return np.zeros(len(values), dtype=bool), np.zeros((len(values), self.counts.shape[1]), np.int64)
        at = np.minimum(np.searchsorted(self.keys, values), len(self.keys) - 1)
        found = self.keys[at] == values
        return found, np.where(found[:, None], self.counts[at], 0)


class _Inspector:
    def __init__(self) -> None:
        self.report = InspectReport()
        self.sequences: dict[int, _Sequence] = {}
        self.clocks = Clocks()
        self.templates = Templates()
        self.strings: dict[str, int] = {"": 0}
        # Tracks as declared, first descriptor of each uuid wins, in file order; per uuid the
        # fingerprint of that descriptor's bytes and its packet index.
        self.declared = _SortedSet(width=2)
        self.track_parts: list[
            tuple[U64, list[TrackSummary | None], I64, U64, npt.NDArray[np.bool_], Any]
        ] = []
        # Every track with events: its slice, log message and counter value counts.
        self.event_tracks = _SortedSet(width=3)
        self.pending: list[list[npt.NDArray[Any]]] = []
        self.pending_n = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        # Replay state carried between batches: open BEGINs (at most the open slices) and ENDs seen
        # with nothing open, kept one batch in case their BEGIN is written later (lane roots).
        self.carried: list[npt.NDArray[Any]] = [np.zeros(0, np.uint64)] + [np.zeros(0, np.int64)] * 5
        self.carried_age = np.zeros(0, np.int64)
        self.unresolved: set[tuple[int, int]] = set()
        self.interned_total = {"event_names": 0, "event_categories": 0, "source_locations": 0}
        self.interned_total["debug_annotation_names"] = 0
        self.interned_total["log_message_bodies"] = 0
        self.parsed_rows: list[int] = []  # the block's packets decoded by protobuf, ascending
        self.body_rows: set[int] = set()  # those that only intern log message bodies (no segment boundary)

    def _string_id(self, value: str) -> int:
        sid = self.strings.get(value)
        if sid is None:
            sid = self.strings[value] = len(self.strings)
        return sid

    def block(self, buf: bytes, starts: I64, lens: I64) -> None:
        """Check the packets of one block (bodies at ``starts`` in ``buf``), in file order.

        Packets are decoded columnar (``inspect_columns``); the few the columnar path leaves go through
        the protobuf classes. Sequence and clock state change only at such packets: the packets between
        two of them are checked together (``_segment``) against the state in force.
        """
        first = self.report.packets
        self.report.packets += len(starts)
        self.body_rows = set()
        blk = cols.decode_block(buf, starts, lens, self.templates)
        dead = np.zeros(len(starts), dtype=bool)
        snapshot = np.zeros(len(starts), dtype=bool)
        parsed: dict[int, pb.TracePacket] = {}
        boundaries: list[int] = []
        for r in blk.slow.tolist():
            s, n = int(starts[r]), int(lens[r])
            try:
                packet = pb.TracePacket.FromString(buf[s : s + n])
            except DecodeError as exc:
                self.report.add("malformed", f"packet at offset {s} does not decode: {exc}", first + r)
                dead[r] = True
                continue
            parsed[r] = packet
            blk.has_ts[r] = packet.HasField("timestamp")
            blk.ts[r] = packet.timestamp
            blk.has_seq[r] = packet.HasField("trusted_packet_sequence_id")
            blk.seq[r] = packet.trusted_packet_sequence_id
            blk.flags[r] = packet.sequence_flags
            blk.clock[r] = packet.timestamp_clock_id
            snapshot[r] = packet.HasField("clock_snapshot")
            if _changes_state(packet):
                if _only_log_bodies(packet):
                    self.body_rows.add(r)  # applied in file order among the protobuf-path packets
                else:
                    boundaries.append(r)
        self.parsed_rows = list(parsed)
        self._tracks(blk, buf, parsed, first)
        lo = 0
        for r in [*boundaries, len(starts)]:
            self._segment(blk, parsed, skip=dead | snapshot, snapshot=snapshot, span=(lo, r), first=first)
            if r < len(starts):
                self._state(first + r, parsed[r])
            lo = r
        # Only between blocks: a batch must hold every event of a stretch of the file.
        if self.pending_n >= BATCH_EVENTS:
            self.replay_batch()

    def _tracks(self, blk: cols.Block, buf: bytes, parsed: dict[int, pb.TracePacket], first_pkt: int) -> None:
        """Record the tracks the block declares (the first descriptor of a uuid wins) and report a uuid
        described again with other bytes (``conflicting_descriptor``)."""
        d = blk.descriptors
        rows = [r for r, p in parsed.items() if p.WhichOneof("data") == "track_descriptor"]
        summaries: list[TrackSummary | None] = [None] * len(d.row)
        slow = [self._descriptor(parsed[r].track_descriptor) for r in rows]
        row = np.concatenate([d.row, np.asarray(rows, dtype=np.int64)])
        if not len(row):
            return
        fp = _fingerprints(buf, blk.desc_off[row], np.maximum(blk.desc_len[row], 0))
        for k, r in enumerate(rows):  # descriptors the walk could not frame: their re-encoded bytes
            if blk.desc_len[r] < 0:
                raw = parsed[r].track_descriptor.SerializeToString()
                fp[len(d.row) + k] = _fingerprints(raw, np.zeros(1, np.int64), np.array([len(raw)]))[0]
        counter = np.concatenate([d.counter, np.zeros(len(rows), bool)])
        uuid = np.concatenate([d.uuid, np.array([t.uuid for t in slow], dtype=np.uint64)])
        name = np.concatenate(
            [np.array([self._string_id(s) for s in d.name], dtype=np.int64), np.zeros(len(rows), np.int64)]
        )
        parent = np.concatenate([d.parent, np.zeros(len(rows), np.uint64)])
        has_parent = np.concatenate([d.has_parent, np.zeros(len(rows), bool)])
        summaries += slow
        order = np.argsort(row, kind="stable")
        uuid, fp, at = uuid[order], fp[order], row[order] + first_pkt
        _, first, inverse = np.unique(uuid, return_index=True, return_inverse=True)
        # The descriptor each one must equal: the earliest of its uuid (earlier blocks, else this one).
        known, ref = self.declared.counts_of(uuid)
        ref_fp = np.where(known, ref[:, 0], fp[first][inverse])
        ref_at = np.where(known, ref[:, 1], at[first][inverse])
        differ = np.flatnonzero(fp != ref_fp)
        if len(differ):
            self.report.add_many(
                "conflicting_descriptor",
                at[differ],
                lambda k: (
                    f"track {int(uuid[differ[k]])} described again with other content than at packet "
                    f"{int(ref_at[differ[k]])} (Perfetto keeps one of them)"
                ),
            )
        first = np.sort(first)
        new = self.declared.add(uuid[first])
        keep = first[np.isin(uuid[first], new)]
        if len(keep):
            self.declared.set(uuid[keep], np.stack([fp[keep], at[keep]], axis=1))
            picked = order[keep]
            self.track_parts.append(
                (
                    uuid[keep],
                    [summaries[i] for i in picked.tolist()],
                    name[picked],
                    parent[picked],
                    has_parent[picked],
                    counter[picked],
                )
            )

    def _segment(
        self,
        blk: cols.Block,
        parsed: dict[int, pb.TracePacket],
        *,
        skip: npt.NDArray[np.bool_],
        snapshot: npt.NDArray[np.bool_],
        span: tuple[int, int],
        first: int,
    ) -> None:
        """Check the block's packets ``span`` = [lo, hi): one sequence and clock state holds for all.

        ``skip``: packets that do not decode and ClockSnapshot packets (Perfetto reads nothing else of
        those, and does not timestamp them).
        """
        lo, hi = span
        rep = self.report
        rows = np.arange(lo, hi)
        no_seq = ~blk.has_seq[lo:hi] & ~skip[lo:hi] | (~blk.has_seq[lo:hi] & snapshot[lo:hi])
        if no_seq.any():
            rep.add_many(
                "no_sequence_id", first + rows[no_seq], lambda _: "packet has no trusted_packet_sequence_id"
            )
        rows = rows[~skip[lo:hi]]
        if not len(rows):
            return
        has_seq = blk.has_seq[rows]
        seq = np.where(has_seq, blk.seq[rows], 0).astype(np.int64)
        valid = np.zeros(len(rows), dtype=bool)
        default_clock = np.zeros(len(rows), dtype=np.int64)
        states: dict[int, _Sequence] = {}
        for s in _distinct(seq):
            st = states[s] = self.sequences.setdefault(s, _Sequence())
            at = seq == s
            valid[at] = st.cleared
            default_clock[at] = st.clock
        needs = ((blk.flags[rows] & np.uint64(_NEEDS)) != 0) & ~valid
        if needs.any():
            message = "SEQ_NEEDS_INCREMENTAL_STATE before a CLEARED packet"
            rep.add_many("state_not_cleared", first + rows[needs], lambda _: message)
        # Perfetto skips those packets: no timestamp, no event (their iids are still checked below).
        live = ~needs
        clock = np.where(blk.clock[rows] != 0, blk.clock[rows].astype(np.int64), default_clock)
        got = self.clocks.resolve(seq[live], clock[live], blk.ts[rows][live], blk.has_ts[rows][live])
        ts = np.zeros(len(rows), dtype=np.int64)
        usable = np.zeros(len(rows), dtype=bool)
        ts[live], usable[live] = got.ts, got.ok
        for key, at_ in got.unresolved:
            if key not in self.unresolved:
                self.unresolved.add(key)
                where = f" of sequence {key[0]}" if key[0] else ""
                rep.add(
                    "clock_unresolved",
                    f"timestamps on clock {key[1]}{where} that no ClockSnapshot read so far relates to the "
                    f"trace clock {self.clocks.trace_clock[1]}: Perfetto drops those packets",
                    int(first + rows[live][at_]),
                )
        negative = usable & (ts < 0)
        if negative.any():
            message = "negative trace time: Perfetto drops the event"
            rep.add_many("invalid_timestamp", first + rows[negative], lambda _: message)
            usable &= ~negative
        self._events(blk, rows, seq, times=(ts, usable), states=states, first=first)
        keys = self.parsed_rows  # parsed's keys, ascending: a bisect, not a scan per segment
        for r in keys[bisect.bisect_left(keys, lo) : bisect.bisect_left(keys, hi)]:
            if skip[r]:
                continue
            packet = parsed[r]
            if r in self.body_rows:
                self._state(first + r, packet)
            if packet.HasField("track_event"):
                k = int(np.searchsorted(rows, r))
                state = states[int(seq[k])] if has_seq[k] else None
                self._event(first + r, packet, state, int(ts[k]), bool(usable[k]))

    def _events(
        self,
        blk: cols.Block,
        rows: I64,
        seq: I64,
        *,
        times: tuple[I64, npt.NDArray[np.bool_]],
        states: dict[int, _Sequence],
        first: int,
    ) -> None:
        """Check and keep the columnar-decoded track events among ``rows`` (``times``: trace time per row,
        and whether Perfetto keeps the packet)."""
        ts, usable = times
        ev = blk.events
        sel: Any = slice(None)
        i_sel: Any = slice(None)
        i_ev = ev.iid_event
        if len(ev.row) and (rows[0] > ev.row.min() or rows[-1] < ev.row.max()):  # several segments
            in_seg = (ev.row >= rows[0]) & (ev.row <= rows[-1])
            sel = np.flatnonzero(in_seg)
            i_sel = np.flatnonzero(in_seg[ev.iid_event])
            i_ev = (np.cumsum(in_seg) - 1)[ev.iid_event[i_sel]]
        row = ev.row[sel]
        n = len(row)
        if not n:
            return
        rep = self.report
        # Position of each event's packet among rows (rows is a run of packets unless some were skipped).
        at = row - rows[0] if rows[-1] - rows[0] == len(rows) - 1 else np.searchsorted(rows, row)
        rep.track_events += n
        i_tab, i_val = ev.iid_table[i_sel], ev.iid[i_sel]
        i_seq = seq[at[i_ev]]
        found = np.zeros(len(i_ev), dtype=bool)
        value = np.full(len(i_ev), -1, dtype=np.int64)
        for s in _distinct(i_seq):
            m: Any = slice(None) if len(states) == 1 else i_seq == s
            found[m], value[m] = states[s].find(i_tab[m], i_val[m])
        missing = np.flatnonzero(~found)
        if len(missing):
            bad_events = np.unique(i_ev[missing])

            def message(k: int) -> str:
                e = int(bad_events[k])
                sel = missing[i_ev[missing] == e]
                parts = ", ".join(f"{_TABLE_WORDS[int(i_tab[j])]} {int(i_val[j])}" for j in sel.tolist())
                st = states[int(seq[at[e]])]
                return (
                    f"iids used before definition: {parts}{'' if st.cleared else ' (sequence never CLEARED)'}"
                )

            rep.add_many("iid_undefined", first + rows[at[bad_events]], message)
        name = np.zeros(n, dtype=np.int64)
        cat = np.zeros(n, dtype=np.int64)
        is_name = found & (i_tab == cols.NAME)
        name[i_ev[is_name]] = value[is_name]
        is_cat = found & (i_tab == cols.CATEGORY)
        # The first category: iids are listed per table in field order, so the first hit per event wins.
        ev_cat, first_at = np.unique(i_ev[is_cat], return_index=True)
        cat[ev_cat] = value[np.flatnonzero(is_cat)[first_at]]
        track = ev.track[sel].copy()
        no_track = ~ev.has_track[sel]
        if no_track.any():  # on the sequence's default track (thread events of our writer), columnar
            ev_seq = seq[at]
            for s in _distinct(ev_seq[no_track]):
                default = states[s].default_track
                if default is not None:
                    hit = no_track & (ev_seq == s)
                    track[hit] = default
                    no_track[hit] = False
            if no_track.any():
                rep.add_many(
                    "undeclared_track", first + rows[at[no_track]], lambda _: "track event without track_uuid"
                )
        kind = ev.type[sel]
        kind = np.where((kind == _BEGIN) | (kind == _END) | (kind == _INSTANT) | (kind == _COUNTER), kind, 0)
        keep = usable[at]
        self._keep(track[keep], ts[at][keep], (first + rows[at])[keep], kind[keep], name[keep], cat[keep])

    def _keep(self, track: U64, *columns: I64) -> None:
        """Queue events for the replay: track uuid, then ts, pos, kind, name and cat columns."""
        if len(track):
            self.pending.append([track, *columns])
            self.pending_n += len(track)

    def _state(self, index: int, packet: pb.TracePacket) -> None:
        """Apply the sequence and clock state changes of one packet (before its own timestamp and event)."""
        seq: _Sequence | None = None
        seq_id = packet.trusted_packet_sequence_id
        if packet.HasField("trusted_packet_sequence_id"):
            seq = self.sequences.setdefault(seq_id, _Sequence())
        if seq is not None and (packet.sequence_flags & _CLEARED or packet.incremental_state_cleared):
            seq = self.sequences[seq_id] = _Sequence(cleared=True)
        elif seq is not None and packet.previous_packet_dropped:
            seq.cleared = False
        if packet.HasField("trace_packet_defaults") and seq is not None:
            defaults = packet.trace_packet_defaults
            seq.clock = defaults.timestamp_clock_id
            te = defaults.track_event_defaults
            has = defaults.HasField("track_event_defaults") and te.HasField("track_uuid")
            seq.default_track = te.track_uuid if has else None
        if packet.HasField("interned_data"):
            self._interned(index, packet.interned_data, seq)
        if packet.HasField("clock_snapshot"):
            snap = packet.clock_snapshot
            clocks = [(c.clock_id, c.timestamp, c.unit_multiplier_ns, c.is_incremental) for c in snap.clocks]
            try:
                self.clocks.snapshot(seq_id, clocks, snap.primary_trace_clock or None)
            except ClockError as exc:
                self.report.add("bad_clock_snapshot", str(exc), index)

    def _interned(self, index: int, data: pb.InternedData, seq: _Sequence | None) -> None:
        if seq is None or not seq.cleared:
            self.report.add("state_not_cleared", "interned data before a CLEARED packet", index)
            return
        names, categories, locations, annotations = seq.tables
        for n in data.event_names:
            names[n.iid] = self._string_id(n.name)
        for c in data.event_categories:
            categories[c.iid] = self._string_id(c.name)
        locations.update((s.iid, 0) for s in data.source_locations)
        annotations.update((a.iid, 0) for a in data.debug_annotation_names)
        for b in data.log_message_body:
            seq.bodies.add(b.iid)
        self.interned_total["log_message_bodies"] += len(data.log_message_body)
        if data.event_names or data.event_categories or data.source_locations or data.debug_annotation_names:
            seq.lookups.clear()
            seq.dense = None
        self.interned_total["event_names"] += len(data.event_names)
        self.interned_total["event_categories"] += len(data.event_categories)
        self.interned_total["source_locations"] += len(data.source_locations)
        self.interned_total["debug_annotation_names"] += len(data.debug_annotation_names)

    def _descriptor(self, desc: pb.TrackDescriptor) -> TrackSummary:
        if desc.HasField("process"):
            kind, name = "process", desc.process.process_name or desc.name
        elif desc.HasField("thread"):
            kind, name = "thread", desc.thread.thread_name or desc.name
        else:
            kind, name = "counter" if desc.HasField("counter") else "track", desc.name or desc.static_name
        return TrackSummary(
            uuid=desc.uuid,
            name=name,
            kind=kind,
            parent=desc.parent_uuid if desc.HasField("parent_uuid") else None,
            pid=desc.process.pid if kind == "process" else desc.thread.pid if kind == "thread" else None,
            tid=desc.thread.tid if kind == "thread" else None,
        )

    def _event(
        self, index: int, packet: pb.TracePacket, seq: _Sequence | None, ts: int, usable: bool
    ) -> None:
        """A track event the protobuf path decoded (``ts``: its trace time, ``usable``: Perfetto keeps it)."""
        rep = self.report
        te = packet.track_event
        rep.track_events += 1
        name = cat = 0
        if seq is not None:
            name, cat = self._iids(index, te, seq)
        if te.WhichOneof("name_field") == "name":
            name = self._string_id(te.name)
        if te.categories:
            cat = self._string_id(te.categories[0])
        track = te.track_uuid
        if not te.HasField("track_uuid"):
            if seq is not None and seq.default_track is not None:
                track = seq.default_track
            else:
                rep.add("undeclared_track", "track event without track_uuid", index)
        if usable:
            kind = te.type if te.type in (_BEGIN, _END, _INSTANT, _COUNTER) else 0
            if te.HasField("log_message"):
                kind += _LOG
            one = [np.array([v], dtype=np.int64) for v in (ts, index, kind, name, cat)]
            self._keep(np.array([track], dtype=np.uint64), *one)

    def _iids(self, index: int, te: pb.TrackEvent, seq: _Sequence) -> tuple[int, int]:
        names, categories, locations, annotations = seq.tables
        name = cat = 0
        missing = []
        if te.HasField("name_iid"):
            if te.name_iid in names:
                name = names[te.name_iid]
            else:
                missing.append(f"name {te.name_iid}")
        for iid in te.category_iids:
            if iid in categories:
                cat = cat or categories[iid]
            else:
                missing.append(f"category {iid}")
        if te.HasField("source_location_iid") and te.source_location_iid not in locations:
            missing.append(f"source location {te.source_location_iid}")
        for ann in te.debug_annotations:
            if ann.HasField("name_iid") and ann.name_iid not in annotations:
                missing.append(f"debug annotation name {ann.name_iid}")
        if te.HasField("log_message"):
            lm = te.log_message
            if lm.HasField("source_location_iid") and lm.source_location_iid not in locations:
                missing.append(f"log message source location {lm.source_location_iid}")
            if lm.HasField("body_iid") and lm.body_iid not in seq.bodies:
                missing.append(f"log message body {lm.body_iid}")
        if missing:
            state = "" if seq.cleared else " (sequence never CLEARED)"
            self.report.add(
                "iid_undefined", f"iids used before definition: {', '.join(missing)}{state}", index
            )
        return name, cat

    def finish(self) -> InspectReport:
        rep = self.report
        self.replay_batch(final=True)
        rep.first_ts, rep.last_ts = self.first_ts, self.last_ts
        names = self.names()
        tracks: list[TrackSummary] = []
        for uuid, summaries, name, parent, has_parent, counter in self.track_parts:
            for k, (u, given) in enumerate(zip(uuid.tolist(), summaries, strict=True)):
                s = given
                if s is None:
                    s = TrackSummary(
                        uuid=u,
                        name=names[int(name[k])],
                        kind="counter" if counter[k] else "track",
                        parent=int(parent[k]) if has_parent[k] else None,
                    )
                tracks.append(s)
        undeclared = self.event_tracks.keys[~np.isin(self.event_tracks.keys, self.declared.keys)]
        for u in undeclared.tolist():
            rep.add("undeclared_track", f"events on undeclared track {u}")
            tracks.append(TrackSummary(uuid=u, name="", kind="undeclared"))
        _, counts = self.event_tracks.counts_of(np.array([t.uuid for t in tracks], dtype=np.uint64))
        for t, (n_slices, n_logs, n_values) in zip(tracks, counts.tolist(), strict=True):
            t.slices, t.logs, t.counter_values = n_slices, n_logs, n_values
        _check_log_and_counter_tracks(rep, tracks)
        rep.tracks = tracks
        rep.interned = dict(self.interned_total)
        return rep

    def replay_batch(self, *, final: bool = False) -> None:
        """Replay the pending events with the carried open slices, as Perfetto does, columnar.

        Per track, events are sorted by (timestamp, file position); an END closes the most recent open
        slice of its track and must match its name and category when it has them. Slices still open
        are carried to the next batch (and reported ``unterminated`` at the end); an END with nothing
        open is carried one batch, then reported ``unmatched_end``.
        """
        fresh = [np.concatenate(c) for c in zip(*self.pending, strict=True)] if self.pending else None
        self.pending, self.pending_n = [], 0
        if fresh is None:
            fresh = [c[:0] for c in self.carried]
        if len(fresh[1]):
            lo, hi = int(fresh[1].min()), int(fresh[1].max())
            self.first_ts = lo if self.first_ts is None else min(lo, self.first_ts)
            self.last_ts = hi if self.last_ts is None else max(hi, self.last_ts)
        n_carried = len(self.carried[0])
        columns = [np.concatenate([c, f]) for c, f in zip(self.carried, fresh, strict=True)]
        age = np.concatenate([self.carried_age + 1, np.zeros(len(fresh[0]), np.int64)])
        if not len(columns[0]):
            return
        track, ts, pos, kind, name, cat = columns
        order = np.lexsort((pos, ts, track))
        track, ts, pos, kind, name, cat = (c[order] for c in columns)
        age = age[order]
        is_new = order >= n_carried
        log = kind >= _LOG
        has_log = bool(log.any())
        if has_log:
            kind = np.where(log, kind - _LOG, kind)
        begin, end = kind == _BEGIN, kind == _END
        instant = kind == _INSTANT
        starts = np.flatnonzero(np.concatenate([[True], track[1:] != track[:-1]]))
        per_track = np.zeros((len(starts), 3), np.int64)
        per_track[:, 0] = np.add.reduceat(is_new & (begin | (instant & ~log if has_log else instant)), starts)
        if has_log:
            per_track[:, 1] = np.add.reduceat(is_new & log, starts)
        counter = kind == _COUNTER
        if counter.any():
            per_track[:, 2] = np.add.reduceat(is_new & counter, starts)
        self.event_tracks.add(track[starts], distinct=True)
        self.event_tracks.count(track[starts], per_track)
        unmatched, level = _depths(track, begin, end)
        # A BEGIN's level counts itself: above MAX_OPEN_SLICES, the track already held that many.
        too_deep = np.flatnonzero(begin & is_new & (level > MAX_OPEN_SLICES))
        if len(too_deep):
            names = self.names()
            self.report.add_many(
                "max_depth_exceeded",
                pos[too_deep],
                lambda k: (
                    f"track {int(track[too_deep[k]])}: {names[name[too_deep[k]]]!r} begun at "
                    f"{ts[too_deep[k]]} with {MAX_OPEN_SLICES} slices open (Perfetto drops it)"
                ),
            )
        # Matching: per (track, level), events alternate BEGIN, END; an END's BEGIN precedes it.
        idx = np.flatnonzero(begin | (end & ~unmatched))
        # Events are sorted by track: one stable sort on (track run, level) keeps file order within.
        run = np.cumsum(np.concatenate([[True], track[1:] != track[:-1]])) - 1
        g = idx[np.argsort(run[idx] * (int(level.max(initial=0)) + 1) + level[idx], kind="stable")]
        j_end = np.flatnonzero(end[g])
        b_of, e_of = g[j_end - 1], g[j_end]
        wrong = (name[e_of] != 0) & (name[e_of] != name[b_of])
        wrong |= (cat[e_of] != 0) & (cat[e_of] != cat[b_of])
        names = self.names()
        for b, e in zip(b_of[wrong].tolist(), e_of[wrong].tolist(), strict=True):
            self.report.add(
                "misnested_end",
                f"track {int(track[e])}: END {names[name[e]]!r} at {ts[e]} closes "
                f"{names[name[b]]!r} begun at {ts[b]} (partial overlap)",
                int(pos[e]),
            )
        still_open = begin.copy()
        still_open[b_of] = False
        report_unmatched = unmatched & ((age >= 1) | final)
        for i in np.flatnonzero(report_unmatched).tolist():
            message = f"track {int(track[i])}: END at {ts[i]} with no open slice"
            self.report.add("unmatched_end", message, int(pos[i]))
        if final:
            for i in np.flatnonzero(still_open).tolist():
                message = f"track {int(track[i])}: {names[name[i]]!r} begun at {ts[i]} never ends"
                self.report.add("unterminated", message, int(pos[i]))
            keep = np.zeros(len(track), np.bool_)
        else:
            keep = still_open | (unmatched & ~report_unmatched)
        self.carried = [c[keep] for c in (track, ts, pos, kind, name, cat)]
        self.carried_age = np.where(begin[keep], 0, age[keep])

    def names(self) -> dict[int, str]:
        return {v: k for k, v in self.strings.items()}


_FP_MUL = np.uint64(0x9E3779B97F4A7C15)


def _fingerprints(buf: bytes, off: I64, ln: I64) -> I64:
    """A 64-bit fingerprint of each byte string ``buf[off : off + ln]`` (a polynomial hash, columnar;
    equal bytes give equal fingerprints), as int64."""
    out = np.zeros(len(off), dtype=np.uint64)
    nz = np.flatnonzero(ln > 0)
    if len(nz):
        lens = ln[nz]
        total = int(lens.sum())
        head = np.cumsum(lens) - lens
        pos = np.arange(total, dtype=np.int64) - np.repeat(head, lens)
        data = np.frombuffer(buf, np.uint8)[np.repeat(off[nz], lens) + pos].astype(np.uint64)
        powers = np.cumprod(np.full(int(lens.max()), _FP_MUL, dtype=np.uint64))
        out[nz] = np.add.reduceat((data + np.uint64(1)) * powers[pos], head)
    out ^= ln.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    return out.view(np.int64)


def _distinct(values: I64) -> list[int]:
    """The distinct values (usually one: a trace is mostly one sequence)."""
    if not len(values):
        return []
    if (values == values[0]).all():
        return [int(values[0])]
    return [int(v) for v in np.unique(values).tolist()]


def _check_log_and_counter_tracks(rep: InspectReport, tracks: list[TrackSummary]) -> None:
    """Report log messages on tracks without a thread and counter values on tracks that are not counters.

    A track belongs to a thread when it is a thread's track or a plain track under one (Perfetto's
    importer resolves such child tracks to the thread); a process track ends the search.
    """
    by_uuid = {t.uuid: t for t in tracks}
    for t in tracks:
        if t.kind == "undeclared":
            continue  # already reported as undeclared_track
        if t.logs:
            at: TrackSummary | None = t
            for _ in range(64):  # parent chains are short; a cycle ends here
                if at is None or at.kind in ("thread", "process"):
                    break
                at = by_uuid.get(at.parent) if at.parent is not None else None
            if at is None or at.kind != "thread":
                rep.add_count(
                    "log_without_thread",
                    t.logs,
                    f"{t.logs} log messages on {t.kind} track {t.uuid} {t.name!r}, which belongs to no "
                    "thread: Perfetto's importer leaves them out of its log table "
                    '("LogMessage without thread association")',
                )
        if t.counter_values and t.kind != "counter":
            rep.add_count(
                "counter_on_non_counter_track",
                t.counter_values,
                f"{t.counter_values} counter values on {t.kind} track {t.uuid} {t.name!r}, which has no "
                "CounterDescriptor",
            )


def _only_log_bodies(packet: pb.TracePacket) -> bool:
    """Whether a state-changing packet only interns log message bodies, which only the log messages of
    protobuf-path packets use: it need not end a segment of columnar checks (our writer's log packets)."""
    data = packet.interned_data
    return not (
        data.event_names
        or data.event_categories
        or data.source_locations
        or data.debug_annotation_names
        or packet.sequence_flags & _CLEARED
        or packet.incremental_state_cleared
        or packet.previous_packet_dropped
        or packet.HasField("trace_packet_defaults")
        or packet.HasField("clock_snapshot")
    )


def _changes_state(packet: pb.TracePacket) -> bool:
    """Whether a packet changes its sequence's or the clocks' state (so later packets see other state)."""
    return bool(
        packet.HasField("interned_data")
        or packet.sequence_flags & _CLEARED
        or packet.incremental_state_cleared
        or packet.previous_packet_dropped
        or packet.HasField("trace_packet_defaults")
        or packet.HasField("clock_snapshot")
    )


def _depths(track: I64, begin: npt.NDArray[np.bool_], end: npt.NDArray[np.bool_]) -> tuple[Any, I64]:
    """For events sorted by track: (END with nothing open, nesting level of each BEGIN/matched END).

    An END with nothing open is ignored, so the depth is the running sum of +1/-1 clamped at 0 per
    track: depth = sum - min(0, running minimum of the sum).
    """
    n = len(track)
    delta = begin.astype(np.int64) - end.astype(np.int64)
    newseg = np.ones(n, np.bool_)
    newseg[1:] = track[1:] != track[:-1]
    seg = np.cumsum(newseg) - 1
    csum = np.cumsum(delta)
    starts = np.flatnonzero(newseg)
    csum -= (csum - delta)[starts][seg]
    big = 2 * n + 2
    running_min = seg * big - np.maximum.accumulate(seg * big - csum)
    depth = csum - np.minimum(running_min, 0)
    before = np.empty(n, np.int64)
    before[0] = 0
    before[1:] = depth[:-1]
    before[newseg] = 0
    unmatched = end & (before == 0)
    level = np.where(begin, depth, before)
    return unmatched, level


def _open(stack: contextlib.ExitStack, source: str | Path | BinaryIO) -> BinaryIO:
    if isinstance(source, (str, Path)):
        return stack.enter_context(Path(source).open("rb"))
    return source


#: Bytes read and decoded at a time.
BLOCK = 4 << 20
#: Bytes between two progress reports.
PROGRESS_EVERY = 32 << 20


def inspect_trace(
    source: str | Path | BinaryIO,
    *,
    progress: Callable[[int], None] | None = None,
    progress_every: int = PROGRESS_EVERY,
) -> InspectReport:
    """Decode a trace file (path or binary stream) and report its content and defects.

    ``progress`` (optional) is called with the number of bytes decoded so far, about every
    ``progress_every`` bytes and once more at the end of the file, before the per-track replay.
    """
    with contextlib.ExitStack() as stack:
        stream = _open(stack, source)
        inspector = _Inspector()
        rep = inspector.report
        next_report = progress_every
        reported = -1
        try:
            for buf, base, starts, lens in iter_blocks(stream, min(BLOCK, max(progress_every // 2, 1))):
                inspector.block(buf, starts, lens)
                rep.bytes = base + int(starts[-1]) + int(lens[-1])
                if progress is not None and rep.bytes >= next_report:
                    progress(rep.bytes)
                    reported = rep.bytes
                    while next_report <= rep.bytes:
                        next_report += progress_every
        except _Malformed as exc:
            rep.add("malformed", str(exc))
        with contextlib.suppress(OSError, ValueError):
            rep.bytes = stream.tell()
        if progress is not None and rep.bytes != reported:
            progress(rep.bytes)
        return inspector.finish()
