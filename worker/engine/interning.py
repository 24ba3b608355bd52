"""Interned names, categories and source locations: strings to iids, column at a time.

Python work happens once per *distinct* value in a batch (its dictionary), never per row: dictionary
indices are mapped to iids with one numpy gather. Iids start at 1 and are never reused (the trace
has one sequence and one incremental-state generation). New entries are collected and written as
InternedData packets that the encoder places before the first event using them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from worker.engine.wire import field_bytes, field_varint

__all__ = ["Interner"]

U64 = npt.NDArray[np.uint64]
#: Interned entries per InternedData packet, so one packet stays well under a chunk.
_ENTRIES_PER_PACKET = 2048


class Interner:
    """The three interning tables of the trace's one sequence."""

    def __init__(self) -> None:
        self._names: dict[str, int] = {}
        self._categories: dict[str, int] = {}
        self._files: dict[str, int] = {}
        self._file_names: list[str] = []
        self._locations: dict[int, int] = {}
        self._new: list[bytes] = []  # encoded InternedData entries (field + message)

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "event_names": len(self._names),
            "event_categories": len(self._categories),
            "source_locations": len(self._locations),
        }

    def names(self, col: pa.DictionaryArray) -> U64:
        """Name iid of each row of a dictionary-encoded string column."""
        return self._map(col, self._names, 2)

    def categories(self, col: pa.DictionaryArray) -> U64:
        """Category iid of each row of a dictionary-encoded string column."""
        return self._map(col, self._categories, 1)

    def locations(self, files: pa.DictionaryArray, lines: npt.NDArray[np.int64]) -> U64:
        """Source-location iid of each row, keyed by (file name, line)."""
        file_ids = self._file_ids(files)
        line = np.clip(lines, 0, 0xFFFFFFFF).astype(np.uint64)
        keys = (file_ids << np.uint64(32)) | line
        encoded = pc.dictionary_encode(pa.array(keys, type=pa.uint64()))
        uniques = encoded.dictionary.to_numpy()
        iids = np.empty(len(uniques), dtype=np.uint64)
        for i, key in enumerate(uniques.tolist()):
            iid = self._locations.get(key)
            if iid is None:
                iid = len(self._locations) + 1
                self._locations[key] = iid
                name = self._file_names[key >> 32]
                entry = field_varint(1, iid) + field_bytes(2, name) + field_varint(4, key & 0xFFFFFFFF)
                self._new.append(field_bytes(4, entry))
            iids[i] = iid
        out: U64 = iids[encoded.indices.to_numpy(zero_copy_only=False)]
        return out

    def take_packets(self) -> list[bytes]:
        """Framed InternedData packets for the entries added since the last call."""
        packets = []
        for start in range(0, len(self._new), _ENTRIES_PER_PACKET):
            interned = b"".join(self._new[start : start + _ENTRIES_PER_PACKET])
            body = field_varint(10, 1) + field_varint(13, 2) + field_bytes(12, interned)
            packets.append(field_bytes(1, body))
        self._new = []
        return packets

    def _map(self, col: pa.DictionaryArray, table: dict[str, int], field: int) -> U64:
        def add(value: str) -> int:
            iid = len(table) + 1
            table[value] = iid
            self._new.append(field_bytes(field, field_varint(1, iid) + field_bytes(2, value)))
            return iid

        return _dictionary_ids(col, table, add)

    def _file_ids(self, col: pa.DictionaryArray) -> U64:
        def add(value: str) -> int:
            self._file_names.append(value)
            self._files[value] = len(self._file_names) - 1
            return len(self._file_names) - 1

        return _dictionary_ids(col, self._files, add)


def _dictionary_ids(col: pa.DictionaryArray, table: dict[str, int], add: Callable[[str], int]) -> U64:
    """Map each row of a dictionary column to its id in ``table``, adding unknown values with ``add``.

    Unknown values are added in order of first appearance in the rows, not dictionary order, so a
    plain column and any dictionary encoding of it give the same ids.
    """
    values = [v if v is not None else "" for v in col.dictionary.to_pylist()]
    indices = col.indices
    if indices.null_count:
        indices = indices.fill_null(len(values))
        values.append("")
    idx = indices.to_numpy(zero_copy_only=False)
    ids = np.zeros(len(values), dtype=np.uint64)
    if not len(idx):
        return np.zeros(0, dtype=np.uint64)
    used = np.zeros(len(values), dtype=bool)
    used[idx] = True
    missing = []
    for i in np.flatnonzero(used).tolist():
        known = table.get(values[i])
        if known is None:
            missing.append(i)
        else:
            ids[i] = known
    if missing:
        is_new = np.zeros(len(values), dtype=bool)
        is_new[missing] = True
        rows = idx[is_new[idx]]
        uniq, first = np.unique(rows, return_index=True)
        for i in uniq[np.argsort(first, kind="stable")].tolist():
            known = table.get(values[i])
            ids[i] = known if known is not None else add(values[i])
    out: U64 = ids[idx]
    return out
