"""Columnar protobuf decoding for ``trace-worker inspect``: whole blocks of packets walked with numpy.

``walk`` reads many messages at once, one field of every message per step: the tag varint and the value
(varint, fixed64/32, or a length and payload) are decoded for all cursors together from 8-byte words read
at arbitrary offsets (``words``), so the Python work is per step (a few per message nesting level), not per
packet. ``decode_block`` walks the packets of a block, then the TrackEvent and TrackDescriptor messages
inside them and the debug annotations inside the track events, and returns columns:

- per packet: timestamp, trusted_packet_sequence_id, sequence_flags, timestamp_clock_id (with presence);
- per track event (``Events``): type, track_uuid, name_iid, first category iid, source_location_iid,
  and every iid it uses (name, categories, source location, debug annotation names) as a long table;
- per plain or counter track descriptor (``Descriptors``): uuid, parent_uuid, name, has a counter;
- per packet, where its TrackDescriptor's bytes are (for every descriptor, to compare repeated ones).

A packet with anything else (interned data, clock snapshots, packet defaults, a CLEARED flag, process or
thread descriptors, unknown or repeated fields, strings in track events, or bytes the walk cannot read) is
listed in ``slow``: the caller decodes those with the generated protobuf classes, one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.inspect_templates import Decoded, Templates

__all__ = ["Block", "Descriptors", "Events", "Fields", "decode_block", "walk", "words"]

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
B = npt.NDArray[np.bool_]

_C80 = np.uint64(0x8080808080808080)
_M7F = np.uint64(0x7F7F7F7F7F7F7F7F)
_K = [
    (np.uint64(0x007F007F007F007F), np.uint64(0x7F007F007F007F00), np.uint64(1)),
    (np.uint64(0x00003FFF00003FFF), np.uint64(0x3FFF00003FFF0000), np.uint64(2)),
    (np.uint64(0x000000000FFFFFFF), np.uint64(0x0FFFFFFF00000000), np.uint64(4)),
]
_ONE = np.uint64(1)
_PAD = 24


def words(buf: bytes) -> U64:
    """The little-endian 8-byte word starting at every offset of ``buf`` (zero-padded past its end)."""
    padded = buf + bytes(_PAD)
    return np.ndarray((len(buf) + _PAD - 8,), dtype="<u8", buffer=padded, strides=(1,))


def _dec(w: U64) -> tuple[U64, I64, B]:
    """(value, byte length, ended) of the varint in the low bytes of each word (at most 8 bytes read)."""
    stop = ~w & _C80
    low = stop & (~stop + _ONE)  # the lowest byte with a clear top bit, as its top bit (0: none)
    mask = (low << _ONE) - _ONE  # its bytes and the ones before (all bytes when none)
    v = w & mask & _M7F
    for lo, hi, shift in _K:
        v = (v & lo) | ((v & hi) >> shift)
    n = (np.bitwise_count(mask) >> 3).astype(np.int64)
    return v, n, low != 0


def _varints(w8: U64, p: I64) -> tuple[U64, I64, B]:
    """(value, length, well formed) of the varints at offsets ``p`` (up to 10 bytes)."""
    v, n, ended = _dec(w8[p])
    longer = np.flatnonzero(~ended)
    ok = np.ones(len(p), dtype=bool)
    if len(longer):
        v2, n2, ended2 = _dec(w8[p[longer] + 8])
        v[longer] |= v2 << np.uint64(56)
        n[longer] = 8 + n2
        ok[longer] = ended2 & (n2 <= 2) & (v2 >> np.uint64(8) == 0)
    return v, n, ok


@dataclass
class Fields:
    """The fields of messages walked together, one row per field, in step order (a message's fields in
    order). msg: index of the message; tag: field number << 3 | wire type; value: the varint or fixed
    value, or the length of a length-delimited field; offset: where the payload of a length-delimited
    field starts. bad: per message, the walk could not read it (wire type 3, 4, 6 or 7, field number 0, a
    varint over 10 bytes, a field past the end of the message)."""

    msg: I64
    tag: U64
    value: U64
    offset: I64
    bad: B


def walk(w8: U64, starts: I64, ends: I64) -> Fields:
    """Walk the messages ``[starts[i], ends[i])`` of the buffer behind ``w8`` (see ``words``)."""
    n = len(starts)
    bad = np.zeros(n, dtype=bool)
    cur, end, idx = starts.astype(np.int64), ends.astype(np.int64), np.arange(n)
    live = cur < end
    cur, end, idx = cur[live], end[live], idx[live]
    parts: list[tuple[I64, U64, U64, I64]] = []
    while len(cur):
        w = w8[cur]
        tag_ok: B | bool = True
        if not (w & np.uint64(0x80)).any():  # one-byte tags: the value starts in the same word
            tag = w & np.uint64(0x7F)
            p = cur + 1
            v, ln, _ = _dec(w >> np.uint64(8))
            again = np.flatnonzero(ln > 7)  # not ended in the 7 bytes read
            ok = np.ones(len(cur), dtype=bool)
            if len(again):
                v[again], ln[again], ok[again] = _varints(w8, p[again])
        else:
            tag, tl, ended = _dec(w)
            tag_ok = ended & (tl <= 5)
            p = cur + tl
            v, ln, ok = _varints(w8, p)
        wire = tag & np.uint64(7)
        is_len = wire == 2
        off = p + ln
        nxt = off + np.where(is_len, v, 0).astype(np.int64)
        fixed = np.flatnonzero((wire == 1) | (wire == 5))
        if len(fixed):
            f64 = wire[fixed] == 1
            raw = w8[p[fixed]]
            v[fixed] = np.where(f64, raw, raw & np.uint64(0xFFFFFFFF))
            nxt[fixed] = p[fixed] + np.where(f64, 8, 4)
            ok[fixed] = True  # the bytes are not a varint
        ok &= tag_ok & (wire != 3) & (wire != 4) & (wire < 6) & (tag >= 8) & (nxt <= end)
        ok &= ~(is_len & (v >= np.uint64(1 << 62)))
        if not ok.all():
            bad[idx[~ok]] = True
            nxt[~ok] = end[~ok]  # stop walking that message
        parts.append((idx, tag, v, off))
        more = nxt < end
        cur, end, idx = nxt[more], end[more], idx[more]
    if not parts:
        z = np.zeros(0, dtype=np.int64)
        return Fields(z, z.astype(np.uint64), z.astype(np.uint64), z, bad)
    msg, tag, value, offset = (np.concatenate(c) for c in zip(*parts, strict=True))
    return Fields(msg, tag, value, offset, bad)


def _tag(field: int, wire: int) -> int:
    return field << 3 | wire


#: TracePacket fields the columnar path reads (code per tag); any other field sends the packet to the
#: protobuf path. 87 first_packet_on_sequence changes nothing inspect checks.
_P_TS, _P_SEQ, _P_FLAGS, _P_CLOCK, _P_FIRST, _P_EVENT, _P_DESC = range(1, 8)
_PACKET_CODES = {
    _tag(8, 0): _P_TS,
    _tag(10, 0): _P_SEQ,
    _tag(13, 0): _P_FLAGS,
    _tag(58, 0): _P_CLOCK,
    _tag(87, 0): _P_FIRST,
    _tag(11, 2): _P_EVENT,
    _tag(60, 2): _P_DESC,
}
#: TrackEvent fields: read (type, track_uuid, name_iid, category_iids, source_location_iid, debug
#: annotations) or skipped because only the event type matters to the checks (flows, correlation id,
#: counter values: a TYPE_COUNTER event is counted as a counter value).
_E_TYPE, _E_TRACK, _E_NAME, _E_CAT, _E_LOC, _E_ANN, _E_SKIP = range(1, 8)
_EVENT_CODES = {
    _tag(9, 0): _E_TYPE,
    _tag(11, 0): _E_TRACK,
    _tag(10, 0): _E_NAME,
    _tag(3, 0): _E_CAT,
    _tag(34, 0): _E_LOC,
    _tag(4, 2): _E_ANN,
    _tag(47, 1): _E_SKIP,
    _tag(48, 1): _E_SKIP,
    _tag(36, 0): _E_SKIP,
    _tag(42, 0): _E_SKIP,
    _tag(52, 0): _E_SKIP,
    _tag(30, 0): _E_SKIP,
    _tag(44, 1): _E_SKIP,
}
#: DebugAnnotation fields: name_iid, or a name / scalar or string value (no check uses them).
_A_NAME, _A_SKIP = 1, 2
_ANN_CODES = {_tag(1, 0): _A_NAME} | {
    _tag(f, w): _A_SKIP for f, w in ((10, 2), (2, 0), (3, 0), (4, 0), (5, 1), (6, 2), (7, 0), (9, 2), (17, 0))
}
#: TrackDescriptor fields of a plain or counter track (no process, thread).
_D_UUID, _D_PARENT, _D_NAME, _D_STATIC, _D_SKIP, _D_COUNTER = range(1, 7)
_DESC_CODES = {
    _tag(1, 0): _D_UUID,
    _tag(5, 0): _D_PARENT,
    _tag(2, 2): _D_NAME,
    _tag(10, 2): _D_STATIC,
    _tag(8, 2): _D_COUNTER,
} | {
    _tag(f, w): _D_SKIP
    for f, w in (
        (13, 2),
        (14, 2),
        (9, 0),
        (11, 0),
        (12, 0),
        (15, 0),
        (16, 2),
        (17, 0),
        (19, 0),
        (20, 0),
    )
}

#: Tables an iid refers to (``Events.iid_table``).
NAME, CATEGORY, LOCATION, ANNOTATION = range(4)


def _codes(table: dict[int, int]) -> I64:
    out = np.zeros(1024, dtype=np.int64)
    for tag, code in table.items():
        out[tag] = code
    return out


_PACKET_LUT, _EVENT_LUT, _ANN_LUT, _DESC_LUT = map(
    _codes, (_PACKET_CODES, _EVENT_CODES, _ANN_CODES, _DESC_CODES)
)
_NCODES = 8


def _classify(f: Fields, n: int, lut: I64) -> tuple[I64, I64]:
    """(code per field, count per message and code: shape (n, 8)); code 0 for a field not in ``lut``."""
    code = np.where(f.tag < len(lut), lut[np.minimum(f.tag, len(lut) - 1).astype(np.int64)], 0)
    counts = np.bincount(f.msg * _NCODES + code, minlength=n * _NCODES).reshape(n, _NCODES)
    return code, counts


def _pick(f: Fields, code: I64, which: int, n: int) -> U64:
    """Per message, the value of its field with ``code`` ``which`` (0 when absent; single fields only)."""
    out = np.zeros(n, dtype=np.uint64)
    sel = code == which
    out[f.msg[sel]] = f.value[sel]
    return out


@dataclass
class Events:
    """Track events decoded columnar, in no particular order. row: packet index in the block; the rest
    per event, 0 when absent (``has_*`` tell presence where 0 is a valid value). iid_event / iid_table /
    iid: every iid an event uses (index into these events, table NAME/CATEGORY/LOCATION/ANNOTATION,
    value); one event's categories are listed in field order."""

    row: I64
    type: I64
    track: U64
    has_track: B
    name: U64
    has_name: B
    cat: U64
    has_cat: B
    iid_event: I64
    iid_table: I64
    iid: U64


