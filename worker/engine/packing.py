"""Delta timestamps on an incremental clock, and packets of variable length built and packed columnar.

**Clock.** Track-event packets give their ``timestamp`` on clock 64, a sequence-scoped clock declared
*incremental* (perfetto.md §8): each value is the delta from the previous packet on that clock. Before
every block of such packets the encoder writes a **reset packet** (:func:`reset_packet`) holding

- ``trace_packet_defaults {timestamp_clock_id = 64, track_event_defaults {track_uuid}}`` (the track
  only for a thread's events, which then carry no ``track_uuid``), and
- ``clock_snapshot {BOOTTIME = T0, clock 64 = T0 (is_incremental)}``, T0 = the trace's first clock
  snapshot time (the range begin).

Perfetto's trace processor sets an incremental clock's running value to the snapshot's value at every
snapshot (``ClockSynchronizer::AddSnapshot``) and adds each packet's delta to it (``ClockDomain::ToNs``)
in file order; every snapshot maps clock 64 one to one onto BOOTTIME (= REALTIME = epoch ns, from the
first packet), so a packet's time is T0 + the sum of the deltas since the last reset. All snapshots carry
the same values, so neither clock ever looks non-monotonic to it. A block's first delta is therefore
``ts - T0``; the rest are differences.

A packet whose timestamp is *below* the latest one of its block (the source broke time order) cannot be
a delta (deltas are unsigned): it is written absolute, ``timestamp_clock_id = REALTIME (1)`` with the
epoch-ns timestamp, and the running value stays where it was. Which packets those are follows from a
running maximum, so the whole block is computed with numpy (:func:`times`).

**Packets of variable length.** The time field is the last field of each packet (protobuf fields may
come in any order), so a packet is a fixed part (one matrix row per packet, all rows of a matrix alike)
followed by ``40 varint`` of 1-9 bytes (delta) or ``40 ts(9, padded) D0 03 01`` (absolute). Rows are
left in padded matrices and :func:`pack` cuts each to its length and lays them out in any order, by
building an Arrow ``binary_view`` array over the matrices (one 16-byte view per packet) and casting it
to ``binary``: the copy is Arrow's (C++), not a Python loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from worker.engine.wire import _spread56, field_bytes, field_varint, varint_width

__all__ = [
    "INCREMENTAL_CLOCK",
    "TIME_SLOT",
    "Times",
    "pack",
    "packet_matrix",
    "put_time_slots",
    "put_times",
    "realtime_defaults_packet",
    "reset_packet",
    "row_matrix",
    "tile_rows",
    "times",
]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

#: The sequence-scoped incremental clock the track events use.
INCREMENTAL_CLOCK = 64
_REALTIME = 1
_BOOTTIME = 6
_SEQUENCE_ID = 1
_SEQ_NEEDS = 2
#: Bytes a packet's time field may take: ``40``, 9 varint bytes, ``D0 03 01`` (timestamp_clock_id = 1).
TIME_SLOT = 13
_CONT = np.uint64(0x8080808080808080)
#: Continuation bits of the first 8 bytes of a varint of width w (index w, 1..9).
_CONT_OF = np.array(
    [0] + [int.from_bytes(bytes([0x80] * (w - 1) + [0] * (8 - (w - 1))), "little") for w in range(1, 10)],
    dtype=np.uint64,
)
_WIDTH_STEPS = np.array([1 << (7 * k) for k in range(1, 9)], dtype=np.uint64)
_POOL = pa.system_memory_pool()
_ABS_TAIL = np.array([0xD0, 0x03, _REALTIME], dtype=np.uint8)


@lru_cache(maxsize=256)  # (the same few per trace: one per thread, all at one t0)
def reset_packet(t0: int, track_uuid: int | None = None) -> bytes:
    """Defaults (clock 64, and a default track when given) and the snapshot that restarts clock 64 at T0."""
    defaults = field_varint(58, INCREMENTAL_CLOCK)
    if track_uuid is not None:
        defaults += field_bytes(11, field_varint(11, track_uuid))
    clocks = field_bytes(1, field_varint(1, _BOOTTIME) + field_varint(2, t0)) + field_bytes(
        1, field_varint(1, INCREMENTAL_CLOCK) + field_varint(2, t0) + field_varint(3, 1)
    )
    body = (
        field_varint(10, _SEQUENCE_ID)
        + field_varint(13, _SEQ_NEEDS)
        + field_bytes(59, defaults)
        + field_bytes(6, clocks)
    )
    return field_bytes(1, body)


def realtime_defaults_packet() -> bytes:
    """Defaults back to absolute REALTIME timestamps and no default track (before log/counter packets)."""
    body = (
        field_varint(10, _SEQUENCE_ID) + field_varint(13, _SEQ_NEEDS) + field_bytes(59, field_varint(58, 1))
    )
    return field_bytes(1, body)


@dataclass
class Times:
    """The time field of each packet of a block, in file order."""

    value: U64  # delta on clock 64, or the absolute epoch-ns timestamp
    width: I64  # varint bytes, 1-9 (9 for absolute ones, padded)
    absolute: npt.NDArray[np.bool_]

    def take(self, idx: I64 | slice) -> Times:
        return Times(self.value[idx], self.width[idx], self.absolute[idx])

    @property
    def lengths(self) -> I64:
        """Bytes of each packet's time field."""
        out: I64 = np.where(self.absolute, TIME_SLOT, 1 + self.width)
        return out


