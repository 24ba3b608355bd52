"""Slice event packets and async track descriptors, one matrix row per packet (see ``packing``).

A slice event packet (W = varint width of the column's largest value in the group, padded)::

    0A len                                  Trace.packet
      50 01                                 trusted_packet_sequence_id = 1
      5A len                                track_event
        48 type                             SLICE_BEGIN / SLICE_END
        [58 uuid(W)]                        track_uuid (async, and a thread's depth-overflow tracks);
                                            other thread events use the sequence default
        50 name(W) 18 cat(W) 90 02 loc(W)   name_iid, category_iids, source_location_iid (BEGIN only)
        ...                                 flows, parent annotation (``span_rows``)
        [22 len {08 02 32 len value}]       debug annotation trace_worker_cut (interned name), "begin"/"end"
      40 delta                              timestamp on the incremental clock (``packing``)
      [40 ts(9) D0 03 01]                   or absolute, timestamp_clock_id = REALTIME

An END carries only its type (and track): Perfetto closes the most recent open slice of the track, and
the engine only writes strictly nested slices. Event packets do not set SEQ_NEEDS_INCREMENTAL_STATE:
the sequence's state is valid from the first packet of every prefix of the file (docs/TRACE_FORMAT.md).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from worker.engine.packing import _CONT, _CONT_OF, Times, _widths, pack, put_time_slots, tile_rows, times
from worker.engine.span_rows import (
    ANNOTATIONS,
    CUT_ANNOTATION,
    CUT_BEGIN,
    CUT_END,
    NO_CUT,
    SLICE_BEGIN,
    SLICE_END,
    event_matrix,
)
from worker.engine.wire import LEN, _spread56, field_bytes, put_varint, tag, varint_width

__all__ = [
    "ANNOTATIONS",
    "ASYNC_TRACK_NAME",
    "CUT_ANNOTATION",
    "CUT_BEGIN",
    "CUT_END",
    "NO_CUT",
    "SLICE_BEGIN",
    "SLICE_END",
    "descriptor_matrix",
    "thread_blocks_rows",
    "thread_event_rows",
]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]


def thread_event_rows(
    ts: I64,
    kinds: npt.NDArray[np.uint8],
    *,
    name: U64,
    cat: U64,
    loc: U64,
    marks: npt.NDArray[np.uint8],
    t0: int,
    top: tuple[int, int, int] | None = None,
    track: U64 | None = None,
) -> tuple[memoryview, I64]:
    """A thread's slice events (file order) on its sequence-default track, as deltas on clock 64.

    Args:
        ts: event timestamps (epoch ns), kinds: SLICE_BEGIN / SLICE_END, name/cat/loc: iids of the
            BEGIN events in order, marks: NO_CUT, CUT_BEGIN or CUT_END per event.
        t0: clock 64's running value before the first event: the reset time, or the latest time
            the thread's run has written so far.
        top: the largest name, category and location iid of the block's spans (ENDs included);
            None: those of the BEGINs (every END closes a span begun in the block).
        track: per event, the track uuid it names (``track_uuid``), 0 for the sequence default; None:
            every event on the default (the usual case).

    Returns:
        The packets back to back (reset packet not included), and their sizes.
    """
    t = times(ts, t0)
    is_begin = kinds == SLICE_BEGIN
    # An END holds its span's iids too, so the widths are those of the whole block (a BEGIN of an
    # earlier block may make one a byte wider than needed: still a valid, padded varint).
    if top is None:
        top = (_largest(name), _largest(cat), _largest(loc))
    wn, wc, wl = (varint_width(c) for c in top)
    widths = (wn, wc, wl)
    if track is None and not marks.any() and not t.absolute.any():
        if _LITTLE and max(widths) <= 8:
            return _word_thread_rows(t, is_begin, name=name, cat=cat, loc=loc, widths=widths, top=top)
        name, cat, loc = (_per_event(c, is_begin) for c in (name, cat, loc))
        return _plain_thread_rows(t, kinds, is_begin, name=name, cat=cat, loc=loc, widths=widths)
    mats: list[U8] = []
    lens: list[I64] = []
    where: list[I64 | None] = []
    name, cat, loc = (_per_event(c, is_begin) for c in (name, cat, loc))
    # One layout per (kind, mark, names a track).
    code = kinds.astype(np.int64) * 4 + marks
    if track is not None:
        code += (track != 0) * 12
    for value in np.flatnonzero(np.bincount(code, minlength=24)).tolist():
        rows = np.flatnonzero(code == value)
        named, rest = divmod(value, 12)
        kind, mark = divmod(rest, 4)
        uuid = track[rows] if named and track is not None else None
        if kind == SLICE_BEGIN:
            m, length = event_matrix(
                t.take(rows),
                kind,
                uuid=uuid,
                name=name[rows],
                cat=cat[rows],
                loc=loc[rows],
                widths=widths,
                cut=mark,
            )
        else:
            m, length = event_matrix(t.take(rows), kind, uuid=uuid, cut=mark)
        mats.append(m)
        lens.append(length)
        where.append(rows)
    if len(mats) == 1:
        where = [None]
    return pack(mats, lens, where)


def thread_blocks_rows(
    blocks: Sequence[tuple[I64, npt.NDArray[np.uint8], U64, U64, U64, tuple[int, int, int]]], t0: int
) -> tuple[memoryview, I64] | None:
    """:func:`thread_event_rows` of several blocks (each after its own reset to ``t0``) in one pass,
    back to back: the same bytes, or None unless every block takes the common layout with the same
    iid widths (the caller then writes them one by one).

    Each block is (ts, kinds, name, cat, loc, top) as for :func:`thread_event_rows`, its events on
    the default track, without cut marks, times non-decreasing from ``t0``.
    """
    widths = {tuple(varint_width(c) for c in block[5]) for block in blocks}
    if len(widths) != 1 or not _LITTLE:
        return None
    wn, wc, wl = next(iter(widths))
    if max(wn, wc, wl) > 8:
        return None
    ts = np.concatenate([block[0] for block in blocks])
    starts = np.cumsum([0] + [len(block[0]) for block in blocks[:-1]])
    # Deltas on clock 64, each block's first one from the reset.
    delta = np.empty(len(ts), dtype=np.int64)
    delta[0] = 0
    np.subtract(ts[1:], ts[:-1], out=delta[1:])
    delta[starts] = ts[starts] - t0
    value = delta.view(np.uint64)
    t = Times(value, _widths(value), np.zeros(len(ts), dtype=np.bool_))
    top = tuple(max(block[5][j] for block in blocks) for j in range(3))
    return _word_thread_rows(
        t,
        np.concatenate([block[1] for block in blocks]) == SLICE_BEGIN,
        name=np.concatenate([block[2] for block in blocks]),
        cat=np.concatenate([block[3] for block in blocks]),
        loc=np.concatenate([block[4] for block in blocks]),
        widths=(wn, wc, wl),
        top=(top[0], top[1], top[2]),
    )


def _largest(iids: U64) -> int:
    return int(iids.max()) if len(iids) else 0


def _per_event(iids: U64, is_begin: npt.NDArray[np.bool_]) -> U64:
    """BEGIN iids spread over all events (0 on ENDs, whose iid fields are not written)."""
    out = np.zeros(len(is_begin), dtype=np.uint64)
    out[is_begin] = iids
    return out


def _plain_thread_rows(
    t: Times,
    kinds: npt.NDArray[np.uint8],
    is_begin: npt.NDArray[np.bool_],
    *,
    name: U64,
    cat: U64,
    loc: U64,
    widths: tuple[int, int, int],
) -> tuple[memoryview, I64]:
    """The common case (no cut marks, no absolute times) as one matrix: every row starts
    ``0A len 50 01 5A len 48 type``; a BEGIN goes on with its iids and its time field, an END with
    its time field at once (written over the iid columns, which it does not use)."""
    n = len(t.value)
    wn, wc, wl = widths
    k = (1 + wn) + (1 + wc) + (2 + wl)
    width = 8 + k + 10
    width = max(12, width + (-width % 4))
    template = np.zeros(width, dtype=np.uint8)
    template[[0, 2, 3, 4, 6]] = [0x0A, 0x50, 0x01, 0x5A, 0x48]
    template[8] = 0x50
    template[9 + wn] = 0x18
    template[10 + wn + wc : 12 + wn + wc] = [0x90, 0x02]
    m = tile_rows(template, n)
    put_varint(m, 9, name, wn)
    put_varint(m, 10 + wn, cat, wc)
    put_varint(m, 12 + wn + wc, loc, wl)
    used = put_time_slots(m, 8 + k, t)
    ends = np.flatnonzero(~is_begin)
    m[ends, 8 : 8 + used] = m[ends, 8 + k : 8 + k + used]
    te_len = np.where(is_begin, 2 + k, 2)
    packet_len = 4 + te_len + 1 + t.width
    m[:, 1] = packet_len
    m[:, 5] = te_len
    m[:, 7] = kinds
    return pack([m], [packet_len + 2], [None])


_LITTLE = sys.byteorder == "little"
_U64 = np.uint64
_M7 = (0x7F, 0x3F80, 0x1FC000, 0xFE00000)


def _varint_words(v: U64, width: int) -> U64:
    """Padded varints (``width`` <= 8 bytes) of ``v`` as the little-endian bytes of a uint64."""
    out = np.zeros(len(v), dtype=np.uint64)
    for b in range(width):
        byte = (v >> _U64(7 * b)) & _U64(0x7F)
        if b < width - 1:
            byte |= _U64(0x80)
        out |= byte << _U64(8 * b)
    return out


#: Per varint width: the padded varint words of 0, 1, 2, ... (grown on demand, shared by all blocks).
_IID_TABLES: dict[int, U64] = {}


def _iid_words(iids: U64, width: int, top: int) -> U64:
    """:func:`_varint_words` of a column of iids (``top`` >= each): looked up in a table of 0..top
    when the iids are dense (the interner numbers values from 1), computed byte by byte otherwise."""
    if top > max(1 << 16, len(iids)):
        return _varint_words(iids, width)
    table = _IID_TABLES.get(width)
    if table is None or len(table) <= top:
        size = min(max(1 << 10, 1 << top.bit_length()), 1 << (7 * width))
        table = _IID_TABLES[width] = _varint_words(np.arange(size, dtype=np.uint64), width)
    out: U64 = table[iids.view(np.int64)]
    return out


def _place(words: list[Any], value: Any, offset: int, size: int) -> None:
    """OR ``size`` little-endian bytes of ``value`` into ``words`` at byte ``offset``."""
    j, sh = divmod(offset, 8)
    words[j] = words[j] | (value << _U64(8 * sh))
    if sh and sh + size > 8:
        words[j + 1] = words[j + 1] | (value >> _U64(64 - 8 * sh))


def _time_words(t: Times, widest: int) -> list[U64]:
    """Each packet's time field ``40 varint`` as little-endian bytes: one uint64 (up to 7 varint
    bytes) or two."""
    v = t.value
    width = t.width
    if widest <= 4:  # deltas below 2**28 (the common case): spread the 7-bit groups by masks
        y = v & _U64(_M7[0])
        for b in range(1, widest):
            part = v & _U64(_M7[b])
            np.left_shift(part, _U64(b), out=part)
            y |= part
    else:
        y = _spread56(v) & ~_CONT
    y |= _CONT_OF[width]
    if widest <= 7:
        np.left_shift(y, _U64(8), out=y)
        y |= _U64(0x40)
        return [y]
    lo = (y << _U64(8)) | _U64(0x40)
    hi = (y >> _U64(56)) | (((v >> _U64(56)) & _U64(0x7F)) << _U64(8))
    return [lo, hi]


def _word_thread_rows(
    t: Times,
    is_begin: npt.NDArray[np.bool_],
    *,
    name: U64,
    cat: U64,
    loc: U64,
    widths: tuple[int, int, int],
    top: tuple[int, int, int],
) -> tuple[memoryview, I64]:
    """The bytes of :func:`_plain_thread_rows`, each row built as whole 64-bit words.

    Byte columns of a uint8 matrix are strided stores of one byte each; here a row is a head word
    ``0A len 50 01 5A len 48 type`` and the words after it, the iid fields looked up from tables of
    each iid's bytes (see :func:`_iid_words`) and the time field shifted into place, so every store
    writes 8 bytes."""
    n = len(t.value)
    wn, wc, wl = widths
    k = (1 + wn) + (1 + wc) + (2 + wl)
    widest = int(t.width.max()) if n else 1
    tw = t.width.view(np.uint64)  # 1..9: the same bits
    time = _time_words(t, widest)
    head_end = 0x0A | 7 << 8 | 0x50 << 16 | 0x01 << 24 | 0x5A << 32 | 2 << 40 | 0x48 << 48
    if not len(name):  # ENDs only (a thread's last open spans): the head and the time field
        m = np.empty((n, 1 + len(time)), dtype=np.uint64)
        np.left_shift(tw, _U64(8), out=m[:, 0])
        m[:, 0] += _U64(head_end | SLICE_END << 56)
        for q, word in enumerate(time):
            m[:, 1 + q] = word
        return pack([m.view(np.uint8)], [t.width + 9], [None])
    nr = -(-(k + 1 + widest) // 8)  # words after the head
    # The iid fields of a BEGIN (k bytes): 50 name 18 cat 90 02 loc, tag bytes folded into the tables.
    iid: list[Any] = [0] * (nr + 1)
    for tag_at, tag_bytes, size in ((0, 0x50, 1), (1 + wn, 0x18, 1), (2 + wn + wc, 0x0290, 2)):
        _place(iid, _U64(tag_bytes), tag_at, size)
    _place(iid, _iid_words(name, wn, top[0]), 1, wn)
    _place(iid, _iid_words(cat, wc, top[1]), 2 + wn, wc)
    _place(iid, _iid_words(loc, wl, top[2]), 4 + wn + wc, wl)
    begins = np.flatnonzero(is_begin)
    at_end: list[Any] = [0] * (nr + 1)
    after_iids = list(iid)
    for q, word in enumerate(time):
        _place(at_end, word, 8 * q, 8)
        _place(after_iids, word[begins], k + 8 * q, 8)
    m = np.empty((n, 1 + nr), dtype=np.uint64)
    head_begin = head_end + (k << 8) + (k << 40)
    # The head: END's, plus (BEGIN's - END's) on BEGINs (modulo 2**64), plus the length byte; by
    # arithmetic on contiguous arrays (np.where on scalars is ~5x slower), then one strided store.
    end_word = head_end | SLICE_END << 56
    head = is_begin.astype(np.uint64)
    head *= _U64(((head_begin | SLICE_BEGIN << 56) - end_word) % (1 << 64))
    head += _U64(end_word)
    head += np.left_shift(tw, _U64(8))
    m[:, 0] = head
    for j in range(nr):
        np.copyto(m[:, 1 + j], at_end[j], casting="unsafe")
        m[begins, 1 + j] = after_iids[j]
    sizes: I64 = is_begin * k
    sizes += t.width
    sizes += 9
    return pack([m.view(np.uint8)], [sizes], [None])


_DESC_NAME = field_bytes(2, "async")
#: Name shared by all per-span async tracks, so Perfetto merges siblings into ~peak-concurrency rows.
ASYNC_TRACK_NAME = "async"


def descriptor_matrix(uuid: U64, parent: int) -> tuple[U8, I64]:
    """TrackDescriptor packets {uuid, parent_uuid, name="async"}, one row each, and their lengths.

    ``0A len 50 01 E2 03 len {08 uuid(W) 28 parent 12 05 "async"}``: the uuid padded to the width of
    the largest, the parent (the async group track) written once in the template.
    """
    n = len(uuid)
    w = varint_width(int(uuid.max())) if n else 1
    parent_bytes = bytes([0x28]) + _varint_bytes(parent)
    td_len = 1 + w + len(parent_bytes) + len(_DESC_NAME)
    body = bytes([0x50, 0x01]) + tag(60, LEN) + bytes([td_len, 0x08]) + bytes(w) + parent_bytes + _DESC_NAME
    packet_len = len(body)
    width = 2 + packet_len
    width = max(12, width + (-width % 4))
    template = np.zeros(width, dtype=np.uint8)
    template[0] = 0x0A
    template[1] = packet_len
    template[2 : 2 + packet_len] = np.frombuffer(body, dtype=np.uint8)
    m = tile_rows(template, n)
    put_varint(m, 2 + 6, uuid, w)
    return m, np.full(n, 2 + packet_len, dtype=np.int64)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
