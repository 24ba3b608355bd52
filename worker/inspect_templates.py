"""Fixed-layout track-event packets for ``trace-worker inspect``: checked byte for byte, decoded with numpy.

A *template* is the byte layout of one packet body: where each key and length prefix sits and how long
each varint is. Packets of one length that match a template byte for byte at those places (the keys and
length prefixes equal, every varint ending where the template's does) are decoded together: a varint at a
fixed offset and length is a sum of shifted bytes. A writer that emits batches of packets of one layout
(as the engine does) gets whole batches decoded with a few numpy passes; ``inspect_columns.walk`` reads
whatever fits no template.

Templates are built by walking one packet in Python; only TracePacket fields ``timestamp`` (8),
``trusted_packet_sequence_id`` (10), ``sequence_flags`` (13, without SEQ_INCREMENTAL_STATE_CLEARED) and
``timestamp_clock_id`` (58) around one ``track_event`` (11) qualify, and in the TrackEvent only fields
whose effect on the checks is known (see ``_TE_SCALAR``, ``_TE_SKIP``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["Decoded", "Template", "Templates", "build_template", "decode_group"]

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]

_PACKET_FIELDS = {(8, 0): "ts", (10, 0): "seq", (13, 0): "flags", (58, 0): "clock"}
#: TrackEvent fields: scalar columns, repeated ones (flattened), and ones skipped (no check uses them).
_TE_SCALAR = {(9, 0): "type", (11, 0): "track", (10, 0): "name", (34, 0): "loc"}
_TE_SKIP = {(47, 1), (48, 1), (52, 0), (36, 0), (42, 0), (30, 0), (44, 1)}
_ANN_SKIP = {(2, 0), (3, 0), (4, 0), (5, 1), (6, 2), (7, 0), (17, 0), (9, 2)}


@dataclass
class Template:
    length: int
    check_off: I64  # 8-byte words checked: offset in the body, mask, value
    check_mask: U64
    check_val: U64
    scalars: dict[str, tuple[int, int]] = field(default_factory=dict)  # column -> (offset, varint length)
    cats: list[tuple[int, int]] = field(default_factory=list)
    anns: list[tuple[int, int] | None] = field(default_factory=list)  # name_iid varint, None if absent


class _NoTemplate(Exception):
    pass


def _varint_at(body: bytes, pos: int, end: int) -> tuple[int, int]:
    """(value, length) of the varint at ``pos``."""
    for n in range(10):
        if pos + n >= end:
            raise _NoTemplate
        if not body[pos + n] & 0x80:
            value = 0
            for i in range(n + 1):
                value |= (body[pos + i] & 0x7F) << (7 * i)
            return value, n + 1
    raise _NoTemplate


def build_template(body: bytes) -> Template | None:
    """The template of one packet body, or None if it has a field the columnar path does not handle."""
    checks: list[tuple[int, int, int]] = []  # (offset, mask, value)
    scalars: dict[str, tuple[int, int]] = {}
    cats: list[tuple[int, int]] = []
    anns: list[tuple[int, int] | None] = []

    def key(pos: int, end: int) -> tuple[int, int, int]:
        value, n = _varint_at(body, pos, end)
        checks.extend((pos + i, 0xFF, body[pos + i]) for i in range(n))
        return value >> 3, value & 7, pos + n

    def varint(pos: int, end: int) -> tuple[int, int]:
        value, n = _varint_at(body, pos, end)
        checks.extend((pos + i, 0x80, 0x80) for i in range(n - 1))
        checks.append((pos + n - 1, 0x80, 0))
        return value, n

    def length(pos: int, end: int) -> tuple[int, int]:
        value, n = _varint_at(body, pos, end)
        checks.extend((pos + i, 0xFF, body[pos + i]) for i in range(n))
        if pos + n + value > end:
            raise _NoTemplate
        return pos + n, pos + n + value

    def skip(pos: int, end: int, wire: int) -> int:
        if wire == 0:
            return pos + varint(pos, end)[1]
        if wire == 1:
            return pos + 8
        if wire == 2:
            return length(pos, end)[1]
        raise _NoTemplate

    try:
        pos, end, events = 0, len(body), 0
        while pos < end:
            num, wire, pos = key(pos, end)
            if (num, wire) in _PACKET_FIELDS:
                value, n = varint(pos, end)
                if num == 13 and value & 1:
                    return None  # CLEARED changes sequence state: the protobuf path handles it
                scalars[_PACKET_FIELDS[num, wire]] = (pos, n)
                pos += n
            elif (num, wire) == (11, 2):
                events += 1
                start, stop = length(pos, end)
                pos = stop
                p = start
                while p < stop:
                    te_num, te_wire, p = key(p, stop)
                    if (te_num, te_wire) in _TE_SCALAR:
                        n = varint(p, stop)[1]
                        scalars[_TE_SCALAR[te_num, te_wire]] = (p, n)
                        p += n
                    elif (te_num, te_wire) == (3, 0):
                        n = varint(p, stop)[1]
                        cats.append((p, n))
                        p += n
                    elif (te_num, te_wire) in _TE_SKIP:
                        p = skip(p, stop, te_wire)
                    elif (te_num, te_wire) == (4, 2):
                        a, a_end = length(p, stop)
                        p = a_end
                        name: tuple[int, int] | None = None
                        while a < a_end:
                            a_num, a_wire, a = key(a, a_end)
                            if (a_num, a_wire) == (1, 0):
                                n = varint(a, a_end)[1]
                                name = (a, n)
                                a += n
                            elif (a_num, a_wire) in _ANN_SKIP:
                                a = skip(a, a_end, a_wire)
                            else:
                                return None
                        if a != a_end:
                            return None
                        anns.append(name)
                    else:
                        return None
                if p != stop:
                    return None
            else:
                return None
        if pos != end or events != 1:
            return None
    except _NoTemplate:
        return None
    # The checked bytes as 8-byte words: (offset, mask, value) covering every check.
    by_off = {o: (m, v) for o, m, v in checks}
    word_off, word_mask, word_val = [], [], []
    pending = sorted(by_off)
    while pending:
        o = pending[0]
        mask = val = 0
        for i in range(8):
            if o + i in by_off:
                m, v = by_off[o + i]
                mask |= m << (8 * i)
                val |= v << (8 * i)
        word_off.append(o)
        word_mask.append(mask)
        word_val.append(val)
        pending = [p for p in pending if p >= o + 8]
    return Template(
        len(body),
        np.array(word_off, np.int64),
        np.array(word_mask, np.uint64),
        np.array(word_val, np.uint64),
        scalars,
        cats,
        anns,
    )


def matches(w8: U64, starts: I64, tpl: Template) -> npt.NDArray[np.bool_]:
    """Which packet bodies (at ``starts``, all of the template's length) fit ``tpl`` (``w8``: the block as
    ``inspect_columns.words``)."""
    ok = np.ones(len(starts), dtype=bool)
    for off, mask, val in zip(tpl.check_off.tolist(), tpl.check_mask, tpl.check_val, strict=True):
        ok &= (w8[starts + off] & mask) == val
    return ok


_GROUPS = [
    (np.uint64(0x007F007F007F007F), np.uint64(0x7F007F007F007F00), np.uint64(1)),
    (np.uint64(0x00003FFF00003FFF), np.uint64(0x3FFF00003FFF0000), np.uint64(2)),
    (np.uint64(0x000000000FFFFFFF), np.uint64(0x0FFFFFFF00000000), np.uint64(4)),
]


def _seven_bit_groups(w: U64, nbytes: int) -> U64:
    """The value of the first ``nbytes`` (<= 8) varint bytes of each word (7 bits each, little-endian)."""
    v = w & np.uint64(((1 << (8 * nbytes)) - 1) & 0x7F7F7F7F7F7F7F7F)
    for lo, hi, shift in _GROUPS:
        v = (v & lo) | ((v & hi) >> shift)
    return v


def read_varint(w8: U64, starts: I64, offset: int, length: int) -> U64:
    """The varints of ``length`` bytes at ``starts + offset`` (already checked to be well formed)."""
    value = _seven_bit_groups(w8[starts + offset], min(length, 8))
    if length > 8:
        value |= _seven_bit_groups(w8[starts + offset + 8], length - 8) << np.uint64(56)
    return value


@dataclass
class Decoded:
    """Columns of the packets one template decoded (rows in file order)."""

    rows: I64  # packet index within the block
    scalars: dict[str, U64]  # only the columns the template has
    cats: list[U64]
    anns: list[U64 | None]


def decode_group(w8: U64, starts: I64, rows: I64, tpl: Template) -> Decoded:
    """Decode the packets ``rows`` (bodies at ``starts``) that match ``tpl``."""
    scalars = {name: read_varint(w8, starts, off, n) for name, (off, n) in tpl.scalars.items()}
    cats = [read_varint(w8, starts, off, n) for off, n in tpl.cats]
    anns = [None if a is None else read_varint(w8, starts, a[0], a[1]) for a in tpl.anns]
    return Decoded(rows, scalars, cats, anns)


#: Templates kept per packet length, and new ones built per length and block.
MAX_TEMPLATES = 16
MAX_NEW = 4
#: A length needs this many packets left unmatched in a block before a template is built for them.
MIN_ROWS = 32


class Templates:
    """The templates seen so far, by packet length (most recently useful first)."""

    def __init__(self) -> None:
        self.by_length: dict[int, list[Template]] = {}

    def match(
        self, buf: bytes, w8: U64, starts: I64, lens: I64
    ) -> tuple[list[Decoded], npt.NDArray[np.bool_]]:
        """Decode the packets that fit a template: (decoded groups, which packets were decoded).

        ``w8``: ``buf`` as ``inspect_columns.words``."""
        done = np.zeros(len(starts), dtype=bool)
        decoded: list[Decoded] = []
        small = np.bincount(np.minimum(lens, 4096))
        lengths = np.flatnonzero(small[:4096]).tolist()
        if len(small) > 4096:
            lengths += np.unique(lens[lens >= 4096]).tolist()
        for length in lengths:
            rows = np.flatnonzero(lens == length)
            templates = self.by_length.setdefault(length, [])
            built = 0
            while len(rows):
                hit = None
                for k, tpl in enumerate(templates):
                    ok = matches(w8, starts[rows], tpl)
                    if ok.any():
                        hit = tpl, ok
                        if k:  # keep the useful ones first
                            templates.insert(0, templates.pop(k))
                        break
                if hit is None:
                    if built >= MAX_NEW or len(rows) < MIN_ROWS:
                        break
                    built += 1
                    r = int(rows[0])
                    new = build_template(buf[int(starts[r]) : int(starts[r]) + length])
                    if new is None:
                        rows = rows[1:]
                        continue
                    templates.insert(0, new)
                    del templates[MAX_TEMPLATES:]
                    continue
                tpl, ok = hit
                got = rows[ok]
                decoded.append(decode_group(w8, starts[got], got, tpl))
                done[got] = True
                rows = rows[~ok]
        return decoded, done