def times(ts: I64, t0: int, *, ordered: bool = False) -> Times:
    """Time fields of a block's packets (timestamps in file order, epoch ns) after a reset to ``t0``.

    ``ordered``: the caller knows ``ts`` is non-decreasing, so the running maximum is ``ts`` itself
    (numpy's ``maximum.accumulate`` is a scalar loop: skipping it is most of this function's cost);
    otherwise a vector check finds out (well-nested thread events are non-decreasing)."""
    ts = ts.astype(np.int64, copy=False)
    n = len(ts)
    if n and not ordered:  # a check costs a fraction of the running maximum it may save
        ordered = bool(np.all(ts[1:] >= ts[:-1]))
    if n and ordered and int(ts[0]) >= t0:  # every packet a delta from the one before
        delta = np.empty(n, np.int64)
        delta[0] = int(ts[0]) - t0
        np.subtract(ts[1:], ts[:-1], out=delta[1:])
        value = delta.view(np.uint64)
        return Times(value, _widths(value), np.zeros(n, dtype=np.bool_))
    prev = np.empty(n, np.int64)
    if n:
        prev[0] = t0
        if ordered:
            prev[1:] = ts[:-1]
        else:
            np.maximum.accumulate(ts[:-1], out=prev[1:])
        np.maximum(prev, t0, out=prev)
    absolute = ts < prev
    if not absolute.any():
        value = (ts - prev).view(np.uint64)
        width = _widths(value)
    else:
        value = np.where(absolute, ts, ts - prev).astype(np.uint64)
        width = _widths(np.where(absolute, 0, value))
        width[absolute] = 9
    return Times(value, width, absolute)


def _widths(value: U64) -> I64:
    """Varint bytes of each value (1-9, values < 2**63): one comparison pass per byte the largest
    needs beyond the first (a binary search per value costs ~4x more for the usual 1-3 byte deltas)."""
    width = np.ones(len(value), dtype=np.int64)
    top = int(value.max()) if len(value) else 0
    for step in _WIDTH_STEPS[: varint_width(top) - 1]:
        width += value >= step
    return width


def tile_rows(template: U8, n: int) -> U8:
    """A matrix of ``n`` rows, each a copy of ``template`` (uint8): the first row, then the rows so far
    copied after themselves (log2(n) memcpys; a broadcast assignment loops row by row, ~3.5x slower)."""
    w = len(template)
    m = np.empty((n, w), dtype=np.uint8)
    flat = m.reshape(-1)
    total = n * w
    if total:
        flat[:w] = template
        done = w
        while done < total:
            more = min(done, total - done)
            flat[done : done + more] = flat[:more]
            done += more
    return m


def row_matrix(body: bytes, n: int) -> tuple[U8, int]:
    """Matrix of ``n`` packets ``0A len body time``, the body given (placeholders to be filled).

    Returns the matrix (width a multiple of 4, at least 12, as :func:`pack` needs) and the column of
    the body's first byte. The packet length is a padded varint wide enough for the longest time field.
    """
    lw = varint_width(len(body) + TIME_SLOT)
    start = 1 + lw
    width = max(12, start + len(body) + TIME_SLOT)
    width += -width % 4
    template = np.zeros(width, dtype=np.uint8)
    template[0] = 0x0A
    template[start : start + len(body)] = np.frombuffer(body, dtype=np.uint8)
    col = start + len(body)
    template[col] = 0x40
    template[col + 10 : col + 13] = _ABS_TAIL
    return tile_rows(template, n), start


def put_time_slots(m: U8, col: int, t: Times) -> int:
    """Each packet's time field at ``col``: ``40`` and the varint, padded with zero bytes up to the
    widest of the block (absolute ones not included: their ``D0 03 01`` follows). Returns the bytes
    written per row (1 + the widest varint); the columns after them are left as they were."""
    n = len(t.value)
    widest = int(t.width.max()) if n else 1
    m[:, col] = 0x40
    if widest <= 4:  # small deltas (the common case): 32-bit arithmetic, one byte column at a time
        v = t.value.astype(np.uint32)
        last = (t.width - 1).astype(np.uint32)
        for k in range(widest):
            byte = (v >> np.uint32(7 * k)) & np.uint32(0x7F)
            if k < widest - 1:
                byte |= (last > np.uint32(k)).astype(np.uint32) << np.uint32(7)
            m[:, col + 1 + k] = byte
        return 1 + widest
    y = (_spread56(t.value) & ~_CONT) | _CONT_OF[t.width]
    m[:, col + 1 : col + 9] = y.astype("<u8", copy=False).view(np.uint8).reshape(n, 8)
    m[:, col + 9] = (t.value >> np.uint64(56)) & np.uint64(0x7F)
    return 10


