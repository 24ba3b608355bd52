"""Checks that batches from the service have the columns and types the engine reads.

Accepted spellings follow Micromegas's version drift: strings plain (utf8 / large_utf8 /
utf8_view) or dictionary-encoded with any integer key width; times as timestamps of any unit (cast
to nanoseconds, UTC); integers of any width. Anything else is :class:`BadSourceData`. The type check
looks at the schema only, once per distinct schema. The values are then validated in full (UTF-8 of
every string and dictionary value, dictionary indices in range) and times cast to nanoseconds, which
fails on overflow: bad values are :class:`BadSourceData` (permanent), never an internal error later.
That part is linear in the batch, in C++; the source runs it in its reader threads, off the event
loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

import pyarrow as pa
import pyarrow.types as pat

from worker.errors import BadSourceData

__all__ = [
    "ASYNC_EVENT_KINDS",
    "PROCESS_KINDS",
    "PROCESS_LIST_KINDS",
    "PROCESS_SPAN_KINDS",
    "PROCESS_STREAM_KINDS",
    "THREAD_KINDS",
    "THREAD_SPAN_KINDS",
    "BatchChecker",
    "Kind",
]


class Kind(Enum):
    """What a column holds, whatever its exact Arrow type."""

    TIME = "timestamp"
    STRING = "string"
    #: A string or UTF-8 bytes (metadata read into Python, e.g. JSONB property values).
    TEXT = "string or binary"
    INTEGER = "integer"
    #: A float or an integer (measure values).
    NUMBER = "number"
    BOOLEAN = "boolean"


THREAD_SPAN_KINDS: Mapping[str, Kind] = {
    "begin": Kind.TIME,
    "end": Kind.TIME,
    "name": Kind.STRING,
    "target": Kind.STRING,
    "filename": Kind.STRING,
    "line": Kind.INTEGER,
    "depth": Kind.INTEGER,
}
PROCESS_SPAN_KINDS: Mapping[str, Kind] = {"stream_id": Kind.STRING, **THREAD_SPAN_KINDS}
ASYNC_EVENT_KINDS: Mapping[str, Kind] = {
    "stream_id": Kind.STRING,
    "time": Kind.TIME,
    "event_type": Kind.STRING,
    "span_id": Kind.INTEGER,
    "parent_span_id": Kind.INTEGER,
    "depth": Kind.INTEGER,
    "name": Kind.STRING,
    "target": Kind.STRING,
    "filename": Kind.STRING,
    "line": Kind.INTEGER,
}
PROCESS_KINDS: Mapping[str, Kind] = {
    "process_id": Kind.TEXT,
    "exe": Kind.TEXT,
    "first_time": Kind.TIME,
    "last_time": Kind.TIME,
}
PROCESS_LIST_KINDS: Mapping[str, Kind] = {
    "process_id": Kind.TEXT,
    "exe": Kind.TEXT,
    "start_time": Kind.TIME,
    "last_time": Kind.TIME,
}
PROCESS_STREAM_KINDS: Mapping[str, Kind] = {
    **PROCESS_KINDS,
    "stream_id": Kind.TEXT,
    "cpu": Kind.BOOLEAN,
    "thread_name": Kind.TEXT,
    "thread_id": Kind.TEXT,
}
THREAD_KINDS: Mapping[str, Kind] = {
    "stream_id": Kind.TEXT,
    "thread_name": Kind.TEXT,
    "thread_id": Kind.TEXT,
}

_NS_UTC = pa.timestamp("ns", tz="+00:00")


def _is_string(t: pa.DataType) -> bool:
    return bool(pat.is_string(t) or pat.is_large_string(t) or pat.is_string_view(t))


def _matches(t: pa.DataType, kind: Kind) -> bool:
    if kind is Kind.TIME:
        return bool(pat.is_timestamp(t))
    if kind is Kind.INTEGER:
        return bool(pat.is_integer(t))
    if kind is Kind.NUMBER:
        return bool(pat.is_integer(t) or pat.is_floating(t))
    if kind is Kind.BOOLEAN:
        return bool(pat.is_boolean(t))
    if kind is Kind.TEXT:
        if pat.is_dictionary(t):
            t = t.value_type
        return _is_string(t) or bool(pat.is_binary(t) or pat.is_large_binary(t))
    if pat.is_dictionary(t):
        return bool(pat.is_integer(t.index_type)) and _is_string(t.value_type)
    return _is_string(t)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


class BatchChecker:
    """Validates (and where needed normalises) batches of one query's result.

    Args:
        what: The query's name, for error messages.
        kinds: The columns the engine reads and what each must hold.
    """

    def __init__(self, what: str, kinds: Mapping[str, Kind]) -> None:
        self._what = what
        self._kinds = kinds
        #: The last schema checked and the casts it needs, as one value: the source calls a checker
        #: from several reader threads at once.
        self._checked: tuple[pa.Schema, dict[int, pa.DataType]] | None = None

    def __call__(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The batch, with timestamps in nanoseconds UTC.

        Raises:
            BadSourceData: a column is missing or has a type the engine cannot read.
        """
        checked = self._checked
        if checked is None or not batch.schema.equals(checked[0]):
            checked = self._checked = (batch.schema, self._inspect(batch.schema))
        casts = checked[1]
        try:
            batch.validate(full=True)
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise BadSourceData(f"{self._what}: invalid values ({_short(exc)})") from None
        if not casts:
            return batch
        columns = list(batch.columns)
        for index, target in casts.items():
            try:
                columns[index] = columns[index].cast(target)
            except pa.ArrowInvalid as exc:  # e.g. timestamp[s] beyond the int64 nanosecond range
                name = batch.schema.names[index]
                raise BadSourceData(f"{self._what}: column {name!r}: {_short(exc)}") from None
        return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)

    def _inspect(self, schema: pa.Schema) -> dict[int, pa.DataType]:
        casts: dict[int, pa.DataType] = {}
        for name, kind in self._kinds.items():
            index = schema.get_field_index(name)
            if index < 0:
                raise BadSourceData(f"{self._what}: column {name!r} is missing (got {schema.names})")
            t = schema.field(index).type
            if not _matches(t, kind):
                raise BadSourceData(f"{self._what}: column {name!r} should be a {kind.value}, not {t}")
            if kind is Kind.TIME and t != _NS_UTC:
                casts[index] = _NS_UTC
        return casts