@dataclass
class Descriptors:
    """Plain and counter track descriptors decoded columnar (row: packet index in the block; name: ""
    when absent; counter: the descriptor has a CounterDescriptor)."""

    row: I64
    uuid: U64
    parent: U64
    has_parent: B
    name: list[str]
    counter: B


@dataclass
class Block:
    """A block's packets: per packet columns (index = packet in the block), events, descriptors, and the
    packets left to the protobuf path."""

    ts: U64
    has_ts: B
    seq: U64
    has_seq: B
    flags: U64
    clock: U64
    events: Events
    descriptors: Descriptors
    slow: I64
    desc_off: I64  # per packet: where its one TrackDescriptor's bytes start in the block (protobuf path too)
    desc_len: I64  # their length, -1 when the packet has no single TrackDescriptor the walk read


def _strings(buf: bytes, off: I64, ln: I64) -> list[str]:
    """The UTF-8 strings at ``off`` (lengths ``ln``) of ``buf``, decoding each distinct one once."""
    out: list[str] = [""] * len(off)
    arr = np.frombuffer(buf, dtype=np.uint8)
    for size in np.unique(ln).tolist():
        rows = np.flatnonzero(ln == size)
        if size == 0:
            continue
        m = np.ascontiguousarray(arr[off[rows, None] + np.arange(size)])
        uniq, inverse = np.unique(m.view(f"V{size}").ravel(), return_inverse=True)
        text = [bytes(u).decode("utf-8", "replace") for u in uniq.tolist()]
        for r, k in zip(rows.tolist(), inverse.ravel().tolist(), strict=True):
            out[r] = text[k]
    return out


