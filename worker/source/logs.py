"""Queries and column checks for a process's log entries and measures (micromegas.md §3.5).

Both views are process-wide (``view_instance('log_entries' | 'measures', '<process_id>')``), read
with the same ``query_range_*`` headers as the spans and filtered exactly in SQL on ``time``
(``[begin, end]``, both ends included), in time order. Only the columns the engine reads are asked for.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.model import TimeRange
from worker.source.columns import Kind
from worker.source.queries import timestamp_literal, uuid_literal

__all__ = [
    "LOG_ENTRY_COLUMNS",
    "LOG_ENTRY_KINDS",
    "MEASURE_COLUMNS",
    "MEASURE_KINDS",
    "log_entries_sql",
    "measures_sql",
]

#: Columns of ``log_entries`` the engine reads.
LOG_ENTRY_COLUMNS: tuple[str, ...] = ("stream_id", "time", "level", "target", "msg")
#: Columns of ``measures`` the engine reads.
MEASURE_COLUMNS: tuple[str, ...] = ("time", "target", "name", "unit", "value")

LOG_ENTRY_KINDS: Mapping[str, Kind] = {
    "stream_id": Kind.STRING,
    "time": Kind.TIME,
    "level": Kind.INTEGER,
    "target": Kind.STRING,
    "msg": Kind.TEXT,
}
MEASURE_KINDS: Mapping[str, Kind] = {
    "time": Kind.TIME,
    "target": Kind.STRING,
    "name": Kind.STRING,
    "unit": Kind.STRING,
    "value": Kind.NUMBER,
}


def _view_sql(view: str, columns: tuple[str, ...], process_id: str, time_range: TimeRange) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    return (
        f"SELECT {names} "
        f"FROM view_instance('{view}', {uuid_literal(process_id, 'process_id')}) "
        f'WHERE "time" >= {timestamp_literal(time_range.begin_ns)} '
        f'AND "time" <= {timestamp_literal(time_range.end_ns)} '
        'ORDER BY "time"'
    )


def log_entries_sql(process_id: str, time_range: TimeRange) -> str:
    """The process's log entries with ``time`` inside the range, in time order."""
    return _view_sql("log_entries", LOG_ENTRY_COLUMNS, process_id, time_range)


def measures_sql(process_id: str, time_range: TimeRange) -> str:
    """The process's measures with ``time`` inside the range, in time order."""
    return _view_sql("measures", MEASURE_COLUMNS, process_id, time_range)
