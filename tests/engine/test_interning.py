"""Interning (worker/engine/interning.py): the columnar path writes the same iids and bytes as the
per-value path it replaced, over random dictionaries (non-ASCII, empty strings, nulls, values repeated
within and across batches, plain and dictionary columns), and the packets decode as InternedData."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from worker.engine.interning import Interner
from worker.engine.wire import field_bytes, field_varint
from worker.perfetto_pb import pb

U64 = npt.NDArray[np.uint64]
#: Interned entries per InternedData packet, so one packet stays well under a chunk.
_ENTRIES_PER_PACKET = 2048


class _Table:
    """One string table (value -> id) and the ids of the last dictionary seen.

    Flight resends the same dictionary with every batch, so the cache turns the per-batch Python work
    into one C++ comparison; only values not yet in the table are looked at in Python.
    """

    def __init__(self, add: Callable[[str], int]) -> None:
        self.ids: dict[str, int] = {}
        self._add = add
        self._dictionary: pa.Array | None = None
        self._cached: U64 = np.zeros(1, dtype=np.uint64)
        #: The known values in id order (id = position + 1), rebuilt when values were added.
        self._known: pa.Array | None = None

    def _known_ids(self, dictionary: pa.Array) -> U64:
        """Id of each dictionary entry already in the table (0: not yet), ``k + 1`` slots.

        One hash lookup in C++ (``index_in``): the server's dictionaries change from batch to batch
        (each canonical batch unifies its own), and a Python lookup per entry cost more than the rest
        of the interning."""
        ids = np.zeros(len(dictionary) + 1, dtype=np.uint64)
        if not self.ids:
            return ids
        if self._known is None or len(self._known) != len(self.ids):
            self._known = pa.array(list(self.ids), type=pa.string())
        known = self._known if self._known.type == dictionary.type else self._known.cast(dictionary.type)
        pos = pc.index_in(dictionary, value_set=known).to_numpy(zero_copy_only=False)
        # Unknown entries (and null ones, read as "" by the slow path) come back null: NaN here.
        found = ~np.isnan(pos) if pos.dtype.kind == "f" else np.ones(len(pos), dtype=bool)
        ids[: len(dictionary)][found] = pos[found].astype(np.uint64) + np.uint64(1)
        return ids

    def map(self, col: pa.DictionaryArray) -> U64:
        """The id of each row's value; unknown values are added in order of first appearance in the
        rows (not dictionary order), so a plain column and any dictionary encoding of it agree."""
        dictionary = col.dictionary
        k = len(dictionary)
        last = self._dictionary
        if last is not None and (last is dictionary or last.equals(dictionary)):
            ids = self._cached
        else:
            ids = self._known_ids(dictionary)  # slot k: null rows, read as ""
            if ids[k] == 0 and "" in self.ids:
                ids[k] = self.ids[""]
            self._dictionary, self._cached = dictionary, ids
        indices = col.indices
        if indices.null_count:
            indices = indices.fill_null(k)
        idx = indices.to_numpy(zero_copy_only=False)
        if bool(ids[:k].all()) and (ids[k] or not col.null_count):
            out_known: U64 = ids[idx]  # every value already has an id: no scan for new ones
            return out_known
        used = np.zeros(k + 1, dtype=bool)
        used[idx] = True
        unknown = np.flatnonzero(used & (ids == 0)).tolist()
        if unknown:
            # Only the values rows use are read into Python (a dictionary may hold far more).
            wanted = [i for i in unknown if i != k]
            looked = dictionary.take(pa.array(wanted, type=pa.int64())).to_pylist() if wanted else []
            values = dict(zip(wanted, looked, strict=True))

            def value(i: int) -> str:
                v = values.get(i) if i != k else None
                return v if v is not None else ""

            missing = []
            for i in unknown:
                known = self.ids.get(value(i))
                if known is None:
                    missing.append(i)
                else:
                    ids[i] = known
            if missing:
                is_new = np.zeros(k + 1, dtype=bool)
                is_new[missing] = True
                uniq, first = np.unique(idx[is_new[idx]], return_index=True)
                for i in uniq[np.argsort(first, kind="stable")].tolist():
                    v = value(i)
                    known = self.ids.get(v)
                    if known is None:
                        known = self.ids[v] = self._add(v)
                    ids[i] = known
        out: U64 = ids[idx]
        return out


class ReferenceInterner:
    """The per-value interner this module replaced (commit 2ef3cad), kept as the reference."""

    def __init__(self) -> None:
        self._names = _Table(lambda v: self._entry(2, len(self._names.ids) + 1, v))
        self._categories = _Table(lambda v: self._entry(1, len(self._categories.ids) + 1, v))
        self._file_names: list[str] = [""]  # file ids start at 1 (0 marks "not looked up")
        self._files = _Table(self._file_id)
        self._locations: dict[int, int] = {}
        #: The keys of _locations sorted, and their iids (for the vectorised lookup).
        self._loc_keys: U64 = np.zeros(0, dtype=np.uint64)
        self._loc_iids: U64 = np.zeros(0, dtype=np.uint64)
        self._new: list[bytes] = []  # encoded InternedData entries (field + message)

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "event_names": len(self._names.ids),
            "event_categories": len(self._categories.ids),
            "source_locations": len(self._locations),
        }

    def names(self, col: pa.DictionaryArray) -> U64:
        """Name iid of each row of a dictionary-encoded string column."""
        return self._names.map(col)

    def categories(self, col: pa.DictionaryArray) -> U64:
        """Category iid of each row of a dictionary-encoded string column."""
        return self._categories.map(col)

    def locations(self, files: pa.DictionaryArray, lines: npt.NDArray[np.int64]) -> U64:
        """Source-location iid of each row, keyed by (file name, line)."""
        file_ids = self._files.map(files)
        line = np.clip(lines, 0, 0xFFFFFFFF).astype(np.uint64)
        keys = (file_ids << np.uint64(32)) | line
        encoded = pc.dictionary_encode(pa.array(keys, type=pa.uint64()))
        uniques = encoded.dictionary.to_numpy()
        # Known keys by one sorted search; Python only for keys never seen (in order of first use).
        at = np.searchsorted(self._loc_keys, uniques)
        at_ok = np.minimum(at, max(len(self._loc_keys) - 1, 0))
        found = (
            (at < len(self._loc_keys)) & (self._loc_keys[at_ok] == uniques) if len(self._loc_keys) else None
        )
        iids = self._loc_iids[at_ok] if found is not None else np.zeros(len(uniques), dtype=np.uint64)
        new = np.flatnonzero(~found) if found is not None else np.arange(len(uniques))
        if len(new):
            for i, key in zip(new.tolist(), uniques[new].tolist(), strict=True):
                iid = len(self._locations) + 1
                self._locations[key] = iid
                name = self._file_names[key >> 32]
                entry = field_varint(1, iid) + field_bytes(2, name) + field_varint(4, key & 0xFFFFFFFF)
                self._new.append(field_bytes(4, entry))
                iids[i] = iid
            keys_all = np.concatenate((self._loc_keys, uniques[new]))
            iids_all = np.concatenate((self._loc_iids, iids[new]))
            order = np.argsort(keys_all, kind="stable")
            self._loc_keys, self._loc_iids = keys_all[order], iids_all[order]
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

    def _entry(self, field: int, iid: int, value: str) -> int:
        self._new.append(field_bytes(field, field_varint(1, iid) + field_bytes(2, value)))
        return iid

    def _file_id(self, value: str) -> int:
        self._file_names.append(value)
        return len(self._file_names) - 1


_ALPHABET = ["a", "b", "z", "é", "ß", "日本", "🙂", "/", "::", " ", "\u0000", "x" * 200]


def _value(rng: random.Random, pool: list[str]) -> str | None:
    r = rng.random()
    if r < 0.05:
        return None
    if r < 0.12:
        return ""
    if r < 0.6 and pool:
        return rng.choice(pool)  # seen before: duplicates across batches
    v = "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(1, 4)))
    pool.append(v)
    return v


def _column(rng: random.Random, pool: list[str], rows: int) -> pa.DictionaryArray:
    values = [_value(rng, pool) for _ in range(rows)]
    kind = rng.randrange(4)
    if kind == 0:
        return pc.dictionary_encode(pa.array(values, type=pa.string()))
    if kind == 1:
        return pc.dictionary_encode(pa.array(values, type=pa.large_string()))
    # A dictionary with unused entries, repeated values and null entries, and null indices.
    dictionary = list(dict.fromkeys(values))
    dictionary += [_value(rng, pool) for _ in range(rng.randint(0, 5))]
    if dictionary and rng.random() < 0.5:
        dictionary.append(rng.choice(dictionary))  # the same value at two slots
    rng.shuffle(dictionary)
    pos = {v: i for i, v in enumerate(dictionary)}
    indices = [None if v is None and rng.random() < 0.5 else pos[v] for v in values]
    typ = pa.string() if kind == 2 else pa.large_string()
    return pa.DictionaryArray.from_arrays(pa.array(indices, type=pa.int32()), pa.array(dictionary, type=typ))


@pytest.mark.parametrize("seed", range(60))
def test_columnar_interning_writes_the_same_iids_and_bytes_as_the_per_value_path(seed: int) -> None:
    rng = random.Random(seed)
    new, ref = Interner(), ReferenceInterner()
    names: list[str] = []
    files: list[str] = []
    last: pa.DictionaryArray | None = None
    for _ in range(rng.randint(1, 12)):
        rows = rng.randint(0, 40)
        what = rng.randrange(4)
        if what == 3 and last is not None:
            col = last  # Flight resends the same dictionary (the cached path)
            got, want = new.names(col), ref.names(col)
        elif what == 2:
            col = _column(rng, files, rows)
            lines = np.array([rng.choice([0, 1, 127, 128, 300, 1 << 20, -5, 1 << 40]) for _ in range(rows)])
            got, want = new.locations(col, lines.astype(np.int64)), ref.locations(col, lines.astype(np.int64))
        else:
            col = last = _column(rng, names, rows)
            if what == 0:
                got, want = new.names(col), ref.names(col)
            else:
                got, want = new.categories(col), ref.categories(col)
        assert got.tolist() == want.tolist()
        assert new.sizes == ref.sizes
        if rng.random() < 0.4:
            assert new.take_packets() == ref.take_packets()
    assert new.take_packets() == ref.take_packets()


def test_many_new_values_split_into_packets_of_2048_entries_like_the_per_value_path() -> None:
    values = pa.array([f"n{i}·{'é' * (i % 7)}" for i in range(5000)] + [""], type=pa.string())
    new, ref = Interner(), ReferenceInterner()
    col = pc.dictionary_encode(values)
    assert new.names(col).tolist() == ref.names(col).tolist()
    lines = np.arange(5001, dtype=np.int64) * 1000
    assert new.locations(col, lines).tolist() == ref.locations(col, lines).tolist()
    got = new.take_packets()
    assert got == ref.take_packets()
    assert len(got) == 5  # 10,002 entries


def test_packets_decode_as_interned_data_with_the_values() -> None:
    interner = Interner()
    col = pc.dictionary_encode(pa.array(["", "日本", "a", "日本", None]))
    assert interner.names(col).tolist() == [1, 2, 3, 2, 1]
    assert interner.locations(col, np.array([0, 5, 300, 5, 9], dtype=np.int64)).tolist() == [1, 2, 3, 2, 4]
    trace = pb.Trace.FromString(b"".join(interner.take_packets()))
    data = trace.packet[0].interned_data
    assert [(e.iid, e.name) for e in data.event_names] == [(1, ""), (2, "日本"), (3, "a")]
    assert [(e.iid, e.file_name, e.line_number) for e in data.source_locations] == [
        (1, "", 0),
        (2, "日本", 5),
        (3, "a", 300),
        (4, "", 9),
    ]