def _template_events(d: Decoded) -> tuple[Events, dict[str, U64]]:
    """The events of a template-decoded group, and its packet columns."""
    sc = d.scalars
    n = len(d.rows)
    zero = np.zeros(n, dtype=np.uint64)
    yes, no = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
    parts = []
    for table, col in ((NAME, sc.get("name")), (LOCATION, sc.get("loc"))):
        if col is not None:
            parts.append((table, col))
    parts += [(CATEGORY, c) for c in d.cats]
    parts += [(ANNOTATION, a) for a in d.anns if a is not None]
    ev_idx = np.arange(n)
    events = Events(
        row=d.rows,
        type=sc.get("type", zero).astype(np.int64),
        track=sc.get("track", zero),
        has_track=yes if "track" in sc else no,
        name=sc.get("name", zero),
        has_name=yes if "name" in sc else no,
        cat=d.cats[0] if d.cats else zero,
        has_cat=yes if d.cats else no,
        iid_event=np.concatenate([ev_idx for _ in parts]) if parts else ev_idx[:0],
        iid_table=np.concatenate([np.full(n, t) for t, _ in parts]) if parts else ev_idx[:0],
        iid=np.concatenate([c for _, c in parts]) if parts else zero[:0],
    )
    return events, sc


def _merge(parts: list[Events]) -> Events:
    """Events of several groups as one (not sorted: an event's iids stay in field order)."""
    if len(parts) == 1:
        return parts[0]
    base = np.cumsum([0] + [len(p.row) for p in parts[:-1]]).tolist()

    def cat(name: str) -> npt.NDArray[Any]:
        return np.concatenate([getattr(p, name) for p in parts])

    return Events(
        row=cat("row"),
        type=cat("type"),
        track=cat("track"),
        has_track=cat("has_track"),
        name=cat("name"),
        has_name=cat("has_name"),
        cat=cat("cat"),
        has_cat=cat("has_cat"),
        iid_event=np.concatenate([p.iid_event + b for p, b in zip(parts, base, strict=True)]),
        iid_table=cat("iid_table"),
        iid=cat("iid"),
    )


