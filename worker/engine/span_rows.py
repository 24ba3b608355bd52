"""Slice event packets of one layout as a matrix (one row per packet), for ``packing.pack``.

A BEGIN of an async span may carry, besides the fields in ``rows``, a list of ``flow_ids`` (the flows to
its children drawn on other tracks), one ``terminating_flow_ids`` (the flow from its parent) and a
``parent_span_id`` debug annotation. Rows of one layout share every field but the time::

    0A len                              Trace.packet (padded varint)
      50 01                             trusted_packet_sequence_id = 1
      5A len                            track_event
        48 type [58 uuid(W)]            type, track_uuid (none: the sequence default)
        [50 name(W) 18 cat(W) 90 02 loc(W)]
        [F9 02 id(8)]*k                 flow_ids (fixed64, unpacked), one per child linked by a flow
        [81 03 id(8)]                   terminating_flow_ids (fixed64): the flow from the parent
        [22 len {08 01 20 id(V)}]       debug annotation parent_span_id (interned name), int_value
        [22 len {08 02 32 len "begin"|"end"}] debug annotation trace_worker_cut (interned name)
      40 time                           delta or absolute (``packing``)

``event_matrix`` writes rows of one layout with column writes (the least work per row);
``begin_rows`` writes BEGINs of mixed layouts in one pass at per-row offsets (no per-layout call,
more work per row), byte for byte as one ``event_matrix`` call per layout would.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt

from worker.engine.packing import TIME_SLOT, Times, put_times, row_matrix
from worker.engine.wire import (
    _u64_column,
    field_bytes,
    field_varint,
    put_varint,
    varint,
    varint_width,
    varint_widths,
)

__all__ = [
    "ANNOTATIONS",
    "CUT_ANNOTATION",
    "CUT_BEGIN",
    "CUT_END",
    "NO_CUT",
    "PARENT_ANNOTATION",
    "SLICE_BEGIN",
    "SLICE_END",
    "annotation_names_packet",
    "event_matrix",
]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

SLICE_BEGIN = 1
SLICE_END = 2
#: Debug annotation codes for cut spans.
NO_CUT = 0
CUT_BEGIN = 1
CUT_END = 2
#: Debug annotation naming the parent span of a child that is not drawn under it, and the one marking a
#: slice whose begin or end was made up at the range edge; their names are interned once
#: (``annotation_names_packet``) with these iids.
PARENT_ANNOTATION = "parent_span_id"
PARENT_ANNOTATION_IID = 1
CUT_ANNOTATION = "trace_worker_cut"
CUT_ANNOTATION_IID = 2
ANNOTATIONS: dict[int, bytes] = {
    code: field_bytes(4, field_varint(1, CUT_ANNOTATION_IID) + field_bytes(6, value))
    for code, value in ((CUT_BEGIN, "begin"), (CUT_END, "end"))
}
_ANN_HEAD = field_varint(1, PARENT_ANNOTATION_IID) + bytes([0x20])
_FLOW_TAG = bytes([0xF9, 0x02])  # field 47, wire type 1 (fixed64)
_TERM_TAG = bytes([0x81, 0x03])  # field 48, wire type 1 (fixed64)
_ABS_TAIL = np.array([0xD0, 0x03, 0x01], dtype=np.uint8)  # timestamp_clock_id = REALTIME


def event_matrix(
    t: Times,
    kind: int,
    *,
    uuid: U64 | None = None,
    name: U64 | None = None,
    cat: U64 | None = None,
    loc: U64 | None = None,
    widths: tuple[int, int, int] | None = None,
    flows: U64 | None = None,
    term: U64 | None = None,
    parent_span: I64 | None = None,
    cut: int = 0,
) -> tuple[U8, I64]:
    """Slice event packets of one layout: the matrix and each row's length.

    Args:
        t: each packet's time field (``packing.times``), shape (n,).
        kind: SLICE_BEGIN or SLICE_END for every row.
        uuid: track uuid per row, or None for the sequence's default track.
        name, cat, loc: interned iids per row (all three or none); ``widths`` their varint widths
            (default: of the largest value of each).
        flows: flow ids, shape (n, k), written as k unpacked ``flow_ids``; None for none.
        term: one ``terminating_flow_ids`` per row, or None.
        parent_span: the ``parent_span_id`` annotation value per row, or None.
        cut: CUT_BEGIN / CUT_END to mark every row's slice as cut, 0 for none.
    """
    n = len(t.value)
    te = bytearray([0x48, kind])
    cols: list[tuple[int, npt.NDArray[np.integer], int]] = []  # (offset in te, values, width)
    if uuid is not None:
        w = varint_width(int(uuid.max())) if n else 1
        te.append(0x58)
        cols.append((len(te), uuid, w))
        te += bytes(w)
    if name is not None and cat is not None and loc is not None:
        if widths is None:
            widths = tuple(varint_width(int(c.max()) if n else 1) for c in (name, cat, loc))  # type: ignore[assignment]
        assert widths is not None
        for tag_bytes, iids, w in (
            (b"\x50", name, widths[0]),
            (b"\x18", cat, widths[1]),
            (b"\x90\x02", loc, widths[2]),
        ):
            te += tag_bytes
            cols.append((len(te), iids, w))
            te += bytes(w)
    fixed: list[tuple[int, U64]] = []
    k = 0 if flows is None else flows.shape[1]
    for j in range(k):
        assert flows is not None
        te += _FLOW_TAG
        fixed.append((len(te), np.ascontiguousarray(flows[:, j])))
        te += bytes(8)
    if term is not None:
        te += _TERM_TAG
        fixed.append((len(te), term))
        te += bytes(8)
    if parent_span is not None:
        ann_width = varint_width(int(parent_span.view(np.uint64).max())) if n else 1
        te += bytes([0x22, len(_ANN_HEAD) + ann_width]) + _ANN_HEAD
        cols.append((len(te), parent_span.view(np.uint64), ann_width))
        te += bytes(ann_width)
    te += ANNOTATIONS.get(cut, b"")
    head = bytes([0x50, 0x01, 0x5A]) + varint(len(te))
    body = head + bytes(te)
    m, start = row_matrix(body, n)
    base = start + len(head)
    for off, column, w in cols:
        put_varint(m, base + off, column, w)
    for off, ids in fixed:
        _u64_column(m, base + off)[:] = ids  # one 8-byte store per row (a 2-D copy is a memcpy per row)
    return m, put_times(m, start, len(body), t)


@cache
def annotation_names_packet() -> bytes:
    """InternedData packet defining the debug annotation names ``parent_span_id`` and
    ``trace_worker_cut`` (after CLEARED)."""
    entries = b"".join(
        field_bytes(3, field_varint(1, iid) + field_bytes(2, name))
        for iid, name in ((PARENT_ANNOTATION_IID, PARENT_ANNOTATION), (CUT_ANNOTATION_IID, CUT_ANNOTATION))
    )
    body = field_varint(10, 1) + field_varint(13, 2) + field_bytes(12, entries)
    return field_bytes(1, body)


_M64 = (1 << 64) - 1
#: Continuation bits of the first 8 bytes of a padded varint of width w (index w, 0..10).
_CONT_OF = np.array(
    [
        int.from_bytes(bytes([0x80] * min(max(w - 1, 0), 8) + [0] * (8 - min(max(w - 1, 0), 8))), "little")
        for w in range(11)
    ],
    dtype=np.uint64,
)
_LOW7 = [np.uint64(0x7F << (8 * k)) for k in range(8)]


def _varint_words(values: npt.NDArray[np.integer], width: I64 | int, top: int) -> tuple[U64, U64 | None]:
    """Padded varints (per-row ``width``, at most ``top``) as little-endian words: bytes 0-7 and,
    when ``top`` > 8, bytes 8-9 (else None). Past a row's width the bytes are zero."""
    v = values.astype(np.uint64, copy=False)
    y = v & _LOW7[0]
    for k in range(1, min(top, 8)):
        y |= (v << np.uint64(k)) & _LOW7[k]
    y |= _CONT_OF[width]
    if top <= 8:
        return y, None
    hi = (v >> np.uint64(56)) & np.uint64(0x7F)
    hi |= ((np.asarray(width) == 10).astype(np.uint64) << np.uint64(7)) | (
        (v >> np.uint64(63)) << np.uint64(8)
    )
    return y, hi