def put_times(m: U8, start: int, body_len: int, t: Times) -> I64:
    """Write each row's time field after its body and its packet length; return the rows' lengths."""
    col = start + body_len
    put_time_slots(m, col, t)  # small deltas byte by byte; the bytes past a row's varint are cut off
    tl = t.lengths
    packet_len = body_len + tl
    lw = start - 1
    if lw == 1:
        m[:, 1] = packet_len
    else:
        v = packet_len.astype(np.uint64)
        for k in range(lw):
            byte = (v >> np.uint64(7 * k)) & np.uint64(0x7F)
            m[:, 1 + k] = byte | np.uint64(0x80) if k < lw - 1 else byte
    out: I64 = start + packet_len
    return out


def packet_matrix(packet: bytes) -> tuple[U8, I64]:
    """One framed packet as a one-row matrix for :func:`pack`."""
    width = max(12, len(packet) + (-len(packet) % 4))
    m = np.zeros((1, width), dtype=np.uint8)
    m[0, : len(packet)] = np.frombuffer(packet, dtype=np.uint8)
    return m, np.array([len(packet)], dtype=np.int64)


def pack(
    mats: Sequence[U8], lengths: Sequence[I64], positions: Sequence[I64 | None]
) -> tuple[memoryview, I64]:
    """Rows of several matrices, each cut to its length, laid out in file order.

    Args:
        mats: matrices of packets, one row each, left-aligned (width a multiple of 4, at least 12).
        lengths: each matrix's row lengths.
        positions: where each matrix's rows go in the output (a permutation over all rows together), or
            None for "after the previous matrix's rows" (every entry None: the matrices back to back).

    Returns:
        The packets back to back (a view of Arrow's buffer, not copied again), and the size of each.
    """
    counts = [len(m) for m in mats]
    n = sum(counts)
    if n == 0:
        return memoryview(b""), np.zeros(0, np.int64)
    # Each matrix's views are written straight to their output positions (one scatter of 16-byte
    # views, no concatenation of all views and no permutation afterwards).
    views = np.empty((n, 4), dtype=np.uint32)
    slots = views.view(np.complex128).reshape(n)  # 16 bytes per view: a scatter of whole views
    sizes = np.empty(n, dtype=np.int64)
    buffers: list[pa.Buffer] = []
    at = 0
    for g, (m, length, pos) in enumerate(zip(mats, lengths, positions, strict=True)):
        k = len(m)
        buffers.append(pa.py_buffer(m if k else np.zeros(4, np.uint8)))
        if not k:
            continue
        m32 = m.view(np.uint32)
        length32 = length.astype(np.uint32)
        inline = length32 <= 12
        if pos is None:
            v = views[at : at + k]
            sizes[at : at + k] = length
        else:
            v = np.empty((k, 4), dtype=np.uint32)
            sizes[pos] = length
        v[:, 0] = length32
        v[:, 1] = m32[:, 0]  # the inline data's first bytes, or the prefix: the same bytes
        if inline.any():
            # Inline: the data's bytes 4..11; else buffer g and the row's offset. Selected by masks
            # (all ones on inline rows): np.where with a scalar branch is several times slower.
            keep = np.uint32(0) - inline.view(np.uint8).astype(np.uint32)
            other = ~keep
            data = m32[:, 1] & keep
            data |= other & np.uint32(g)
            v[:, 2] = data
            data = m32[:, 2] & keep
            offsets = np.arange(0, k * m.shape[1], m.shape[1], dtype=np.uint32)
            offsets &= other
            data |= offsets
            v[:, 3] = data
        else:
            v[:, 2] = g
            v[:, 3] = np.arange(0, k * m.shape[1], m.shape[1], dtype=np.uint32)
        if pos is not None:
            slots[pos] = v.view(np.complex128).reshape(k)
        at += k
    arr = pa.Array.from_buffers(pa.binary_view(), n, [None, pa.py_buffer(views), *buffers])
    # The system allocator: Arrow's default pool hands freed pages back to the kernel, so fresh
    # output buffers (one per block) would be page-faulted again and again (measured: ~40% more CPU).
    flat = pc.cast(arr, pa.binary(), memory_pool=_POOL)
    _, offsets_buf, data_buf = flat.buffers()
    bounds = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=flat.offset * 4)
    assert data_buf is not None
    return memoryview(data_buf)[int(bounds[0]) : int(bounds[-1])], sizes
