"""Decode a Perfetto trace and list its tracks, sizes and defects (`trace-worker inspect`).

The file is read packet by packet (never whole), decoded with the generated classes, and checked the
way Perfetto's trace processor reads it:

- framing: every top-level field must be a well-formed ``Trace.packet`` (``malformed``);
- every packet has a ``trusted_packet_sequence_id`` (``no_sequence_id``);
- interned data, and packets flagged SEQ_NEEDS_INCREMENTAL_STATE, only after a packet of the same
  sequence set SEQ_INCREMENTAL_STATE_CLEARED (``state_not_cleared``);
- every iid a track event uses is defined earlier in the same sequence and generation
  (``iid_undefined``);
- track events only on tracks some descriptor declares (``undeclared_track``);
- REALTIME timestamps only with a ClockSnapshot that has REALTIME (``realtime_without_snapshot``), and a
  sequence-scoped clock (64-127) only after a ClockSnapshot of that sequence declared it
  (``unknown_clock``);
- per track, events sorted by (timestamp, file position) and an END closing the most recent open slice:
  an END whose name/category differs from that slice (a partial overlap, ``misnested_end``), an END with
  nothing open (``unmatched_end``), slices never closed (``unterminated``).

Timestamps are resolved as Perfetto does: a packet's clock is its ``timestamp_clock_id`` or its
sequence's ``trace_packet_defaults``; an incremental clock adds each value to its running value (set by
every ClockSnapshot holding it), in file order; a clock is mapped onto BOOTTIME (the trace clock)
through the latest snapshot holding both. A track event without ``track_uuid`` is on its sequence's
``track_event_defaults.track_uuid``.

Example:
    >>> report = inspect_trace("trace.pftrace")  # doctest: +SKIP
    >>> report.ok, report.slices  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from array import array
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
from google.protobuf.message import DecodeError

from worker import inspect_columns as cols
from worker.perfetto_pb import pb

__all__ = ["Defect", "InspectReport", "TrackSummary", "inspect_trace"]

#: Defect messages kept per kind (all are counted).
MAX_EXAMPLES = 20
_CLEARED = 1
_NEEDS = 2
_REALTIME = 1
_BOOTTIME = 6
_BEGIN = pb.TrackEvent.TYPE_SLICE_BEGIN
_END = pb.TrackEvent.TYPE_SLICE_END
_INSTANT = pb.TrackEvent.TYPE_INSTANT


@dataclass
class Defect:
    kind: str
    message: str
    packet: int | None = None


@dataclass
class TrackSummary:
    uuid: int
    name: str
    kind: str  # "process", "thread" or "track"
    parent: int | None = None
    slices: int = 0
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

    def add(self, kind: str, message: str, packet: int | None = None) -> None:
        count = self.defect_counts.get(kind, 0)
        self.defect_counts[kind] = count + 1
        if count < MAX_EXAMPLES:
            self.defects.append(Defect(kind, message, packet))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        out["slices"] = self.slices
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


@dataclass
class _Sequence:
    cleared: bool = False
    names: dict[int, int] = field(default_factory=dict)
    categories: dict[int, int] = field(default_factory=dict)
    locations: set[int] = field(default_factory=set)
    annotation_names: set[int] = field(default_factory=set)
    clock: int | None = None
    track: int | None = None  # track_event_defaults.track_uuid


#: Track events replayed together: the memory held is proportional to this, not to the file.
BATCH_EVENTS = 1 << 19


@dataclass
class _Events:
    """Track events not yet replayed, compact (about 25 bytes each): one set of arrays, not objects."""

    track: array[int] = field(default_factory=lambda: array("q"))  # index into _Inspector.uuids
    ts: array[int] = field(default_factory=lambda: array("q"))
    pos: array[int] = field(default_factory=lambda: array("q"))
    kind: array[int] = field(default_factory=lambda: array("q"))
    name: array[int] = field(default_factory=lambda: array("q"))
    cat: array[int] = field(default_factory=lambda: array("q"))

    def columns(self) -> list[I64]:
        return [np.frombuffer(getattr(self, f), dtype=np.int64) for f in _COLUMNS]


_COLUMNS = ("track", "ts", "pos", "kind", "name", "cat")
I64 = npt.NDArray[np.int64]


class _Inspector:
    def __init__(self) -> None:
        self.report = InspectReport()
        self.sequences: dict[int, _Sequence] = {}
        self.tracks: dict[int, TrackSummary] = {}
        self.events = _Events()
        self.track_index: dict[int, int] = {}
        self.uuids: list[int] = []
        self.strings: dict[str, int] = {"": 0}
        self.templates: dict[int, list[cols.Template]] = {}
        self.counts: I64 = np.zeros(0, np.int64)  # slices per track index
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        # Replay state carried between batches: open BEGINs (at most the open slices) and ENDs seen
        # with nothing open, kept one batch in case their BEGIN is written later (lane roots).
        self.carried: list[I64] = [np.zeros(0, np.int64) for _ in _COLUMNS]
        self.carried_age = np.zeros(0, np.int64)
        self.realtime_used = False
        self.realtime_snapshot = False
        self.interned_total = {"event_names": 0, "event_categories": 0, "source_locations": 0}
        self.interned_total["debug_annotation_names"] = 0
        # Clocks: (sequence or 0, clock id) -> incremental?, running value, (value, BOOTTIME) at the
        # latest snapshot holding both.
        self.incremental: dict[tuple[int, int], bool] = {}
        self.running: dict[tuple[int, int], int] = {}
        self.to_boot: dict[tuple[int, int], tuple[int, int]] = {}

    def _string_id(self, value: str) -> int:
        sid = self.strings.get(value)
        if sid is None:
            sid = self.strings[value] = len(self.strings)
        return sid

    def block(self, buf: bytes, starts_a: I64, lens_a: I64) -> None:
        """Check the packets of one block (bodies at ``starts`` in ``buf``), in file order."""
        first = self.report.packets
        self.report.packets += len(starts_a)
        starts, lens = starts_a.tolist(), lens_a.tolist()
        arr = np.frombuffer(buf, np.uint8)
        start_a = np.asarray(starts, np.int64)
        len_a = np.asarray(lens, np.int64)
        fast = np.zeros(len(starts), np.bool_)
        decoded: list[cols.Decoded] = []
        for length in np.unique(len_a).tolist():
            rows = np.flatnonzero(len_a == length)
            templates = self.templates.setdefault(length, [])
            tries = 0
            while len(rows):
                hit = None
                for tpl in templates:
                    ok = cols.matches(arr, start_a[rows], tpl)
                    if ok.any():
                        hit = tpl, ok
                        break
                if hit is None:
                    if tries >= 4 or len(templates) >= 16:
                        break
                    tries += 1
                    r = int(rows[0])
                    new = cols.build_template(buf[starts[r] : starts[r] + lens[r]])
                    if new is None:
                        rows = rows[1:]
                        continue
                    templates.append(new)
                    continue
                tpl, ok = hit
                got = rows[ok]
                decoded.append(cols.decode_group(arr, start_a[got], got, tpl))
                fast[got] = True
                rows = rows[~ok]
        slow = np.flatnonzero(~fast).tolist()
        parsed: list[tuple[int, pb.TracePacket | None]] = []
        for r in slow:
            try:
                parsed.append((r, pb.TracePacket.FromString(buf[starts[r] : starts[r] + lens[r]])))
            except DecodeError as exc:
                message = f"packet at offset {starts[r]} does not decode: {exc}"
                self.report.add("malformed", message, first + r)
                parsed.append((r, None))
        # Sequence state changes only at packets the protobuf path decodes: the fast packets between two
        # such packets are checked together against the state in force.
        done = 0
        for r, packet in parsed:
            if packet is not None and _changes_state(packet):
                self._fast(decoded, done, r, first)
                done = r
            if packet is not None:
                self.packet(first + r, packet)
        self._fast(decoded, done, len(starts), first)
        # Only between blocks: a batch must hold every event of a stretch of the file.
        if len(self.events.ts) >= BATCH_EVENTS:
            self.replay_batch()

    def _fast(self, decoded: list[cols.Decoded], lo: int, hi: int, first: int) -> None:
        """Check the columnar-decoded packets with block rows in [lo, hi)."""
        spans = []
        for d in decoded:
            a, b = np.searchsorted(d.rows, [lo, hi]).tolist()
            if a < b:
                spans.append((d, a, b))
        if not spans:
            return
        stamps = self._fast_times(spans, first)
        for (d, a, b), ts in zip(spans, stamps, strict=True):
            self._fast_group(d, a, b, first, ts)

    def _fast_times(self, spans: list[tuple[cols.Decoded, int, int]], first: int) -> list[I64]:
        """Trace times of the rows of ``spans`` (all between two state changes), resolved in file order."""
        rows, raw, clock, seq = [], [], [], []
        for d, a, b in spans:
            n = b - a
            sc = d.scalars
            rows.append(d.rows[a:b])
            raw.append(sc["ts"][a:b] if "ts" in sc else np.zeros(n, np.uint64))
            seq_col = sc["seq"][a:b].astype(np.int64) if "seq" in sc else np.full(n, -1, np.int64)
            own = sc["clock"][a:b].astype(np.int64) if "clock" in sc else np.zeros(n, np.int64)
            default = np.zeros(n, np.int64)
            for seq_id in np.unique(seq_col).tolist():
                state = self.sequences.get(seq_id)
                if state is not None and state.clock:
                    default[seq_col == seq_id] = state.clock
            clock.append(np.where(own != 0, own, default))
            seq.append(seq_col)
        all_rows, all_clock, all_seq = np.concatenate(rows), np.concatenate(clock), np.concatenate(seq)
        value = np.concatenate(raw)
        out = np.minimum(value, np.uint64((1 << 63) - 1)).astype(np.int64)
        order = np.argsort(all_rows, kind="stable")
        scoped = (all_clock >= 64) & (all_clock < 128)
        key_seq = np.where(scoped & (all_seq >= 0), all_seq, 0)
        packed = (key_seq.astype(np.uint64) << np.uint64(32)) | all_clock.astype(np.uint64)
        for pair in np.unique(packed).tolist():
            k_seq, k_clock = pair >> 32, pair & 0xFFFFFFFF
            if k_clock in (0, _BOOTTIME):
                continue
            key = (int(k_seq), int(k_clock))
            sel = order[(key_seq[order] == k_seq) & (all_clock[order] == k_clock)]
            if key not in self.to_boot and key not in self.incremental:
                if k_clock != _REALTIME:
                    for i in (all_rows[sel] + first).tolist()[:MAX_EXAMPLES]:
                        self.report.add(
                            "unknown_clock", f"timestamp on clock {k_clock}, which no snapshot declares", i
                        )
                continue
            if self.incremental.get(key):
                total = self.running.get(key, 0) + np.cumsum(value[sel].astype(np.int64))
                if len(total):
                    self.running[key] = int(total[-1])
                out[sel] = total
            if key in self.to_boot:
                clock_at, boot_at = self.to_boot[key]
                out[sel] = out[sel] + (boot_at - clock_at)
        sizes = np.cumsum([len(r) for r in rows])[:-1]
        return np.split(out, sizes)

    def _fast_group(self, d: cols.Decoded, a: int, b: int, first: int, ts: I64) -> None:
        rep = self.report
        n = b - a
        rows = d.rows[a:b] + first
        sc = {k: v[a:b] for k, v in d.scalars.items()}
        rep.track_events += n
        flags = sc.get("flags")
        seq_col = sc.get("seq")
        name = np.zeros(n, np.int64)
        cat = np.zeros(n, np.int64)
        if seq_col is None:
            for i in rows.tolist():
                rep.add("no_sequence_id", "packet has no trusted_packet_sequence_id", i)
        else:
            for seq_id in np.unique(seq_col).tolist():
                sel = np.flatnonzero(seq_col == seq_id)
                seq = self.sequences.setdefault(seq_id, _Sequence())
                if flags is not None and not seq.cleared:
                    for i in rows[sel[(flags[sel] & 2) != 0]].tolist():
                        rep.add("state_not_cleared", "SEQ_NEEDS_INCREMENTAL_STATE before a CLEARED packet", i)
                if "clock" not in sc and seq.clock == _REALTIME:
                    self.realtime_used = True
                self._fast_iids(d, a, sel, seq, rows=rows, out=(name, cat))
        if "clock" in sc and (sc["clock"] == _REALTIME).any():
            self.realtime_used = True
        track = sc.get("track")
        if track is None:
            track = np.zeros(n, np.uint64)
            defaulted = np.zeros(n, np.bool_)
            if seq_col is not None:
                for seq_id in np.unique(seq_col).tolist():
                    state = self.sequences.get(seq_id)
                    if state is not None and state.track is not None:
                        hit = seq_col == seq_id
                        track[hit] = state.track
                        defaulted |= hit
            for i in rows[~defaulted].tolist():
                rep.add("undeclared_track", "track event without track_uuid", i)
        uniq, inverse = np.unique(track, return_inverse=True)
        index = np.empty(len(uniq), np.int64)
        for k, uuid in enumerate(uniq.tolist()):
            t = self.track_index.get(uuid)
            if t is None:
                t = self.track_index[uuid] = len(self.uuids)
                self.uuids.append(uuid)
            index[k] = t
        kind = sc["type"].astype(np.int64) if "type" in sc else np.zeros(n, np.int64)
        kind[(kind != _BEGIN) & (kind != _END) & (kind != _INSTANT)] = 0
        ev = self.events
        for arr_, col in zip(
            (ev.track, ev.ts, ev.pos, ev.kind, ev.name, ev.cat),
            (index[inverse.reshape(-1)], ts, rows, kind, name, cat),
            strict=True,
        ):
            arr_.frombytes(np.ascontiguousarray(col, np.int64).tobytes())

    def _fast_iids(
        self, d: cols.Decoded, a: int, sel: I64, seq: _Sequence, *, rows: I64, out: tuple[I64, I64]
    ) -> None:
        """Resolve and check the iids of rows ``sel`` (of one sequence) like ``_iids``.

        Writes the name and category string ids into ``out`` (two arrays over the group's rows).
        """
        name, cat = out
        missing = np.zeros(len(sel), np.bool_)
        if "name" in d.scalars:
            found, ids = _lookup(seq.names, d.scalars["name"][a:][sel])
            name[sel] = ids
            missing |= ~found
        first_cat = np.zeros(len(sel), np.int64)
        for col in d.cats:
            found, ids = _lookup(seq.categories, col[a:][sel])
            first_cat = np.where(first_cat == 0, ids, first_cat)
            missing |= ~found
        cat[sel] = first_cat
        if "loc" in d.scalars:
            missing |= ~_lookup(dict.fromkeys(seq.locations, 0), d.scalars["loc"][a:][sel])[0]
        for ann in d.anns:
            if ann is not None:
                missing |= ~_lookup(dict.fromkeys(seq.annotation_names, 0), ann[a:][sel])[0]
        for k in np.flatnonzero(missing).tolist():
            r = int(sel[k])
            parts = []
            if "name" in d.scalars and int(d.scalars["name"][a + r]) not in seq.names:
                parts.append(f"name {int(d.scalars['name'][a + r])}")
            parts += [f"category {int(c[a + r])}" for c in d.cats if int(c[a + r]) not in seq.categories]
            if "loc" in d.scalars and int(d.scalars["loc"][a + r]) not in seq.locations:
                parts.append(f"source location {int(d.scalars['loc'][a + r])}")
            parts += [
                f"debug annotation name {int(x[a + r])}"
                for x in d.anns
                if x is not None and int(x[a + r]) not in seq.annotation_names
            ]
            state = "" if seq.cleared else " (sequence never CLEARED)"
            self.report.add(
                "iid_undefined", f"iids used before definition: {', '.join(parts)}{state}", int(rows[r])
            )

    def packet(self, index: int, packet: pb.TracePacket) -> None:
        rep = self.report
        seq: _Sequence | None = None
        if packet.HasField("trusted_packet_sequence_id"):
            seq = self.sequences.setdefault(packet.trusted_packet_sequence_id, _Sequence())
        else:
            rep.add("no_sequence_id", "packet has no trusted_packet_sequence_id", index)
        flags = packet.sequence_flags
        if seq is not None and (flags & _CLEARED or packet.incremental_state_cleared):
            clock = seq.clock
            self.sequences[packet.trusted_packet_sequence_id] = seq = _Sequence(cleared=True, clock=clock)
        if seq is not None and packet.previous_packet_dropped:
            seq.cleared = False
        if seq is not None and flags & _NEEDS and not seq.cleared:
            rep.add("state_not_cleared", "SEQ_NEEDS_INCREMENTAL_STATE before a CLEARED packet", index)
        if packet.HasField("trace_packet_defaults") and seq is not None:
            defaults = packet.trace_packet_defaults
            seq.clock = defaults.timestamp_clock_id if defaults.HasField("timestamp_clock_id") else None
            ted = defaults.track_event_defaults
            seq.track = (
                ted.track_uuid
                if defaults.HasField("track_event_defaults") and ted.HasField("track_uuid")
                else None
            )
        if packet.HasField("interned_data"):
            self._interned(index, packet.interned_data, seq)
        data = packet.WhichOneof("data")
        if data == "track_event":
            self._event(index, packet, seq)
        elif data == "track_descriptor":
            self._descriptor(packet.track_descriptor)
        elif data == "clock_snapshot":
            self._snapshot(packet.trusted_packet_sequence_id, packet.clock_snapshot)

    def _snapshot(self, seq_id: int, snapshot: pb.ClockSnapshot) -> None:
        values = {_clock_key(seq_id, c.clock_id): c for c in snapshot.clocks}
        boot = values.get((0, _BOOTTIME))
        for key, c in values.items():
            if key == (0, _REALTIME):
                self.realtime_snapshot = True
            self.incremental[key] = c.is_incremental
            if c.is_incremental:
                self.running[key] = c.timestamp
            if boot is not None:
                self.to_boot[key] = (c.timestamp, boot.timestamp)

    def _time(self, index: int, packet: pb.TracePacket, seq: _Sequence | None) -> int:
        """A packet's trace time (see the module docstring)."""
        clock = packet.timestamp_clock_id
        if not clock and seq is not None and seq.clock:
            clock = seq.clock
        raw = min(packet.timestamp, (1 << 63) - 1)
        if not clock or clock == _BOOTTIME:
            return raw
        key = _clock_key(packet.trusted_packet_sequence_id, clock)
        if key not in self.to_boot and key not in self.incremental:
            if clock != _REALTIME:
                self.report.add(
                    "unknown_clock", f"timestamp on clock {clock}, which no snapshot declares", index
                )
            return raw
        if self.incremental.get(key):
            raw = self.running[key] = self.running.get(key, 0) + packet.timestamp
        if key in self.to_boot:
            clock_at, boot_at = self.to_boot[key]
            raw += boot_at - clock_at
        return raw

    def _interned(self, index: int, data: pb.InternedData, seq: _Sequence | None) -> None:
        if seq is None or not seq.cleared:
            self.report.add("state_not_cleared", "interned data before a CLEARED packet", index)
            return
        for n in data.event_names:
            seq.names[n.iid] = self._string_id(n.name)
        for c in data.event_categories:
            seq.categories[c.iid] = self._string_id(c.name)
        seq.locations.update(s.iid for s in data.source_locations)
        seq.annotation_names.update(a.iid for a in data.debug_annotation_names)
        self.interned_total["event_names"] += len(data.event_names)
        self.interned_total["event_categories"] += len(data.event_categories)
        self.interned_total["source_locations"] += len(data.source_locations)
        self.interned_total["debug_annotation_names"] += len(data.debug_annotation_names)

    def _descriptor(self, desc: pb.TrackDescriptor) -> None:
        if desc.uuid in self.tracks:
            return
        if desc.HasField("process"):
            kind, name = "process", desc.process.process_name or desc.name
        elif desc.HasField("thread"):
            kind, name = "thread", desc.thread.thread_name or desc.name
        else:
            kind, name = "track", desc.name or desc.static_name
        self.tracks[desc.uuid] = TrackSummary(
            uuid=desc.uuid,
            name=name,
            kind=kind,
            parent=desc.parent_uuid if desc.HasField("parent_uuid") else None,
            pid=desc.process.pid if kind == "process" else desc.thread.pid if kind == "thread" else None,
            tid=desc.thread.tid if kind == "thread" else None,
        )

    def _event(self, index: int, packet: pb.TracePacket, seq: _Sequence | None) -> None:
        rep = self.report
        te = packet.track_event
        rep.track_events += 1
        clock = packet.timestamp_clock_id if packet.HasField("timestamp_clock_id") else None
        if clock is None and seq is not None:
            clock = seq.clock
        if clock == _REALTIME:
            self.realtime_used = True
        ts = self._time(index, packet, seq)
        name = cat = 0
        if seq is not None:
            name, cat = self._iids(index, te, seq)
        if te.WhichOneof("name_field") == "name":
            name = self._string_id(te.name)
        if te.categories:
            cat = self._string_id(te.categories[0])
        track = te.track_uuid
        if not te.HasField("track_uuid"):
            if seq is not None and seq.track is not None:
                track = seq.track
            else:
                rep.add("undeclared_track", "track event without track_uuid", index)
        ev = self.events
        t = self.track_index.get(track)
        if t is None:
            t = self.track_index[track] = len(self.uuids)
            self.uuids.append(track)
        ev.track.append(t)
        ev.ts.append(min(ts, (1 << 63) - 1))
        ev.pos.append(index)
        ev.kind.append(te.type if te.type in (_BEGIN, _END, _INSTANT) else 0)
        ev.name.append(name)
        ev.cat.append(cat)

    def _iids(self, index: int, te: pb.TrackEvent, seq: _Sequence) -> tuple[int, int]:
        name = cat = 0
        missing = []
        if te.HasField("name_iid"):
            if te.name_iid in seq.names:
                name = seq.names[te.name_iid]
            else:
                missing.append(f"name {te.name_iid}")
        for iid in te.category_iids:
            if iid in seq.categories:
                cat = cat or seq.categories[iid]
            else:
                missing.append(f"category {iid}")
        if te.HasField("source_location_iid") and te.source_location_iid not in seq.locations:
            missing.append(f"source location {te.source_location_iid}")
        for ann in te.debug_annotations:
            if ann.HasField("name_iid") and ann.name_iid not in seq.annotation_names:
                missing.append(f"debug annotation name {ann.name_iid}")
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
        for t, uuid in enumerate(self.uuids):
            if uuid not in self.tracks:
                rep.add("undeclared_track", f"events on undeclared track {uuid}")
                self.tracks[uuid] = TrackSummary(uuid=uuid, name="", kind="undeclared")
            self.tracks[uuid].slices = int(self.counts[t]) if t < len(self.counts) else 0
        if self.realtime_used and not self.realtime_snapshot:
            rep.add("realtime_without_snapshot", "REALTIME timestamps but no ClockSnapshot declares REALTIME")
        rep.tracks = list(self.tracks.values())
        rep.interned = dict(self.interned_total)
        return rep

    def replay_batch(self, *, final: bool = False) -> None:
        """Replay the pending events with the carried open slices, as Perfetto does, columnar.

        Per track, events are sorted by (timestamp, file position); an END closes the most recent open
        slice of its track and must match its name and category when it has them. Slices still open
        are carried to the next batch (and reported ``unterminated`` at the end); an END with nothing
        open is carried one batch, then reported ``unmatched_end``.
        """
        fresh = self.events.columns()
        self.events = _Events()
        if len(fresh[1]):
            lo, hi = int(fresh[1].min()), int(fresh[1].max())
            self.first_ts = lo if self.first_ts is None else min(lo, self.first_ts)
            self.last_ts = hi if self.last_ts is None else max(hi, self.last_ts)
        n_carried = len(self.carried[0])
        cols = [np.concatenate([c, f]) for c, f in zip(self.carried, fresh, strict=True)]
        age = np.concatenate([self.carried_age + 1, np.zeros(len(fresh[0]), np.int64)])
        if not len(cols[0]):
            return
        track, ts, pos, kind, name, cat = cols
        order = np.lexsort((pos, ts, track))
        track, ts, pos, kind, name, cat = (c[order] for c in cols)
        age = age[order]
        is_new = order >= n_carried
        begin, end = kind == _BEGIN, kind == _END
        counted = is_new & (begin | (kind == _INSTANT))
        add = np.bincount(track[counted], minlength=len(self.uuids))
        self.counts = np.concatenate([self.counts, np.zeros(len(add) - len(self.counts), np.int64)]) + add
        unmatched, level = _depths(track, begin, end)
        # Matching: per (track, level), events alternate BEGIN, END; an END's BEGIN precedes it.
        idx = np.flatnonzero(begin | (end & ~unmatched))
        g = idx[np.lexsort((idx, level[idx], track[idx]))]
        j_end = np.flatnonzero(end[g])
        b_of, e_of = g[j_end - 1], g[j_end]
        wrong = (name[e_of] != 0) & (name[e_of] != name[b_of])
        wrong |= (cat[e_of] != 0) & (cat[e_of] != cat[b_of])
        names = self.names()
        for b, e in zip(b_of[wrong].tolist(), e_of[wrong].tolist(), strict=True):
            self.report.add(
                "misnested_end",
                f"track {self.uuids[track[e]]}: END {names[name[e]]!r} at {ts[e]} closes "
                f"{names[name[b]]!r} begun at {ts[b]} (partial overlap)",
                int(pos[e]),
            )
        still_open = begin.copy()
        still_open[b_of] = False
        report_unmatched = unmatched & ((age >= 1) | final)
        for i in np.flatnonzero(report_unmatched).tolist():
            message = f"track {self.uuids[track[i]]}: END at {ts[i]} with no open slice"
            self.report.add("unmatched_end", message, int(pos[i]))
        if final:
            for i in np.flatnonzero(still_open).tolist():
                message = f"track {self.uuids[track[i]]}: {names[name[i]]!r} begun at {ts[i]} never ends"
                self.report.add("unterminated", message, int(pos[i]))
            keep = np.zeros(len(track), np.bool_)
        else:
            keep = still_open | (unmatched & ~report_unmatched)
        self.carried = [c[keep] for c in (track, ts, pos, kind, name, cat)]
        self.carried_age = np.where(begin[keep], 0, age[keep])

    def names(self) -> dict[int, str]:
        return {v: k for k, v in self.strings.items()}


def _changes_state(packet: pb.TracePacket) -> bool:
    """Whether a packet changes its sequence's incremental state (so later packets see other state)."""
    return bool(
        packet.HasField("interned_data")
        or packet.sequence_flags & _CLEARED
        or packet.incremental_state_cleared
        or packet.previous_packet_dropped
        or packet.HasField("trace_packet_defaults")
        or packet.HasField("clock_snapshot")
    )


def _clock_key(seq_id: int, clock: int) -> tuple[int, int]:
    """Clocks 64-127 belong to their sequence; the others are global."""
    return (seq_id if 64 <= clock < 128 else 0, clock)


def _lookup(table: dict[int, int], keys: npt.NDArray[np.uint64]) -> tuple[npt.NDArray[np.bool_], I64]:
    """(found, value) of each key in ``table`` (value 0 where not found), columnar."""
    if not table:
        return np.zeros(len(keys), np.bool_), np.zeros(len(keys), np.int64)
    k = np.fromiter(table.keys(), np.uint64, len(table))
    v = np.fromiter(table.values(), np.int64, len(table))
    order = np.argsort(k)
    k, v = k[order], v[order]
    at = np.minimum(np.searchsorted(k, keys), len(k) - 1)
    found = k[at] == keys
    return found, np.where(found, v[at], 0)


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
