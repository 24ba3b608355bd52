"""Async slice event packets of variable layout, built per layout group and laid out in a given order.

A BEGIN of an async span may carry, besides the fixed fields of ``rows.slice_rows``, a list of
``flow_ids`` (the flows to its children drawn on other tracks), one ``terminating_flow_ids`` (the flow
from its parent) and a ``parent_span_id`` debug annotation. Rows of equal layout are one numpy matrix;
``assemble`` concatenates the matrices::

    0A len(1-2)                         Trace.packet
      40 ts(9) 50 01 68 02              timestamp, trusted_packet_sequence_id = 1, NEEDS_INCREMENTAL_STATE
      5A len(1-2)                       track_event
        48 type 58 uuid(10)             type, track_uuid
        50 name(W) 18 cat(W) 90 02 loc(W)
        [F9 02 id(8)]*k                 flow_ids (fixed64, unpacked), one per child linked by a flow
        [81 03 id(8)]                   terminating_flow_ids (fixed64): the flow from the parent
        [22 len {08 01 20 id(V)}]       debug annotation parent_span_id (interned name), int_value
        [22 len {52 len "trace_worker_cut" 32 len "begin"|"end"}]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from worker.engine.rows import ANNOTATIONS, iid_width
from worker.engine.wire import field_bytes, field_varint, put_varint, put_varint64, varint, varint_width

__all__ = ["PARENT_ANNOTATION", "assemble", "event_rows", "parent_annotation_packet"]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

#: Debug annotation naming the parent span of a child that is not drawn under it; its name is interned
#: once (``parent_annotation_packet``) with this iid.
PARENT_ANNOTATION = "parent_span_id"
PARENT_ANNOTATION_IID = 1
_ANN_HEAD = field_varint(1, PARENT_ANNOTATION_IID) + bytes([0x20])
_FLOW_TAG = bytes([0xF9, 0x02])  # field 47, wire type 1 (fixed64)
_TERM_TAG = bytes([0x81, 0x03])  # field 48, wire type 1 (fixed64)


def _fixed64(values: U64) -> U8:
    return values.astype("<u8", copy=False).view(np.uint8).reshape(-1, 8)


def event_rows(
    ts: I64,
    kind: int,
    uuid: U64,
    *,
    name: U64,
    cat: U64,
    loc: U64,
    flows: U64 | None = None,
    term: U64 | None = None,
    parent_span: I64 | None = None,
    cut: int = 0,
) -> U8:
    """Slice event packets of one layout, one row each.

    Args:
        ts: timestamps (non-negative epoch ns), shape (n,).
        kind: SLICE_BEGIN or SLICE_END for every row.
        uuid: track uuid per row.
        name, cat, loc: interned iids per row.
        flows: flow ids, shape (n, k), written as k unpacked ``flow_ids``; None for none.
        term: one ``terminating_flow_ids`` per row, or None.
        parent_span: the ``parent_span_id`` annotation value per row, or None.
        cut: CUT_BEGIN / CUT_END to mark every row's slice as cut, 0 for none.
    """
    n = len(ts)
    width = iid_width(name, cat, loc)
    k = 0 if flows is None else flows.shape[1]
    fixed = bytes([0x48, kind, 0x58]) + bytes(10) + bytes([0x50]) + bytes(width) + bytes([0x18])
    fixed += bytes(width) + bytes([0x90, 0x02]) + bytes(width)
    body = fixed + (_FLOW_TAG + bytes(8)) * k
    if term is not None:
        body += _TERM_TAG + bytes(8)
    ann_width = 0
    if parent_span is not None:
        ann_width = varint_width(int(parent_span.view(np.uint64).max())) if len(parent_span) else 1
        body += bytes([0x22, len(_ANN_HEAD) + ann_width]) + _ANN_HEAD + bytes(ann_width)
    body += ANNOTATIONS.get(cut, b"")
    te = bytes([0x5A]) + varint(len(body))
    inner = bytes([0x40]) + bytes(9) + bytes([0x50, 0x01, 0x68, 0x02]) + te + body
    head = bytes([0x0A]) + varint(len(inner))
    template = np.frombuffer(head + inner, dtype=np.uint8)
    m = np.empty((n, len(template)), dtype=np.uint8)
    m[:] = template
    col = len(head)
    put_varint64(m, col + 1, ts.astype(np.uint64, copy=False), 9)
    col += 14 + len(te)  # at the type tag
    put_varint64(m, col + 3, uuid, 10)
    col += 13
    put_varint(m, col + 1, name, width)
    put_varint(m, col + 2 + width, cat, width)
    put_varint(m, col + 4 + 2 * width, loc, width)
    col += 4 + 3 * width
    for j in range(k):
        assert flows is not None
        m[:, col + 2 : col + 10] = _fixed64(np.ascontiguousarray(flows[:, j]))
        col += 10
    if term is not None:
        m[:, col + 2 : col + 10] = _fixed64(term)
        col += 10
    if parent_span is not None:
        put_varint(m, col + 2 + len(_ANN_HEAD), parent_span.view(np.uint64), ann_width)
    return m


def parent_annotation_packet() -> bytes:
    """InternedData packet defining the ``parent_span_id`` debug annotation name (after CLEARED)."""
    entry = field_varint(1, PARENT_ANNOTATION_IID) + field_bytes(2, PARENT_ANNOTATION)
    body = field_varint(10, 1) + field_varint(13, 2) + field_bytes(12, field_bytes(3, entry))
    return field_bytes(1, body)


def assemble(groups: list[U8]) -> tuple[bytes, I64]:
    """Concatenate row matrices in the given order: (bytes, the size of each packet)."""
    groups = [g for g in groups if len(g)]
    if not groups:
        return b"", np.zeros(0, dtype=np.int64)
    sizes = np.concatenate([np.full(len(g), g.shape[1], dtype=np.int64) for g in groups])
    return b"".join(g.tobytes() for g in groups), sizes
