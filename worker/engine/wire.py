"""Protobuf wire encoding: small scalar helpers for one-off messages, numpy writers for hot rows.

Hot rows use *padded* varints: a value is written in a fixed number of bytes, every byte but the last
with the continuation bit set. Protobuf decoders (upb, protozero) accept these non-minimal varints, and
fixed widths let a whole batch of packets be laid out as one uint8 matrix filled column by column.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "LEN",
    "VARINT",
    "field_bytes",
    "field_varint",
    "put_varint",
    "put_varint64",
    "tag",
    "varint",
    "varint_width",
]

VARINT = 0
LEN = 2

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]


def varint(value: int) -> bytes:
    """Minimal varint of a non-negative int, or a negative one as its 64-bit two's complement."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def field_varint(field: int, value: int) -> bytes:
    return tag(field, VARINT) + varint(value)


def field_bytes(field: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return tag(field, LEN) + varint(len(data)) + data


def varint_width(max_value: int) -> int:
    """Bytes needed to hold values up to ``max_value`` in a (padded) varint."""
    width = 1
    while max_value >= 1 << (7 * width) and width < 10:
        width += 1
    return width


#: The smallest value of each varint width from 2 to 10 bytes.
_VARINT_STEPS = [np.uint64(1 << (7 * k)) for k in range(1, 10)]


def varint_widths(values: U64) -> npt.NDArray[np.int64]:
    """:func:`varint_width` of each value (1-10 bytes): one comparison pass per byte the largest value
    needs beyond the first (a binary search per value costs more on large arrays of small values,
    and no less on small ones)."""
    out: npt.NDArray[np.int64] = np.ones(len(values), dtype=np.int64)
    top = int(values.max()) if len(values) else 0
    for step in _VARINT_STEPS:
        if top < step:
            break
        out += values >= step
    return out


def put_varint(matrix: U8, col: int, values: npt.NDArray[np.integer], width: int) -> None:
    """Write ``values`` (< 2**(7*width), non-negative) as padded varints in matrix[:, col:col+width]."""
    if width == 1:  # values < 128: the byte is the value
        matrix[:, col] = values
        return
    if width <= 4:  # values < 2**28: 32-bit arithmetic, half the memory traffic
        v32 = values.astype(np.uint32)
        for k in range(width):
            b32 = (v32 >> np.uint32(7 * k)) & np.uint32(0x7F)
            if k < width - 1:
                b32 |= np.uint32(0x80)
            matrix[:, col + k] = b32
        return
    v = values.astype(np.uint64, copy=False)
    if width >= 9:
        put_varint64(matrix, col, v, width)
        return
    for k in range(width):
        byte = (v >> np.uint64(7 * k)) & np.uint64(0x7F)
        if k < width - 1:
            byte |= np.uint64(0x80)
        matrix[:, col + k] = byte


_M28 = np.uint64(0x0FFFFFFF)
_M14 = np.uint64(0x00003FFF00003FFF)
_M7 = np.uint64(0x007F007F007F007F)
_CONT = np.uint64(0x8080808080808080)


def _spread56(v: U64) -> U64:
    """The low 56 bits of each value spread into 8 bytes of 7 bits, continuation bits set (LE)."""
    y = (v & _M28) | (((v >> np.uint64(28)) & _M28) << np.uint64(32))
    y = (y & _M14) | (((y >> np.uint64(14)) & _M14) << np.uint64(16))
    y = (y & _M7) | (((y >> np.uint64(7)) & _M7) << np.uint64(8))
    y |= _CONT
    return y


def _u64_column(matrix: U8, col: int) -> npt.NDArray[np.uint64]:
    """Bytes ``col .. col+7`` of every row of a C-contiguous uint8 matrix as one little-endian
    uint64 per row (a structured view: one 8-byte store per row instead of eight byte stores)."""
    if not matrix.flags.c_contiguous or matrix.ndim != 2:
        raise ValueError("put_varint64 needs a C-contiguous 2-D uint8 matrix")
    width = matrix.shape[1]
    field = np.dtype({"names": ["v"], "formats": ["<u8"], "offsets": [col], "itemsize": width})
    out: npt.NDArray[np.uint64] = matrix.view(field)["v"][:, 0]
    return out


def put_varint64(matrix: U8, col: int, values: U64, width: int) -> None:
    """Padded varint of 9 (values < 2**63) or 10 bytes (any uint64) via an 8-byte bit spread."""
    low = _spread56(values)
    _u64_column(matrix, col)[:] = low
    if width == 9:
        matrix[:, col + 8] = (values >> np.uint64(56)) & np.uint64(0x7F)
    elif width == 10:
        matrix[:, col + 8] = ((values >> np.uint64(56)) & np.uint64(0x7F)) | np.uint64(0x80)
        matrix[:, col + 9] = values >> np.uint64(63)
    else:
        raise ValueError(f"put_varint64 writes 9 or 10 bytes, not {width}")