def decode_block(buf: bytes, starts: I64, lens: I64, templates: Templates | None = None) -> Block:
    """Decode the packets with bodies ``buf[starts[i] : starts[i] + lens[i]]`` (see the module doc).

    ``templates`` (optional, kept across blocks) decodes the packets that fit a known fixed layout
    first; the walk reads the rest.
    """
    n = len(starts)
    desc_off = np.zeros(n, dtype=np.int64)
    desc_len = np.full(n, -1, dtype=np.int64)
    col = {name: np.zeros(n, dtype=np.uint64) for name in ("ts", "seq", "flags", "clock")}
    has = {name: np.zeros(n, dtype=bool) for name in ("ts", "seq")}
    ev_parts: list[Events] = []
    rest = np.arange(n)
    w8 = words(buf)
    if templates is not None:
        groups, done = templates.match(buf, w8, starts, lens)
        for g in groups:
            events, sc = _template_events(g)
            ev_parts.append(events)
            for name, column in col.items():
                if name in sc:
                    column[g.rows] = sc[name]
                    if name in has:
                        has[name][g.rows] = True
        rest = np.flatnonzero(~done)
    k = len(rest)
    pf = walk(w8, starts[rest], starts[rest] + lens[rest])
    code, cnt = _classify(pf, k, _PACKET_LUT)
    flags = _pick(pf, code, _P_FLAGS, k)
    slow_k = pf.bad | (cnt[:, 0] > 0) | (cnt[:, 1:] > 1).any(axis=1) | ((flags & np.uint64(1)) != 0)
    slow_k |= (cnt[:, _P_EVENT] > 0) & (cnt[:, _P_DESC] > 0)
    for name, which in (("ts", _P_TS), ("seq", _P_SEQ), ("flags", _P_FLAGS), ("clock", _P_CLOCK)):
        col[name][rest] = _pick(pf, code, which, k)
    has["ts"][rest] = cnt[:, _P_TS] > 0
    has["seq"][rest] = cnt[:, _P_SEQ] > 0
    offset = np.zeros(k, dtype=np.int64)
    length = np.zeros(k, dtype=np.int64)
    for which in (_P_EVENT, _P_DESC):
        sel = code == which
        offset[pf.msg[sel]] = pf.offset[sel]
        length[pf.msg[sel]] = pf.value[sel].astype(np.int64)
    one_desc = np.flatnonzero((cnt[:, _P_DESC] == 1) & ~pf.bad)
    desc_off[rest[one_desc]] = offset[one_desc]
    desc_len[rest[one_desc]] = length[one_desc]
    ev_k = np.flatnonzero((cnt[:, _P_EVENT] == 1) & ~slow_k)
    desc_k = np.flatnonzero((cnt[:, _P_DESC] == 1) & ~slow_k)
    events, ev_slow = _walk_events(w8, rest[ev_k], offset[ev_k], length[ev_k])
    slow_k[ev_k[ev_slow]] = True
    ev_parts.append(events)
    descriptors, d_slow = _walk_descriptors(buf, w8, rest[desc_k], offset[desc_k], length[desc_k])
    slow_k[desc_k[d_slow]] = True
    return Block(
        ts=col["ts"],
        has_ts=has["ts"],
        seq=col["seq"],
        has_seq=has["seq"],
        flags=col["flags"],
        clock=col["clock"],
        events=_merge(ev_parts),
        descriptors=descriptors,
        slow=rest[slow_k],
        desc_off=desc_off,
        desc_len=desc_len,
    )


