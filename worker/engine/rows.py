"""Fixed-width packet rows, one numpy row per packet: slice BEGIN/END events and async track descriptors.

A slice event packet, framed as field 1 of ``Trace`` (W = iid width of the batch, at most 5)::

    0A len                                  Trace.packet
      40 ts(9)                              timestamp (epoch ns, < 2**63)
      50 01                                 trusted_packet_sequence_id = 1
      68 02                                 sequence_flags = SEQ_NEEDS_INCREMENTAL_STATE
      5A len                                track_event
        48 type                             SLICE_BEGIN / SLICE_END
        58 uuid(10)                         track_uuid
        50 name(W)                          name_iid (ENDs too, so a misnesting is reported by Perfetto)
        18 cat(W)                           category_iids
        90 02 loc(W)                        source_location_iid
        [22 len {52 len name, 32 len value}] optional debug annotation marking a cut span

Rows of one call share a layout (and so a length): a cut annotation applies to all or none.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from worker.engine.wire import LEN, field_bytes, put_varint, put_varint64, tag, varint_width

__all__ = [
    "ANNOTATIONS",
    "CUT_BEGIN",
    "CUT_END",
    "NO_CUT",
    "SLICE_BEGIN",
    "SLICE_END",
    "descriptor_rows",
    "marked_slice_rows",
    "slice_rows",
]

SLICE_BEGIN = 1
SLICE_END = 2

#: Debug annotation codes for cut async spans.
NO_CUT = 0
CUT_BEGIN = 1
CUT_END = 2
#: Name of the debug annotation marking a slice whose begin or end was made up at the range edge.
CUT_ANNOTATION = "trace_worker_cut"
ANNOTATIONS: dict[int, bytes] = {
    code: field_bytes(4, field_bytes(10, CUT_ANNOTATION) + field_bytes(6, value))
    for code, value in ((CUT_BEGIN, "begin"), (CUT_END, "end"))
}

U8 = npt.NDArray[np.uint8]
UIntArray = npt.NDArray[np.uint64]


def iid_width(*arrays: npt.NDArray[np.uint64]) -> int:
    top = max((int(a.max()) for a in arrays if len(a)), default=1)
    return varint_width(top)


def slice_rows(
    ts: npt.NDArray[np.int64] | npt.NDArray[np.uint64],
    kinds: npt.NDArray[np.uint8] | int,
    uuid: UIntArray | int,
    *,
    name: UIntArray,
    cat: UIntArray,
    loc: UIntArray,
    annotation: int = NO_CUT,
) -> U8:
    """Slice event packets, one row each, all of the same length.

    Args:
        ts: event timestamps (non-negative epoch ns).
        kinds: SLICE_BEGIN / SLICE_END per row, or one for all.
        uuid: track uuid per row, or one for all.
        name: name iid per row.
        cat: category iid per row.
        loc: source-location iid per row.
        annotation: NO_CUT, or CUT_BEGIN / CUT_END to mark every row's slice as cut.
    """
    n = len(ts)
    width = iid_width(name, cat, loc)
    blob = ANNOTATIONS.get(annotation, b"")
    te_len = 17 + 3 * width + len(blob)
    packet_len = 16 + te_len
    if packet_len > 127:
        raise ValueError("slice packets must stay under 128 bytes")  # pragma: no cover - W <= 10
    template = np.zeros(2 + packet_len, dtype=np.uint8)
    template[:21] = [0x0A, packet_len, 0x40, *([0] * 9), 0x50, 0x01, 0x68, 0x02, 0x5A, te_len, 0x48, 0, 0x58]
    col = 31
    for tag_bytes in ((0x50,), (0x18,), (0x90, 0x02)):
        template[col : col + len(tag_bytes)] = tag_bytes
        col += len(tag_bytes) + width
    template[col:] = np.frombuffer(blob, dtype=np.uint8)
    if isinstance(uuid, int):
        const = np.zeros((1, 10), dtype=np.uint8)
        put_varint64(const, 0, np.array([uuid], dtype=np.uint64), 10)
        template[21:31] = const[0]
    if isinstance(kinds, int):
        template[19] = kinds
    m = np.empty((n, len(template)), dtype=np.uint8)
    m[:] = template
    put_varint64(m, 3, ts.astype(np.uint64, copy=False), 9)
    if not isinstance(kinds, int):
        m[:, 19] = kinds
    if not isinstance(uuid, int):
        put_varint64(m, 21, uuid, 10)
    put_varint(m, 32, name, width)
    put_varint(m, 33 + width, cat, width)
    put_varint(m, 35 + 2 * width, loc, width)
    return m


_DESC_NAME = field_bytes(2, "async")
_DESC_TD_LEN = 11 + 11 + len(_DESC_NAME)
_DESC_HEAD = bytes([0x50, 0x01, 0x68, 0x02]) + tag(60, LEN) + bytes([_DESC_TD_LEN])
_DESC_LEN = len(_DESC_HEAD) + _DESC_TD_LEN
#: Name shared by all per-span async tracks, so Perfetto merges siblings into ~peak-concurrency rows.
ASYNC_TRACK_NAME = "async"


def descriptor_rows(uuid: UIntArray, parent: UIntArray) -> U8:
    """TrackDescriptor packets {uuid, parent_uuid, name="async"}, one row each (38 bytes)."""
    n = len(uuid)
    m = np.empty((n, 2 + _DESC_LEN), dtype=np.uint8)
    m[:, 0] = 0x0A
    m[:, 1] = _DESC_LEN
    head = len(_DESC_HEAD)
    m[:, 2 : 2 + head] = np.frombuffer(_DESC_HEAD, dtype=np.uint8)
    col = 2 + head
    m[:, col] = 0x08
    put_varint64(m, col + 1, uuid, 10)
    m[:, col + 11] = 0x28
    put_varint64(m, col + 12, parent, 10)
    m[:, col + 22 :] = np.frombuffer(_DESC_NAME, dtype=np.uint8)
    return m


def marked_slice_rows(
    ts: npt.NDArray[np.int64],
    kinds: npt.NDArray[np.uint8] | int,
    uuid: UIntArray | int,
    *,
    name: UIntArray,
    cat: UIntArray,
    loc: UIntArray,
    marks: U8,
) -> tuple[bytes, npt.NDArray[np.int64] | int]:
    """Slice event packets where each row may carry its own cut mark.

    Args:
        marks: per row NO_CUT, CUT_BEGIN or CUT_END (the annotation that row's event carries).
        (the rest as :func:`slice_rows`)

    Returns:
        The packets back to back, and their sizes (one int when no row is marked).
    """
    if not np.any(marks):
        rows = slice_rows(ts, kinds, uuid, name=name, cat=cat, loc=loc)
        return rows.tobytes(), rows.shape[1]
    base = slice_rows(ts, kinds, uuid, name=name, cat=cat, loc=loc)
    plain = base.shape[1]
    wide = max(len(blob) for blob in ANNOTATIONS.values())
    m = np.zeros((len(ts), plain + wide), dtype=np.uint8)
    m[:, :plain] = base
    extra = np.zeros(max(ANNOTATIONS) + 1, dtype=np.int64)
    blobs = np.zeros((len(extra), wide), dtype=np.uint8)
    for code, blob in ANNOTATIONS.items():
        extra[code] = len(blob)
        blobs[code, : len(blob)] = np.frombuffer(blob, dtype=np.uint8)
    m[:, plain:] = blobs[marks]
    add = extra[marks]
    m[:, 1] += add.astype(np.uint8)  # packet length
    m[:, 17] += add.astype(np.uint8)  # track_event length
    lengths = plain + add
    keep = np.arange(m.shape[1]) < lengths[:, None]
    return m[keep].tobytes(), lengths
