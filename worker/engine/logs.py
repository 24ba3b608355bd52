"""Log entries (``view_instance('log_entries', process_id)``) to Perfetto log messages, columnar.

Each entry becomes one TracePacket that carries its own interned body and an instant event with a
``log_message`` (perfetto.md §8), so the UI lists it in its log panel and marks it on the timeline::

    0A P                                    Trace.packet (P: padded varint, width per batch)
      40 ts(9)                              timestamp (epoch ns)
      50 01 68 02                           sequence 1, SEQ_NEEDS_INCREMENTAL_STATE
      5A TE                                 track_event (TE < 128)
        48 03                               type = TYPE_INSTANT
        58 uuid(10)                         track_uuid: the logging thread's, else its log stream's
        50 name(Wn)                         name_iid: the entry's target
        AA 01 LM                            log_message
          08 loc(Wl)                        source_location_iid: SourceLocation{file_name = target}
          10 body(Wb)                       body_iid
          18 prio                           priority (from the Micromegas level)
      62 ID                                 interned_data
        A2 01 E                             log_message_body
          08 body(Wb)                       iid
          12 B text                         body (UTF-8)

Every field before the text has a fixed width within a batch (padded varints, see ``wire``), so a
batch's headers are one numpy matrix; Arrow joins each header row with its text (C++, per row).
Each entry has a body iid of its own (iids only grow: one sequence, never cleared again).

Text rules (never a broken trace): null -> ""; NUL characters -> U+2400 (␀); invalid UTF-8 -> U+FFFD;
longer than :data:`MAX_BODY_CHARS` code points -> cut there and :data:`TRUNCATION_MARK` appended.
Levels 1=Fatal .. 6=Trace map to PRIO_FATAL(7) .. PRIO_VERBOSE(2); other levels and nulls to INFO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from worker.engine.wire import _spread56, put_varint64, varint_width

__all__ = [
    "MAX_BODY_CHARS",
    "TRUNCATION_MARK",
    "LogBatch",
    "clean_bodies",
    "is_text",
    "log_rows",
    "priorities",
]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]

#: Longest message body kept, in code points (at most 4 bytes each).
MAX_BODY_CHARS = 32_768
#: Appended to a body cut at :data:`MAX_BODY_CHARS`.
TRUNCATION_MARK = " …[truncated by trace-worker]"
#: Micromegas level (index) -> Perfetto LogMessage.Priority; index 0 and >6 are unknown -> INFO.
_PRIO = np.array([4, 7, 6, 5, 4, 3, 2, 4], dtype=np.uint8)
_NUL = "\x00"
_NUL_SHOWN = "\u2400"


def priorities(levels: I64) -> U8:
    """Perfetto priorities of Micromegas levels (1=Fatal..6=Trace -> 7..2; anything else -> 4)."""
    out: U8 = _PRIO[np.clip(levels, 0, 7)]
    return out


def is_text(t: pa.DataType) -> bool:
    """Whether a ``msg`` column type can be read: strings or bytes, plain or dictionary-encoded."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    kinds = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    return any(k(t) for k in (*kinds, pa.types.is_binary, pa.types.is_large_binary))


def clean_bodies(msg: pa.Array) -> tuple[pa.Array, int]:
    """Message texts ready to write (plain utf8, see the module rules) and how many were cut."""
    if pa.types.is_dictionary(msg.type):
        msg = msg.dictionary_decode()
    if not pa.types.is_string(msg.type):
        msg = msg.cast(pa.string()) if not pa.types.is_binary(msg.type) else msg
    if pa.types.is_binary(msg.type) or pa.types.is_large_binary(msg.type):
        msg = _repair_utf8(msg)
    else:
        try:
            msg.validate(full=True)
        except pa.ArrowInvalid:
            msg = _repair_utf8(msg.cast(pa.binary(), safe=False))
    if msg.null_count:
        msg = msg.fill_null("")
    if _has_nul(msg):
        msg = pc.replace_substring(msg, _NUL, _NUL_SHOWN)
    cut = 0
    # A text of at most MAX_BODY_CHARS bytes has at most as many code points: count only otherwise.
    longest = pc.max(pc.binary_length(msg)).as_py() if len(msg) else 0
    too_long = pc.greater(pc.utf8_length(msg), MAX_BODY_CHARS) if (longest or 0) > MAX_BODY_CHARS else None
    if too_long is not None and pc.any(too_long).as_py():
        cut = int(pc.sum(too_long).as_py())
        short = pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(msg, 0, MAX_BODY_CHARS), TRUNCATION_MARK, ""
        )
        msg = pc.if_else(too_long, short, msg)
    if isinstance(msg, pa.ChunkedArray):
        msg = msg.combine_chunks()
    if msg.type != pa.string():
        msg = msg.cast(pa.string())
    return msg, cut


def _has_nul(msg: pa.Array) -> bool:
    """Whether any text holds a NUL character (one numpy pass over the text bytes)."""
    _, offsets_buf, data_buf = msg.buffers()
    if data_buf is None:
        return False
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=len(msg) + 1, offset=msg.offset * 4)
    data = np.frombuffer(data_buf, dtype=np.uint8)[int(offsets[0]) : int(offsets[-1])]
    return bool(len(data)) and not bool(data.all())


def _repair_utf8(raw: pa.Array) -> pa.Array:
    # Rare (the source broke its own type): per-row Python, only on this path.
    return pa.array(
        [None if v is None else v.decode("utf-8", errors="replace") for v in raw.to_pylist()], pa.string()
    )