def _put_field(
    words: U64, at: I64, tag_bytes: bytes, values: npt.NDArray[np.integer], *, width: I64 | int, top: int
) -> None:
    """``tag_bytes`` and a padded varint at each byte offset ``at``, as 8-byte stores into ``words``
    (an unaligned little-endian uint64 view at every byte of the matrix, ``begin_rows``). Bytes past
    the field are zero: the next field, written after it, overwrites them."""
    k = len(tag_bytes)
    lo, hi = _varint_words(values, width, top)
    tag = np.uint64(int.from_bytes(tag_bytes, "little"))
    if k == 0:
        words[at] = lo
        if hi is not None:
            words[at + 8] = hi
        return
    words[at] = (lo << np.uint64(8 * k)) | tag
    if k + top > 8:
        rest = lo >> np.uint64(64 - 8 * k)
        words[at + 8] = rest if hi is None else rest | (hi << np.uint64(8 * k))


def _put_fixed(words: U64, at: I64, tag_bytes: bytes, values: U64) -> None:
    """A two-byte tag and a fixed64 value at each byte offset ``at`` (two 8-byte stores: every field's
    last two bytes first, so that fields back to back, as a row's flows, do not overwrite each other)."""
    tag = np.uint64(int.from_bytes(tag_bytes, "little"))
    words[at + 8] = values >> np.uint64(48)
    words[at] = (values << np.uint64(16)) | tag


