"""Interned names, categories and source locations: strings to iids, column at a time.

Python work happens per *batch*, never per row nor per new value: dictionary indices are mapped to
iids with one numpy gather, and the ids of the last dictionary are kept, since Flight resends the same
dictionary with every batch. New values are found by one Arrow hash lookup, numbered with numpy and
their InternedData entries written by numpy over the values' byte buffer (a fresh trace interns every
name and location it shows: a Python call per value cost more than the rest of a small job's encoding).
Iids start at 1 and are never reused (the trace has one sequence and one incremental-state
generation). The entries are written as InternedData packets that the encoder places before the first
event using them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from worker.engine.wire import field_bytes, field_varint, varint_widths

__all__ = ["Interner"]

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
#: Interned entries per InternedData packet, so one packet stays well under a chunk.
_ENTRIES_PER_PACKET = 2048

_U7F = np.uint64(0x7F)
#: ``binary_join_element_wise``'s empty separator, per binary type (a scalar costs ~2 µs to make).
_NO_SEPARATOR = {kind: pa.scalar(b"", kind) for kind in (pa.binary(), pa.large_binary())}


def _put_varints(out: U8, at: I64, v: U64, widths: I64) -> None:
    """Write the minimal varint of each ``v`` at ``out[at:]`` (``widths`` from ``wire.varint_widths``)."""
    top = int(widths.max(initial=0))
    if top == 1:  # (every value < 128: the byte is the value)
        out[at] = v
        return
    # Every value has a first byte: no row selection for it.
    byte = v & _U7F
    byte |= (widths > 1).astype(np.uint64) << np.uint64(7)
    out[at] = byte
    for k in range(1, top):
        rows = np.flatnonzero(widths > k)
        byte = (v[rows] >> np.uint64(7 * k)) & _U7F
        byte[widths[rows] > k + 1] |= np.uint64(0x80)
        out[at[rows] + k] = byte.astype(np.uint8)


def _entries(
    field: int | U8,
    iids: U64,
    values: pa.Array,
    lines: U64 | None = None,
    has_line: npt.NDArray[np.bool_] | None = None,
) -> tuple[bytes, I64]:
    """InternedData entries ``field { 1: iid, 2: value [, 4: line] }``, concatenated, and the end
    offset of each (bytes).

    Same bytes as ``field_bytes(field, field_varint(1, iid) + field_bytes(2, value) [+ field_varint(4,
    line)])`` per value (``field`` < 16, so every tag is one byte): the fields before the value (and
    the line after it) are written with numpy, the values joined in between by Arrow. ``field`` may
    be one per value, and ``has_line`` says which values have a line (default: all, with ``lines``)."""
    n = len(iids)
    if n == 0:
        return b"", np.zeros(0, dtype=np.int64)
    # The values as bytes (a view of utf8 strings, no copy), with 32-bit offsets unless the entries
    # could outgrow them (a tag and three varints come to at most 31 bytes an entry).
    wide = values.get_total_buffer_size() + 31 * n >= 1 << 31
    text, kind = (pa.large_string(), pa.large_binary()) if wide else (pa.string(), pa.binary())
    arr = (values if values.type == text else values.cast(text)).view(kind)
    if arr.null_count:
        arr = arr.fill_null(b"")
    offset_type = np.int64 if wide else np.int32
    offsets = np.frombuffer(arr.buffers()[1], dtype=offset_type, count=arr.offset + n + 1)[arr.offset :]
    lengths = np.diff(offsets).astype(np.uint64)
    w_iid = varint_widths(iids)
    w_len = varint_widths(lengths)
    inner = (2 + w_iid + w_len).astype(np.uint64) + lengths
    parts = [arr]
    if lines is not None:
        w_line = varint_widths(lines)
        tail_size = 1 + w_line
        if has_line is not None:
            tail_size[~has_line] = 0
            w_line, lines = w_line[has_line], lines[has_line]
        inner += tail_size.astype(np.uint64)
        tail, at = _fields(tail_size)
        if has_line is not None:
            at = at[has_line]
        tail[at] = (4 << 3) | 0
        _put_varints(tail, at + 1, lines, w_line)
        parts.append(_binary(tail, tail_size, kind))
    w_inner = varint_widths(inner)
    head_size = 3 + w_inner + w_iid + w_len
    head, at = _fields(head_size)
    head[at] = (field << 3) | 2 if isinstance(field, int) else (field << np.uint8(3)) | np.uint8(2)
    _put_varints(head, at + 1, inner, w_inner)
    at = at + 1 + w_inner
    head[at] = (1 << 3) | 0
    _put_varints(head, at + 1, iids, w_iid)
    at = at + 1 + w_iid
    head[at] = (2 << 3) | 2
    _put_varints(head, at + 1, lengths, w_len)
    joined = pc.binary_join_element_wise(_binary(head, head_size, kind), *parts, _NO_SEPARATOR[kind])
    bounds = np.frombuffer(joined.buffers()[1], dtype=offset_type, count=joined.offset + n + 1)[
        joined.offset :
    ].astype(np.int64)
    data = joined.buffers()[2]
    assert data is not None
    blob = data.slice(int(bounds[0]), int(bounds[-1] - bounds[0])).to_pybytes()
    ends: I64 = bounds[1:] - bounds[0]
    return blob, ends


def _entry_runs(runs: Sequence[tuple[int, U64, pa.Array, U64 | None]]) -> list[tuple[bytes, I64]]:
    """:func:`_entries` of each run ``(field, iids, values, lines)``, made in one pass over all of
    them (its fixed cost, ~50 µs, is most of a small run's)."""
    if len(runs) == 1 or any(values.type != pa.string() for _, _, values, _ in runs):
        return [_entries(*run) for run in runs]
    counts = np.array([len(iids) for _, iids, _, _ in runs], dtype=np.int64)
    field = np.repeat(np.array([f for f, _, _, _ in runs], dtype=np.uint8), counts)
    iids = np.concatenate([iids for _, iids, _, _ in runs])
    values = pa.concat_arrays([values for _, _, values, _ in runs])
    lines = has_line = None
    if any(run_lines is not None for _, _, _, run_lines in runs):
        zeros = [np.zeros(len(i), dtype=np.uint64) for _, i, _, _ in runs]
        lines = np.concatenate(
            [z if ln is None else ln for z, (_, _, _, ln) in zip(zeros, runs, strict=True)]
        )
        has_line = np.repeat(np.array([ln is not None for _, _, _, ln in runs]), counts)
    blob, ends = _entries(field, iids, values, lines, has_line)
    out = []
    row = 0
    start = 0
    for count in counts.tolist():
        stop = int(ends[row + count - 1]) if count else start
        out.append((blob[start:stop], ends[row : row + count] - start))
        row += count
        start = stop
    return out


def _fields(sizes: I64) -> tuple[U8, I64]:
    """A zeroed buffer for rows of ``sizes`` bytes back to back, and each row's start."""
    ends = np.cumsum(sizes)
    return np.zeros(int(ends[-1]), dtype=np.uint8), ends - sizes


def _binary(buffer: U8, sizes: I64, kind: pa.DataType) -> pa.Array:
    """Rows of ``sizes`` bytes, back to back in ``buffer``, as ``kind`` (binary or large_binary)."""
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64 if kind == pa.large_binary() else np.int32)
    np.cumsum(sizes, out=offsets[1:])
    return pa.Array.from_buffers(kind, len(sizes), [None, pa.py_buffer(offsets), pa.py_buffer(buffer)])


