"""Log entries (``view_instance('log_entries', process_id)``) to Perfetto log messages, columnar.

Each entry becomes one TracePacket that carries its own interned body and an instant event with a
``log_message`` (perfetto.md §8), so the UI lists it in its log panel and marks it on the timeline::

    0A P                                    Trace.packet (P: padded varint, width per batch)
      40 ts(9)                              timestamp (epoch ns)
      50 01 68 02                           sequence 1, SEQ_NEEDS_INCREMENTAL_STATE
      5A TE                                 track_event (TE < 128)
        48 03                               type = TYPE_INSTANT
        58 uuid(10)                         track_uuid: the logging thread's track, else the process's
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
batch's headers are one numpy matrix and the texts are copied in with one boolean-mask assignment.
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

from worker.engine.wire import put_varint, put_varint64, varint_width

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
    if pc.any(pc.match_substring(msg, _NUL)).as_py():
        msg = pc.replace_substring(msg, _NUL, _NUL_SHOWN)
    cut = 0
    too_long = pc.greater(pc.utf8_length(msg), MAX_BODY_CHARS)
    if pc.any(too_long).as_py():
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


def _body_buffers(body: pa.StringArray) -> tuple[I64, U8]:
    """Byte offsets (n + 1, from 0) and the UTF-8 bytes of a string array."""
    n = len(body)
    _, offsets_buf, data_buf = body.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32, count=n + 1, offset=body.offset * 4).astype(np.int64)
    data: U8 = (
        np.frombuffer(data_buf, dtype=np.uint8)[offsets[0] : offsets[-1]]
        if data_buf is not None
        else np.zeros(0, dtype=np.uint8)
    )
    return offsets - offsets[0], data


def log_rows(batch: LogBatch, first_body_iid: int) -> tuple[bytes, I64]:
    """Framed packets of a batch (body iids ``first_body_iid`` on) and each packet's length."""
    n = len(batch.ts)
    offsets, data = _body_buffers(batch.body)
    blen = np.diff(offsets)
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
    # Header: everything up to the text, the same width for every row.
    h = 1 + vp + 10 + 4 + 2 + te_len + 1 + vid + 2 + ve + 1 + wb + 1 + vb
    m = np.zeros((n, h), dtype=np.uint8)
    m[:, 0] = 0x0A
    put_varint(m, 1, p_len, vp)
    c = 1 + vp
    m[:, c] = 0x40
    put_varint64(m, c + 1, batch.ts.astype(np.uint64), 9)
    c += 10
    m[:, c : c + 6] = [0x50, 0x01, 0x68, 0x02, 0x5A, te_len]
    c += 6
    m[:, c : c + 3] = [0x48, 0x03, 0x58]
    put_varint64(m, c + 3, batch.uuid, 10)
    c += 13
    m[:, c] = 0x50
    put_varint(m, c + 1, batch.name, wn)
    c += 1 + wn
    m[:, c : c + 4] = [0xAA, 0x01, lm_len, 0x08]
    put_varint(m, c + 4, batch.loc, wl)
    c += 4 + wl
    m[:, c] = 0x10
    put_varint(m, c + 1, iids, wb)
    c += 1 + wb
    m[:, c] = 0x18
    m[:, c + 1] = batch.prio
    c += 2
    m[:, c] = 0x62
    put_varint(m, c + 1, id_len, vid)
    c += 1 + vid
    m[:, c : c + 2] = [0xA2, 0x01]
    put_varint(m, c + 2, e_len, ve)
    c += 2 + ve
    m[:, c] = 0x08
    put_varint(m, c + 1, iids, wb)
    c += 1 + wb
    m[:, c] = 0x12
    put_varint(m, c + 1, blen, vb)
    c += 1 + vb
    assert c == h
    sizes = h + blen
    total = int(sizes.sum())
    if not len(data):
        return m.tobytes(), sizes
    out = np.empty(total, dtype=np.uint8)
    is_text = np.ones(total, dtype=bool)
    starts = np.cumsum(sizes) - sizes
    head = (starts[:, None] + np.arange(h, dtype=np.int64)).ravel()
    out[head] = m.ravel()
    is_text[head] = False
    out[is_text] = data
    return out.tobytes(), sizes