def _walk_events(w8: U64, rows: I64, offset: I64, length: I64) -> tuple[Events, B]:
    """Walk the TrackEvent messages at ``offset`` of packets ``rows``: (events, which need protobuf)."""
    m = len(rows)
    ef = walk(w8, offset, offset + length)
    ecode, ecnt = _classify(ef, m, _EVENT_LUT)
    ev_slow = ef.bad | (ecnt[:, 0] > 0) | (ecnt[:, [_E_TYPE, _E_TRACK, _E_NAME, _E_LOC]] > 1).any(axis=1)
    ann = np.flatnonzero(ecode == _E_ANN)
    af = walk(w8, ef.offset[ann], ef.offset[ann] + ef.value[ann].astype(np.int64))
    acode, acnt = _classify(af, len(ann), _ANN_LUT)
    ann_bad = af.bad | (acnt[:, 0] > 0) | (acnt[:, _A_NAME] > 1)
    ev_slow[ef.msg[ann[ann_bad]]] = True
    iid_parts = []
    for c, t in ((_E_NAME, NAME), (_E_CAT, CATEGORY), (_E_LOC, LOCATION)):
        sel = ecode == c
        iid_parts.append((ef.msg[sel], np.full(int(sel.sum()), t), ef.value[sel]))
    named = acode == _A_NAME
    iid_parts.append((ef.msg[ann[af.msg[named]]], np.full(int(named.sum()), ANNOTATION), af.value[named]))
    iid_event, iid_table, iid = (np.concatenate(c) for c in zip(*iid_parts, strict=True))
    by_event = np.argsort(iid_event, kind="stable")  # per event: tables in order, categories in field order
    iid_event, iid_table, iid = iid_event[by_event], iid_table[by_event], iid[by_event]
    cat = np.zeros(m, dtype=np.uint64)
    cat_rows = np.flatnonzero(ecode == _E_CAT)
    first_cat_msg, first = np.unique(ef.msg[cat_rows], return_index=True)  # field rows are step-major
    cat[first_cat_msg] = ef.value[cat_rows[first]]
    keep = ~ev_slow
    remap = np.cumsum(keep) - 1
    iid_keep = keep[iid_event]
    events = Events(
        row=rows[keep],
        type=_pick(ef, ecode, _E_TYPE, m)[keep].astype(np.int64),
        track=_pick(ef, ecode, _E_TRACK, m)[keep],
        has_track=(ecnt[:, _E_TRACK] > 0)[keep],
        name=_pick(ef, ecode, _E_NAME, m)[keep],
        has_name=(ecnt[:, _E_NAME] > 0)[keep],
        cat=cat[keep],
        has_cat=(ecnt[:, _E_CAT] > 0)[keep],
        iid_event=remap[iid_event[iid_keep]],
        iid_table=iid_table[iid_keep],
        iid=iid[iid_keep],
    )
    return events, ev_slow


