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
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from worker.engine.packing import Times, put_times, row_matrix
from worker.engine.wire import _u64_column, field_bytes, field_varint, put_varint, varint, varint_width

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


def annotation_names_packet() -> bytes:
    """InternedData packet defining the debug annotation names ``parent_span_id`` and
    ``trace_worker_cut`` (after CLEARED)."""
    entries = b"".join(
        field_bytes(3, field_varint(1, iid) + field_bytes(2, name))
        for iid, name in ((PARENT_ANNOTATION_IID, PARENT_ANNOTATION), (CUT_ANNOTATION_IID, CUT_ANNOTATION))
    )
    body = field_varint(10, 1) + field_varint(13, 2) + field_bytes(12, entries)
    return field_bytes(1, body)