@dataclass
class LogBatch:
    """Entries ready to encode (all arrays of one length, time order not required)."""

    ts: I64
    uuid: U64
    name: U64
    loc: U64
    prio: U8
    body: pa.StringArray  # cleaned (see clean_bodies), no nulls


def _put(m: U8, col: int, values: npt.NDArray[np.integer], width: int) -> None:
    """Padded varints of ``width`` (1-8) bytes: every byte at once from one 7-bit spread."""
    if width == 1:
        m[:, col] = values
        return
    if width <= 4:  # values < 2**28: 32-bit arithmetic, one byte column at a time
        v = values.astype(np.uint32, copy=False)
        for k in range(width):
            byte = (v >> np.uint32(7 * k)) & np.uint32(0x7F)
            m[:, col + k] = byte | np.uint32(0x80) if k < width - 1 else byte
        return
    spread = _spread56(values.astype(np.uint64, copy=False)).astype("<u8", copy=False)
    m[:, col : col + width] = spread.view(np.uint8).reshape(-1, 8)[:, :width]
    m[:, col + width - 1] &= 0x7F


def log_rows(batch: LogBatch, first_body_iid: int) -> tuple[bytes, I64]:
    """Framed packets of a batch (body iids ``first_body_iid`` on) and each packet's length."""
    n = len(batch.ts)
    blen = pc.binary_length(batch.body).to_numpy(zero_copy_only=False).astype(np.int64)
    iids = np.arange(first_body_iid, first_body_iid + n, dtype=np.uint64)
    wb = varint_width(first_body_iid + n)
    wn = varint_width(int(batch.name.max()) if n else 1)
    wl = varint_width(int(batch.loc.max()) if n else 1)
    max_b = int(blen.max()) if n else 0
    vb = varint_width(max_b)
    e_len = 1 + wb + 1 + vb + blen
    ve = varint_width(int(e_len.max()) if n else 1)
    id_len = 2 + ve + e_len
    vid = varint_width(int(id_len.max()) if n else 1)
    lm_len = 1 + wl + 1 + wb + 2
    te_len = 2 + 11 + 1 + wn + 2 + 1 + lm_len
    p_len = 10 + 4 + 2 + te_len + 1 + vid + id_len
    vp = varint_width(int(p_len.max()) if n else 1)
    # Header: everything up to the text, the same width for every row. A template row holds the
    # constant bytes (and the track uuid when one track takes the whole batch); then the columns.
    h = 1 + vp + 10 + 4 + 2 + te_len + 1 + vid + 2 + ve + 1 + wb + 1 + vb
    tpl = np.zeros(h, dtype=np.uint8)
    c_ts = 2 + vp
    c_uuid = c_ts + 9 + 9
    c_name = c_uuid + 11
    c_loc = c_name + wn + 4
    c_biid = c_loc + wl + 1
    c_prio = c_biid + wb + 1
    c_id = c_prio + 2
    c_e = c_id + vid + 2
    c_iid = c_e + ve + 1
    c_b = c_iid + wb + 1
    assert c_b + vb == h
    tpl[0] = 0x0A
    tpl[c_ts - 1] = 0x40
    tpl[c_ts + 9 : c_uuid] = [0x50, 0x01, 0x68, 0x02, 0x5A, te_len, 0x48, 0x03, 0x58]
    tpl[c_name - 1] = 0x50
    tpl[c_loc - 4 : c_loc] = [0xAA, 0x01, lm_len, 0x08]
    tpl[c_biid - 1] = 0x10
    tpl[c_prio - 1] = 0x18
    tpl[c_id - 1] = 0x62
    tpl[c_e - 2 : c_e] = [0xA2, 0x01]
    tpl[c_iid - 1] = 0x08
    tpl[c_b - 1] = 0x12
    one_track = n > 0 and int(batch.uuid.min()) == int(batch.uuid.max())
    if one_track:
        row = np.zeros((1, 10), dtype=np.uint8)
        put_varint64(row, 0, batch.uuid[:1], 10)
        tpl[c_uuid : c_uuid + 10] = row[0]
    m = np.tile(tpl, (n, 1))  # ~2x faster than assigning the template to an empty matrix
    _put(m, 1, p_len, vp)
    put_varint64(m, c_ts, batch.ts.astype(np.uint64), 9)
    if not one_track:
        put_varint64(m, c_uuid, batch.uuid, 10)
    _put(m, c_name, batch.name, wn)
    _put(m, c_loc, batch.loc, wl)
    _put(m, c_biid, iids, wb)
    m[:, c_iid : c_iid + wb] = m[:, c_biid : c_biid + wb]
    m[:, c_prio] = batch.prio
    _put(m, c_id, id_len, vid)
    _put(m, c_e, e_len, ve)
    _put(m, c_b, blen, vb)
    sizes = h + blen
    # Each packet = its header row + its text, joined row by row in C++; the joined values are
    # back to back in the result's data buffer, which is the output. Copied out: holding the Arrow
    # buffer until its chunk is joined costs more (fresh pages for the next batch) than the copy.
    heads = pa.FixedSizeBinaryArray.from_buffers(pa.binary(h), n, [None, pa.py_buffer(m)]).cast(pa.binary())
    joined = pc.binary_join_element_wise(heads, batch.body.cast(pa.binary()), b"")
    _, offsets_buf, data_buf = joined.buffers()
    bounds = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=joined.offset * 4)
    return data_buf[int(bounds[0]) : int(bounds[-1])].to_pybytes(), sizes