def _first_use(idx: npt.NDArray[np.intp], size: int) -> I64:
    """Per value in ``range(size)``, the first row of ``idx`` holding it (``len(idx)``: none)."""
    first = np.full(size, len(idx), dtype=np.int64)
    np.minimum.at(first, idx, np.arange(len(idx), dtype=np.int64))  # (faster here than a hash)
    return first


def _distinct(file_ids: U64, line: U64) -> tuple[U64, npt.NDArray[np.intp]]:
    """The distinct location keys ``file id << 32 | line`` in order of first use, and each row's
    position among them. Dense keys (few files, short files: the usual case) are numbered through a
    table of every (file, line) pair; others by an Arrow hash."""
    n = len(line)
    files = int(file_ids.max()) + 1 if n else 1
    lines = int(line.max()) + 1 if n else 1
    if files * lines <= max(8 * n, 1 << 17) and n < 1 << 31:  # (tables of a few times the rows at most)
        dense = (file_ids.astype(np.intp) * lines + line.astype(np.intp)).astype(np.intp, copy=False)
        # The first use of each key, as int32 (half the table to fill and scan)...
        first = np.full(files * lines, n, dtype=np.int32)
        np.minimum.at(first, dense, np.arange(n, dtype=np.int32))
        present = np.flatnonzero(first < n)
        present = present[np.argsort(first[present], kind="stable")]
        # ... then, in the same table, each present key's position (no other entry is read).
        first[present] = np.arange(len(present), dtype=np.int32)
        keys = (present // lines).astype(np.uint64) << np.uint64(32) | (present % lines).astype(np.uint64)
        return keys, first[dense].astype(np.intp)
    encoded = pc.dictionary_encode(pa.array((file_ids << np.uint64(32)) | line, type=pa.uint64()))
    return encoded.dictionary.to_numpy(), encoded.indices.to_numpy(zero_copy_only=False).astype(np.intp)


def _index_of_empty(values: pa.Array) -> int:
    """Position of the first "" in a string array (-1: none); of a ``string`` array without nulls,
    the first zero length in its offsets (a compute call costs several times more)."""
    if values.type != pa.string() or values.null_count:
        at: int = pc.index(values, "").as_py()
        return at
    n = len(values)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32, count=values.offset + n + 1)[values.offset :]
    empty = np.flatnonzero(offsets[1:] == offsets[:-1])
    return int(empty[0]) if len(empty) else -1


