"""Measures (``view_instance('measures', process_id)``) to Perfetto counter tracks, columnar.

One counter track per (target, name) under the process track, created the first time the pair is
seen: a TrackDescriptor ``{uuid, parent_uuid = process, name, description, counter {unit, unit_name}}``.
Track uuid (:func:`counter_uuid`): xxh64 of the UTF-8 target's byte length (8 bytes, little endian),
the target, then the name, seed = process uuid: length-prefixed, so no two (target, name) pairs share
the hashed bytes, whatever characters (NUL included) they hold. Track name (:func:`counter_name`):
``name (target)``, or ``name`` alone when the target is empty, so the same metric under two targets
shows as two distinguishable tracks. Each measure is one packet, 41 bytes::

    0A 27                                   Trace.packet
      40 ts(9)                              timestamp (epoch ns)
      50 01 68 02                           sequence 1, SEQ_NEEDS_INCREMENTAL_STATE
      5A 17                                 track_event
        48 04                               type = TYPE_COUNTER
        58 uuid(10)                         track_uuid
        E1 02 value(8)                      double_counter_value (fixed64, little endian)

Units: ``ns`` -> UNIT_TIME_NS, ``bytes`` -> UNIT_SIZE_BYTES, ``count`` -> UNIT_COUNT; the unit text
is always written as ``unit_name`` too (the first unit seen for the pair).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from worker.engine.tracks import xxh64
from worker.engine.wire import _spread56, field_bytes, field_varint, put_varint64

__all__ = [
    "COUNTER_PACKET_SIZE",
    "counter_descriptor",
    "counter_name",
    "counter_rows",
    "counter_unit",
    "counter_uuid",
]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

COUNTER_PACKET_SIZE = 41
_UNITS = {
    "ns": 1,
    "nanoseconds": 1,
    "bytes": 3,
    "byte": 3,
    "count": 2,
}
_TEMPLATE = np.array(
    [0x0A, 39, 0x40, *([0] * 9), 0x50, 0x01, 0x68, 0x02, 0x5A, 23, 0x48, 0x04, 0x58, *([0] * 10), 0xE1, 0x02]
    + [0] * 8,
    dtype=np.uint8,
)
assert len(_TEMPLATE) == COUNTER_PACKET_SIZE
#: One packet as one opaque value (gathered whole), and its variable fields at their byte offsets.
_ROW = np.dtype(f"V{COUNTER_PACKET_SIZE}")
_FIELDS = np.dtype(
    {
        "names": ["ts", "ts9", "value"],
        "formats": ["<u8", "u1", "<f8"],
        "offsets": [3, 11, 33],
        "itemsize": COUNTER_PACKET_SIZE,
    }
)


def counter_unit(unit: str) -> int:
    """CounterDescriptor.Unit of a Micromegas unit text (0 = unspecified)."""
    return _UNITS.get(unit.strip().lower(), 0)


def counter_uuid(process_uuid: int, target: str, name: str) -> int:
    """Track uuid (unsigned 64-bit) of the counter track of (``target``, ``name``) under a process.

    xxh64(len(target) as 8 bytes little endian + target + name, seed = ``process_uuid``), lengths and
    texts in UTF-8 bytes: the prefix makes the hashed bytes differ for any two distinct pairs (a
    separator would not: ("a\\0b", "c") and ("a", "b\\0c") joined by NUL are the same bytes).
    """
    t = target.encode()
    return xxh64(len(t).to_bytes(8, "little") + t + name.encode(), seed=process_uuid)


def counter_name(target: str, name: str) -> str:
    """The track name shown in the UI: ``name (target)``, or ``name`` when the target is empty.

    NUL characters show as U+2400 (as in log bodies); the uuid still tells such pairs apart."""
    shown = f"{name} ({target})" if target else name
    return shown.replace("\0", "\u2400")


def counter_descriptor(uuid: int, parent: int, *, name: str, target: str, unit: str) -> bytes:
    """The TrackDescriptor body (not framed) of one counter track (named by :func:`counter_name`)."""
    counter = field_bytes(6, unit) if unit else b""
    code = counter_unit(unit)
    if code:
        counter = field_varint(3, code) + counter
    return (
        field_varint(1, uuid)
        + field_varint(5, parent)
        + field_bytes(2, counter_name(target, name))
        + field_bytes(14, f"Micromegas measure {name!r} of target {target!r}, unit {unit!r}")
        + field_bytes(8, counter)
    )


def counter_rows(ts: I64, track: I64, uuids: U64, value: F64) -> U8:
    """Counter event packets, one 41-byte row each.

    Args:
        ts: timestamps (epoch ns, non-negative).
        track: each row's index into ``uuids``.
        uuids: the distinct track uuids.
        value: the values.

    One template row per track (constant bytes and its uuid) is gathered per row as a 41-byte
    value, then the time and value fields are written through a structured view: three strided
    column writes, no per-byte loop.
    """
    n = len(ts)
    per_track = np.empty((len(uuids), COUNTER_PACKET_SIZE), dtype=np.uint8)
    per_track[:] = _TEMPLATE
    put_varint64(per_track, 21, uuids, 10)
    rows = per_track.view(_ROW).reshape(len(uuids))[track]
    fields = rows.view(_FIELDS)
    t = ts.astype(np.uint64, copy=False)
    fields["ts"] = _spread56(t)  # the 9-byte padded varint: 8 spread bytes, then bits 56-62
    fields["ts9"] = t >> np.uint64(56)
    fields["value"] = value
    out: U8 = rows.view(np.uint8).reshape(n, COUNTER_PACKET_SIZE)
    return out
