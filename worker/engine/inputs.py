"""Input columns: check the Arrow types once per batch and turn columns into numpy arrays.

Accepted: times as ``timestamp`` (any unit and zone) or integer nanoseconds; strings as utf8 /
large_utf8 / utf8_view or dictionaries of those with any integer key width; integers of any width.
Nulls: strings become "", ``line`` and ``depth`` become 0, times are handled by the callers.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from worker.errors import BadSourceData

__all__ = ["check_string_column", "column", "int_column", "string_column", "time_column"]

I64 = npt.NDArray[np.int64]


def column(batch: pa.RecordBatch, name: str, what: str) -> pa.Array:
    """The column ``name`` of ``batch``; BadSourceData naming the missing column otherwise."""
    index = batch.schema.get_field_index(name)
    if index < 0:
        have = ", ".join(batch.schema.names)
        raise BadSourceData(f"{what} batch has no column {name!r} (columns: {have})")
    return batch.column(index)


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t))


def check_string_column(batch: pa.RecordBatch, name: str, what: str) -> pa.Array:
    """The column ``name`` if it holds strings (plain or dictionary-encoded); BadSourceData otherwise.
    (:func:`string_column` without encoding plain strings, for checks ahead of the work.)"""
    col = column(batch, name, what)
    t = col.type
    if pa.types.is_dictionary(t):
        if not _is_string(t.value_type) or not pa.types.is_integer(t.index_type):
            raise BadSourceData(f"{what} column {name!r} must be strings, got {t}")
    elif not _is_string(t):
        raise BadSourceData(f"{what} column {name!r} must be strings, got {t}")
    return col


def string_column(batch: pa.RecordBatch, name: str, what: str) -> pa.DictionaryArray:
    """A string column as a dictionary array (plain strings are dictionary-encoded here)."""
    col = check_string_column(batch, name, what)
    t = col.type
    if pa.types.is_dictionary(t):
        return col
    if pa.types.is_string_view(t):
        col = col.cast(pa.string())
    return pc.dictionary_encode(col)


def time_column(batch: pa.RecordBatch, name: str, what: str, null_value: int) -> tuple[I64, int]:
    """Epoch nanoseconds as int64 (nulls replaced by ``null_value``) and the number of nulls."""
    col = column(batch, name, what)
    t = col.type
    if pa.types.is_timestamp(t):
        if t.unit != "ns":
            try:
                col = col.cast(pa.timestamp("ns", t.tz))
            except pa.ArrowInvalid as exc:  # beyond the int64 nanosecond range
                raise BadSourceData(f"{what} column {name!r}: {str(exc).splitlines()[0][:300]}") from None
        col = col.view(pa.int64())
    elif pa.types.is_integer(t):
        if t != pa.int64():
            col = col.cast(pa.int64())
    else:
        raise BadSourceData(f"{what} column {name!r} must be a timestamp or int64 nanoseconds, got {t}")
    nulls = col.null_count
    if nulls:
        col = col.fill_null(null_value)
    return col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), nulls


def int_column(
    batch: pa.RecordBatch, name: str, what: str, *, optional: bool = False
) -> npt.NDArray[np.int64] | None:
    """An integer column as int64 with nulls as 0 (None if ``optional`` and absent)."""
    if optional and batch.schema.get_field_index(name) < 0:
        return None
    col = column(batch, name, what)
    if not pa.types.is_integer(col.type):
        raise BadSourceData(f"{what} column {name!r} must be integers, got {col.type}")
    if col.null_count:
        col = col.fill_null(0)
    arr = col.to_numpy(zero_copy_only=False)
    if arr.dtype == np.uint64:
        # Values above 2**63 cannot be depths, lines or span ids; keep the bits, as upstream does.
        out: npt.NDArray[np.int64] = arr.view(np.int64)
    else:
        out = arr.astype(np.int64, copy=False)
    return out