class _Table:
    """One string table (value -> id) and the ids of the last dictionary seen.

    Flight resends the same dictionary with every batch, so the cache turns the per-batch work into
    one C++ comparison. The values are kept as Arrow arrays in id order (id = position + 1); new ones
    are handed to ``on_new(values, first_id)`` as one array.
    """

    def __init__(self, on_new: Callable[[pa.Array, int], None] | None = None) -> None:
        self.count = 0
        self._on_new = on_new
        self._chunks: list[pa.Array] = []
        self._empty_id = 0  # the id of "" (0: not interned yet)
        self._dictionary: pa.Array | None = None
        self._cached: U64 = np.zeros(1, dtype=np.uint64)
        #: The known values in id order, rebuilt when values were added.
        self._known: pa.Array | None = None

    def values(self) -> pa.Array:
        """Every interned value in id order (``string``)."""
        if self._known is None:
            self._known = pa.concat_arrays(self._chunks) if self._chunks else pa.array([], type=pa.string())
        return self._known

    def _lookup(self, values: pa.Array) -> U64:
        """Id of each value already in the table (0: not yet), by one C++ hash lookup (``index_in``)."""
        ids = np.zeros(len(values), dtype=np.uint64)
        if not self.count:
            return ids
        known = self.values()
        if known.type != values.type:
            known = known.cast(values.type)
        if len(known) > 4 * len(values):
            return self._lookup_known(values, known)
        pos = pc.index_in(values, value_set=known).to_numpy(zero_copy_only=False)
        # Unknown entries (and null ones, read as "" by the caller) come back null: NaN here.
        found = ~np.isnan(pos) if pos.dtype.kind == "f" else np.ones(len(pos), dtype=bool)
        ids[found] = pos[found].astype(np.uint64) + np.uint64(1)
        return ids

    @staticmethod
    def _lookup_known(values: pa.Array, known: pa.Array) -> U64:
        """:meth:`_lookup` when the table is much larger than ``values`` (a small dictionary after
        a thread group's many names): ``index_in`` builds its hash table of the value set, so the
        known values are looked up among the distinct ``values`` instead of the other way round."""
        encoded = pc.dictionary_encode(values)  # (the distinct values: each is found at most once)
        distinct = encoded.dictionary
        hit = pc.index_in(known, value_set=distinct).to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(~np.isnan(hit)) if hit.dtype.kind == "f" else np.arange(len(hit))
        by_distinct = np.zeros(len(distinct) + 1, dtype=np.uint64)  # last slot: null values
        by_distinct[hit[rows].astype(np.intp)] = rows.astype(np.uint64) + np.uint64(1)
        indices = encoded.indices
        if indices.null_count:
            indices = indices.fill_null(len(distinct))
        out: U64 = by_distinct[indices.to_numpy(zero_copy_only=False).astype(np.intp)]
        return out

    def map_chunks(self, chunks: Sequence[pa.DictionaryArray]) -> U64:
        """:meth:`map` of the chunks' rows one after the other, in one pass when the chunks share a
        dictionary (the slices of one Flight batch, or a server resending its dictionary)."""
        if len(chunks) == 1:
            return self.map(chunks[0])
        if not chunks:
            return np.zeros(0, dtype=np.uint64)
        dictionary = chunks[0].dictionary
        index_type = chunks[0].indices.type
        if all(
            c.indices.type == index_type and (c.dictionary is dictionary or c.dictionary.equals(dictionary))
            for c in chunks[1:]
        ):
            indices = pa.concat_arrays([c.indices for c in chunks])
            return self.map(pa.DictionaryArray.from_arrays(indices, dictionary))
        return np.concatenate([self.map(c) for c in chunks])

    def map(self, col: pa.DictionaryArray) -> U64:
        """The id of each row's value; unknown values are added in order of first appearance in the
        rows (not dictionary order), so a plain column and any dictionary encoding of it agree."""
        dictionary = col.dictionary
        k = len(dictionary)
        last = self._dictionary
        cached = last is not None and (last is dictionary or last.equals(dictionary))
        if cached:
            ids = self._cached
        else:
            ids = np.zeros(k + 1, dtype=np.uint64)  # slot k: null rows, read as ""
            ids[:k] = self._lookup(dictionary)
            self._dictionary, self._cached = dictionary, ids
        if ids[k] == 0:
            ids[k] = self._empty_id
        indices = col.indices
        if indices.null_count:
            indices = indices.fill_null(k)
        # As intp: numpy gathers with int32 indices through its slow general path (~1.6x the time).
        idx = indices.to_numpy(zero_copy_only=False).astype(np.intp, copy=False)
        out_known: U64 = ids[idx]
        if bool(out_known.all()):
            return out_known  # every row's value already has an id: no scan for new ones
        # The unknown slots in order of first use: only their values are read (a dictionary may hold
        # far more). A cached dictionary's slots are looked up again (a slot may repeat a value added
        # since); a fresh lookup's misses are new (the lookup builds a hash table of every known
        # value, the larger part of this function's cost).
        first = _first_use(idx, k + 1)
        used = np.flatnonzero(first < len(idx))
        slots = used[ids[used] == 0]
        if len(slots):
            slots = slots[np.argsort(first[slots], kind="stable")]
            # Slot k (null rows) and null dictionary entries read as "".
            if first[k] == len(idx):  # (no null row)
                at = pa.array(slots, type=pa.int64())
            else:
                at = pa.array(np.where(slots < k, slots, -1), type=pa.int64(), mask=slots == k)
            taken = dictionary.take(at)
            if taken.type != pa.string():
                taken = taken.cast(pa.string())
            values = taken.fill_null("") if taken.null_count else taken
            if cached:
                found = self._lookup(values)
            else:
                found = np.zeros(len(values), dtype=np.uint64)
                # A fresh lookup found every known value but the null entries, which read as "".
                if self._empty_id and taken.null_count:
                    found[pc.is_null(taken).to_numpy(zero_copy_only=False)] = self._empty_id
            new = np.flatnonzero(found == 0)
            if len(new):
                fresh = values if len(new) == len(values) else values.take(pa.array(new, type=pa.int64()))
                encoded = pc.dictionary_encode(fresh)
                added = encoded.dictionary
                found[new] = encoded.indices.to_numpy(zero_copy_only=False).astype(np.uint64) + np.uint64(
                    self.count + 1
                )
                self._add(added)
            ids[slots] = found
        out: U64 = ids[idx]
        return out

    def _add(self, added: pa.Array) -> None:
        first_id = self.count + 1
        if not self._empty_id:
            at = _index_of_empty(added)
            if at >= 0:
                self._empty_id = first_id + at
        self._chunks.append(added)
        self._known = None
        self.count += len(added)
        if self._on_new is not None:
            self._on_new(added, first_id)