def group_vwidths(group: I64, values: U64, groups: int | None = None) -> I64:
    """Per row, the varint width of the largest of ``values`` over the rows of its ``group`` (dense
    ids from 0; ``groups``: how many, default the largest id + 1): the widths of the groups' largest
    values, gathered (a width per group, not per row)."""
    if groups is None:
        groups = int(group.max()) + 1 if len(group) else 0
    top = np.zeros(groups, dtype=np.uint64)
    np.maximum.at(top, group, values)
    out: I64 = varint_widths(top)[group]
    return out


def begin_rows(
    t: Times,
    *,
    group: I64,
    uuid: U64,
    name: U64,
    cat: U64,
    loc: U64,
    widths: tuple[I64 | int, I64 | int, I64 | int],
    flow_count: I64,
    flows: U64,
    term: U64,
    parent_span: I64,
    ann: npt.NDArray[np.bool_],
    cut: npt.NDArray[np.bool_],
) -> tuple[U8, I64]:
    """Async BEGIN packets of mixed layouts in one matrix: byte for byte what :func:`event_matrix` (with
    ``SLICE_BEGIN``) writes when called once per ``group`` of rows (ids from 0) with that group's
    rows, but one pass of array operations for all rows instead of one matrix per layout.

    Args:
        t: each packet's time field, shape (n,).
        group: the call each row belongs to: the track uuid and the annotation get the varint width of
            the largest value of the row's group (as ``event_matrix`` gives its rows).
        uuid, name, cat, loc: track uuid and interned iids per row; ``widths`` the iids' varint widths
            (per row, or one for all).
        flow_count, flows: the number of ``flow_ids`` of each row and the ids, rows' runs back to back.
        term: ``terminating_flow_ids`` per row, 0 for none.
        parent_span, ann: the ``parent_span_id`` annotation value per row, written where ``ann``.
        cut: rows marked with the ``trace_worker_cut`` = "begin" annotation.

    Returns:
        The matrix (width a multiple of 4, at least 12, rows left-aligned, as ``packing.pack`` needs)
        and each row's length.
    """
    n = len(t.value)
    if not n:
        return np.zeros((0, 12), dtype=np.uint8), np.zeros(0, dtype=np.int64)
    groups = int(group.max()) + 1
    if groups > 2 * n + 64:  # sparse ids (the per-group tables below are indexed by them): made dense
        _, group = np.unique(group, return_inverse=True)
        group = group.reshape(-1)
        groups = int(group.max()) + 1
    uw = group_vwidths(group, uuid, groups)
    ann_value = parent_span.view(np.uint64)
    aw = group_vwidths(group, np.where(ann, ann_value, np.uint64(0)), groups)
    wn, wc, wl = widths
    has_term = term != 0
    cut_bytes = ANNOTATIONS[CUT_BEGIN]
    # te: 48 01 | 58 uuid | 50 name | 18 cat | 90 02 loc | flows | term | annotation | cut
    te_len = 2 + 1 + uw + 1 + wn + 1 + wc + 2 + wl + 10 * flow_count + 10 * has_term
    te_len = te_len + ann * (2 + len(_ANN_HEAD) + aw) + cut * len(cut_bytes)
    tew = varint_widths(te_len.astype(np.uint64))
    body_len = 3 + tew + te_len
    lw = varint_widths((body_len + TIME_SLOT).astype(np.uint64))
    time_col = 1 + lw + body_len
    # Room for the last 16-byte store past every row's time field (the rows are cut to their length).
    width = max(12, int(time_col.max()) + 16)
    width += -width % 4
    m = np.zeros((n, width), dtype=np.uint8)
    words = np.ndarray(shape=(n * width - 7,), dtype="<u8", buffer=m, strides=(1,))
    row = np.arange(0, n * width, width, dtype=np.int64)
    tl = t.lengths
    top = int(lw.max())
    _put_field(words, row, b"\x0a", body_len + tl, width=lw if top > 1 else 1, top=top)
    at = row + 1 + lw
    top = int(tew.max())
    _put_field(words, at, b"\x50\x01\x5a", te_len, width=tew if top > 1 else 1, top=top)
    at = at + 3 + tew
    _put_field(words, at, bytes([0x48, SLICE_BEGIN, 0x58]), uuid, width=uw, top=int(uw.max()))
    at = at + 3 + uw
    for tag_bytes, iids, w in ((b"\x50", name, wn), (b"\x18", cat, wc), (b"\x90\x02", loc, wl)):
        _put_field(words, at, tag_bytes, iids, width=w, top=int(np.max(w)))
        at = at + (len(tag_bytes) + w)
    if len(flows):
        first = np.cumsum(flow_count) - flow_count
        owner = np.repeat(np.arange(n), flow_count)
        nth = np.arange(len(flows)) - first[owner]
        _put_fixed(words, at[owner] + 10 * nth, _FLOW_TAG, flows)
        at = at + 10 * flow_count
    if has_term.any():
        rows = np.flatnonzero(has_term)
        _put_fixed(words, at[rows], _TERM_TAG, term[rows])
        at = at + 10 * has_term
    if ann.any():
        rows = np.flatnonzero(ann)
        a_w = aw[rows]
        a_at = at[rows]
        # 22 len 08 01 20 value: the head (with each row's length byte), then the value
        head = int.from_bytes(b"\x22\x00" + _ANN_HEAD, "little")
        words[a_at] = np.uint64(head) | ((len(_ANN_HEAD) + a_w).astype(np.uint64) << np.uint64(8))
        _put_field(words, a_at + 2 + len(_ANN_HEAD), b"", ann_value[rows], width=a_w, top=int(a_w.max()))
        at = at + ann * (2 + len(_ANN_HEAD) + aw)
    if cut.any():
        rows = np.flatnonzero(cut)
        words[at[rows]] = np.uint64(int.from_bytes(cut_bytes[:8], "little"))
        if len(cut_bytes) > 8:
            words[at[rows] + 8] = np.uint64(int.from_bytes(cut_bytes[8:16], "little"))
        assert len(cut_bytes) <= 16
        at = at + cut * len(cut_bytes)
    _put_field(words, at, b"\x40", t.value, width=t.width, top=int(t.width.max()))
    if t.absolute.any():
        rows = np.flatnonzero(t.absolute)
        flat = m.reshape(-1)
        for j, byte in enumerate(_ABS_TAIL.tolist()):
            flat[at[rows] + 10 + j] = byte
    out: I64 = time_col + tl
    return m, out