def _walk_descriptors(buf: bytes, w8: U64, rows: I64, offset: I64, length: I64) -> tuple[Descriptors, B]:
    """Walk the TrackDescriptor messages at ``offset`` of packets ``rows``: (plain tracks, which need
    protobuf: process and thread tracks and anything unusual)."""
    k = len(rows)
    df = walk(w8, offset, offset + length)
    dcode, dcnt = _classify(df, k, _DESC_LUT)
    d_slow = df.bad | (dcnt[:, 0] > 0) | (dcnt[:, [_D_UUID, _D_PARENT, _D_NAME, _D_STATIC]] > 1).any(axis=1)
    dkeep = ~d_slow
    name_off = np.zeros(k, dtype=np.int64)
    name_len = np.zeros(k, dtype=np.int64)
    for which in (_D_STATIC, _D_NAME):  # name wins over static_name when both are there and non-empty
        sel = (dcode == which) & (df.value > 0)
        name_off[df.msg[sel]] = df.offset[sel]
        name_len[df.msg[sel]] = df.value[sel].astype(np.int64)
    descriptors = Descriptors(
        row=rows[dkeep],
        uuid=_pick(df, dcode, _D_UUID, k)[dkeep],
        parent=_pick(df, dcode, _D_PARENT, k)[dkeep],
        has_parent=(dcnt[:, _D_PARENT] > 0)[dkeep],
        name=_strings(buf, name_off[dkeep], name_len[dkeep]),
        counter=(dcnt[:, _D_COUNTER] > 0)[dkeep],
    )
    return descriptors, d_slow
