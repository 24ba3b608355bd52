"""SQL text for every query the source sends, one function per query.

Micromegas cannot bind parameters (prepared execution is unimplemented and ``view_instance``
arguments must be literals), so ids are inlined. Only two kinds of value ever reach SQL text, and
both pass through this module: ids that parse as UUIDs, re-spelled in canonical lower-case form by
:func:`uuid_literal`, and times that this module formats itself from integers (:func:`timestamp_literal`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from worker.errors import InvalidRequest
from worker.model import TimeRange

__all__ = [
    "ASYNC_EVENT_COLUMNS",
    "THREAD_SPAN_COLUMNS",
    "async_events_sql",
    "async_lookback_sql",
    "canonical_uuid",
    "header_time",
    "process_sql",
    "processes_sql",
    "rfc3339",
    "sql_string",
    "thread_spans_sql",
    "threads_sql",
    "timestamp_literal",
    "uuid_literal",
]

_NS = 1_000_000_000
_UUID_LEN = 36


def canonical_uuid(value: object, what: str = "id") -> str:
    """The canonical lower-case spelling of a UUID, or :class:`InvalidRequest`.

    Only the 8-4-4-4-12 hex form is accepted (with either case); braces, ``urn:uuid:`` prefixes,
    missing hyphens and anything else are rejected, so the checked text and the inlined text agree.

    Raises:
        InvalidRequest: ``value`` is not a UUID string.
    """
    message = f"{what} must be a UUID like 34d7c06d-3163-4111-863e-c5fc09d22d51: {value!r:.80}"
    if not isinstance(value, str) or len(value) != _UUID_LEN:
        raise InvalidRequest(message)
    try:
        parsed = uuid.UUID(value)
    except ValueError as exc:
        raise InvalidRequest(message) from exc
    text = str(parsed)
    if text != value.lower():
        raise InvalidRequest(f"{what} must be a UUID in the 8-4-4-4-12 form: {value!r:.80}")
    return text


def sql_string(value: str) -> str:
    """A SQL string literal: single quotes doubled. The only place that quotes a string."""
    return "'" + value.replace("'", "''") + "'"


def uuid_literal(value: str, what: str = "id") -> str:
    """A validated UUID as a SQL string literal."""
    return sql_string(canonical_uuid(value, what))


def rfc3339(ns: int) -> str:
    """Epoch nanoseconds as RFC 3339 UTC with all nine fractional digits."""
    seconds, frac = divmod(ns, _NS)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:09d}Z"


def header_time(ns: int, *, round_up: bool) -> str:
    """RFC 3339 with microseconds for the ``query_range_*`` headers, rounded outwards.

    The headers only prune partitions; the exact nanosecond filter is in the SQL. Microseconds are
    the precision every RFC 3339 parser accepts, and rounding outwards never prunes a wanted row.
    """
    micros, rest = divmod(ns, 1000)
    if round_up and rest:
        micros += 1
    seconds, frac = divmod(micros, 1_000_000)
    stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{frac:06d}Z"


def timestamp_literal(ns: int) -> str:
    """A DataFusion ``TIMESTAMP '...'`` literal with nanosecond precision."""
    return f"TIMESTAMP '{rfc3339(int(ns))}'"


def process_sql(process_id: str) -> str:
    """The process's description and its first/last recorded times, from ``blocks``.

    As upstream's ``ProcessQueryBuilder``: ``blocks`` carries the process columns and needs no
    materialised ``processes`` view, so a just-ingested process is found too.
    """
    return (
        'SELECT process_id, "processes.exe" AS exe, "processes.username" AS username, '
        '"processes.realname" AS realname, "processes.computer" AS computer, '
        '"processes.distro" AS distro, "processes.cpu_brand" AS cpu_brand, '
        '"processes.start_time" AS start_time, '
        "min(begin_time) AS first_time, max(end_time) AS last_time "
        f"FROM blocks WHERE process_id = {uuid_literal(process_id, 'process_id')} "
        'GROUP BY process_id, "processes.exe", "processes.username", "processes.realname", '
        '"processes.computer", "processes.distro", "processes.cpu_brand", "processes.start_time"'
    )


def threads_sql(process_id: str) -> str:
    """The process's thread streams (tagged 'cpu') with name and id, ordered by stream id."""
    return (
        "SELECT stream_id, "
        "property_get(\"streams.properties\", 'thread-name') AS thread_name, "
        "property_get(\"streams.properties\", 'thread-id') AS thread_id "
        f"FROM blocks WHERE process_id = {uuid_literal(process_id, 'process_id')} "
        "AND array_has(\"streams.tags\", 'cpu') "
        "GROUP BY stream_id, thread_name, thread_id ORDER BY stream_id"
    )


#: Columns of ``thread_spans`` the engine reads.
THREAD_SPAN_COLUMNS: tuple[str, ...] = ("begin", "end", "name", "target", "filename", "line", "depth")
#: Columns of ``async_events`` the engine reads (no ``hash``: absent before Micromegas v0.22).
ASYNC_EVENT_COLUMNS: tuple[str, ...] = (
    "stream_id",
    "time",
    "event_type",
    "span_id",
    "parent_span_id",
    "depth",
    "name",
    "target",
    "filename",
    "line",
)


def _columns(names: tuple[str, ...]) -> str:
    return ", ".join(f'"{name}"' for name in names)


def thread_spans_sql(stream_id: str, time_range: TimeRange) -> str:
    """One thread's spans overlapping the range (not clipped), in ascending ``begin`` order."""
    return (
        f"SELECT {_columns(THREAD_SPAN_COLUMNS)} "
        f"FROM view_instance('thread_spans', {uuid_literal(stream_id, 'stream_id')}) "
        f'WHERE "begin" <= {timestamp_literal(time_range.end_ns)} '
        f'AND "end" >= {timestamp_literal(time_range.begin_ns)} '
        'ORDER BY "begin"'
    )


def async_events_sql(process_id: str, time_range: TimeRange) -> str:
    """The process's async span events with ``time`` inside the range, in time order."""
    return (
        f"SELECT {_columns(ASYNC_EVENT_COLUMNS)} "
        f"FROM view_instance('async_events', {uuid_literal(process_id, 'process_id')}) "
        f'WHERE "time" >= {timestamp_literal(time_range.begin_ns)} '
        f'AND "time" <= {timestamp_literal(time_range.end_ns)} '
        'ORDER BY "time"'
    )


def async_lookback_sql(process_id: str, begin_ns: int, lookback_ns: int) -> str:
    """The process's async events of the look-back ``[begin_ns - lookback_ns, begin_ns)``, in time
    order. A plain filtered scan (no join for the server to hold in memory); the engine keeps only the
    begins of the spans still open at ``begin_ns``."""
    return (
        f"SELECT {_columns(ASYNC_EVENT_COLUMNS)} "
        f"FROM view_instance('async_events', {uuid_literal(process_id, 'process_id')}) "
        f'WHERE "time" >= {timestamp_literal(begin_ns - lookback_ns)} '
        f'AND "time" < {timestamp_literal(begin_ns)} '
        'ORDER BY "time"'
    )


def processes_sql(limit: int) -> str:
    """The most recently started processes, newest first."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100_000:
        raise InvalidRequest(f"limit must be an integer from 1 to 100000: {limit!r}")
    return (
        "SELECT process_id, exe, username, computer, start_time, "
        "last_block_end_time AS last_time "
        f"FROM processes ORDER BY start_time DESC LIMIT {limit}"
    )