class Interner:
    """The three interning tables of the trace's one sequence."""

    def __init__(self) -> None:
        self._names = _Table(lambda v, first: self._entries(_NAMES, v, first))
        self._categories = _Table(lambda v, first: self._entries(_CATEGORIES, v, first))
        self._files = _Table()  # file ids start at 1 (0 marks "not looked up")
        self._location_count = 0
        #: The keys of the locations sorted, and their iids (for the vectorised lookup).
        self._loc_keys: U64 = np.zeros(0, dtype=np.uint64)
        self._loc_iids: U64 = np.zeros(0, dtype=np.uint64)
        #: Encoded InternedData entries not yet taken, in the order they were added: (table, first
        #: iid, blob, each entry's end offset), a blob holding entries of consecutive iids.
        self._new: list[tuple[int, int, bytes, I64]] = []
        #: New entries not encoded yet, after those of ``_new``: (table, first iid, values, lines);
        #: encoded all at once when packets are taken.
        self._raw: list[tuple[int, int, pa.Array, U64 | None]] = []

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "event_names": self._names.count,
            "event_categories": self._categories.count,
            "source_locations": self._location_count,
        }

    def names(self, col: pa.DictionaryArray) -> U64:
        """Name iid of each row of a dictionary-encoded string column."""
        return self._names.map(col)

    def categories(self, col: pa.DictionaryArray) -> U64:
        """Category iid of each row of a dictionary-encoded string column."""
        return self._categories.map(col)

    def names_of_chunks(self, chunks: Sequence[pa.DictionaryArray]) -> U64:
        """:meth:`names` of the chunks' rows one after the other."""
        return self._names.map_chunks(chunks)

    def categories_of_chunks(self, chunks: Sequence[pa.DictionaryArray]) -> U64:
        """:meth:`categories` of the chunks' rows one after the other."""
        return self._categories.map_chunks(chunks)

    def locations(self, files: pa.DictionaryArray, lines: npt.NDArray[np.int64]) -> U64:
        """Source-location iid of each row, keyed by (file name, line)."""
        return self._locations(self._files.map(files), lines)

    def locations_of_chunks(self, files: Sequence[pa.DictionaryArray], lines: npt.NDArray[np.int64]) -> U64:
        """:meth:`locations` of the chunks' rows one after the other (``lines``: of all rows)."""
        return self._locations(self._files.map_chunks(files), lines)

    def _locations(self, file_ids: U64, lines: npt.NDArray[np.int64]) -> U64:
        line = np.clip(lines, 0, 0xFFFFFFFF).astype(np.uint64)
        uniques, inverse = _distinct(file_ids, line)
        # Known keys by one sorted search; new keys numbered in order of first use.
        at = np.searchsorted(self._loc_keys, uniques)
        at_ok = np.minimum(at, max(len(self._loc_keys) - 1, 0))
        found = (
            (at < len(self._loc_keys)) & (self._loc_keys[at_ok] == uniques) if len(self._loc_keys) else None
        )
        iids = self._loc_iids[at_ok] if found is not None else np.zeros(len(uniques), dtype=np.uint64)
        new = np.flatnonzero(~found) if found is not None else np.arange(len(uniques))
        if len(new):
            new_keys = uniques[new]
            first_iid = self._location_count + 1
            new_iids = np.arange(first_iid, first_iid + len(new), dtype=np.uint64)
            self._location_count += len(new)
            iids[new] = new_iids
            names = self._files.values().take(pa.array((new_keys >> np.uint64(32)).astype(np.int64) - 1))
            self._raw.append((_LOCATIONS, first_iid, names, new_keys & np.uint64(0xFFFFFFFF)))
            keys_all = np.concatenate((self._loc_keys, new_keys))
            iids_all = np.concatenate((self._loc_iids, new_iids))
            order = np.argsort(keys_all, kind="stable")
            self._loc_keys, self._loc_iids = keys_all[order], iids_all[order]
        out: U64 = iids[inverse]
        return out

    def take_packets(self, below: tuple[int, int, int] | None = None) -> list[bytes]:
        """Framed InternedData packets for the entries added since the last call, in the order they
        were added; with ``below``, only those whose iid is below its table's bound (name, category,
        location), the others kept for a later call."""
        if self._raw:
            runs = [
                (_FIELDS[table], np.arange(first, first + len(values), dtype=np.uint64), values, lines)
                for table, first, values, lines in self._raw
            ]
            for (table, first, _, _), (blob, ends) in zip(self._raw, _entry_runs(runs), strict=True):
                self._new.append((table, first, blob, ends))
            self._raw = []
        blobs: list[bytes] = []
        ends_list: list[I64] = []
        kept: list[tuple[int, int, bytes, I64]] = []
        for table, first, blob, ends in self._new:
            count = len(ends) if below is None else min(len(ends), max(below[table] - first, 0))
            cut = int(ends[count - 1]) if count else 0
            if count < len(ends):
                kept.append((table, first + count, blob[cut:], ends[count:] - cut))
            if count:
                blobs.append(blob[:cut])
                ends_list.append(ends[:count])
        self._new = kept
        if not blobs:
            return []
        blob = b"".join(blobs)
        base = np.cumsum([0] + [len(b) for b in blobs[:-1]])
        all_ends = np.concatenate([e + off for e, off in zip(ends_list, base.tolist(), strict=True)])
        view = memoryview(blob)
        packets = []
        start = 0
        for last in range(
            _ENTRIES_PER_PACKET - 1, len(all_ends) + _ENTRIES_PER_PACKET - 1, _ENTRIES_PER_PACKET
        ):
            end = int(all_ends[min(last, len(all_ends) - 1)])
            interned = view[start:end].tobytes()
            body = field_varint(10, 1) + field_varint(13, 2) + field_bytes(12, interned)
            packets.append(field_bytes(1, body))
            start = end
        return packets

    def _entries(self, table: int, values: pa.Array, first_id: int) -> None:
        self._raw.append((table, first_id, values, None))


#: The tables, in the order their new entries are written, and their InternedData fields.
_NAMES, _CATEGORIES, _LOCATIONS = 0, 1, 2
_FIELDS = (2, 1, 4)
