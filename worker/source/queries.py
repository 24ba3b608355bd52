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
    "LOG_LEVELS",
    "MAX_SEARCH",
    "THREAD_SPAN_COLUMNS",
    "async_events_sql",
    "async_lookback_sql",
    "async_span_count_sql",
    "canonical_uuid",
    "header_time",
    "log_entries_sql",
    "log_entry_count_sql",
    "process_spans_sql",
    "process_sql",
    "process_streams_sql",
    "processes_sql",
    "rfc3339",
    "search_literal",
    "sql_string",
    "thread_span_count_sql",
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


#: The per-thread size the thread list carries (dropped for a server whose ``blocks`` lacks it).
_SIZES = ", sum(nb_objects) AS nb_objects"


def process_streams_sql(process_id: str, *, sizes: bool = True) -> str:
    """The process query and the thread list in one: one row per stream of the process, with the
    process's columns, the stream's first/last block times, whether it is a thread (tagged 'cpu'),
    its thread name and id and (``sizes``) its objects (``nb_objects``, summed), ordered by stream id.

    Without range headers, as the process query: it stands for the thread list of a trace of the
    process's whole life, whose range keeps every block (a block begins before the last block ends
    and is inserted after the first begins), so the same threads come back."""
    return (
        'SELECT process_id, stream_id, "processes.exe" AS exe, "processes.username" AS username, '
        '"processes.realname" AS realname, "processes.computer" AS computer, '
        '"processes.distro" AS distro, "processes.cpu_brand" AS cpu_brand, '
        '"processes.start_time" AS start_time, '
        "min(begin_time) AS first_time, max(end_time) AS last_time, "
        "array_has(\"streams.tags\", 'cpu') AS cpu, "
        "property_get(\"streams.properties\", 'thread-name') AS thread_name, "
        "property_get(\"streams.properties\", 'thread-id') AS thread_id"
        f"{_SIZES if sizes else ''} "
        f"FROM blocks WHERE process_id = {uuid_literal(process_id, 'process_id')} "
        'GROUP BY process_id, stream_id, "processes.exe", "processes.username", "processes.realname", '
        '"processes.computer", "processes.distro", "processes.cpu_brand", "processes.start_time", '
        "cpu, thread_name, thread_id ORDER BY stream_id"
    )


def threads_sql(process_id: str, *, sizes: bool = True) -> str:
    """The process's thread streams (tagged 'cpu') with name, id and (``sizes``) the objects their
    blocks hold (``nb_objects``, summed: the size of each thread before any span query), ordered by
    stream id."""
    return (
        "SELECT stream_id, "
        "property_get(\"streams.properties\", 'thread-name') AS thread_name, "
        "property_get(\"streams.properties\", 'thread-id') AS thread_id"
        f"{_SIZES if sizes else ''} "
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


def process_spans_sql(process_id: str, time_range: TimeRange) -> str:
    """Every thread's spans overlapping the range in one result (Micromegas's ``process_spans`` table
    function), each row with its ``stream_id``. Upstream sends thread after thread (ordered by stream
    id), each in ``begin`` order, but declares no order: no ``ORDER BY``, so the server does not
    sort; the source groups the rows by thread itself."""
    return (
        f'SELECT "stream_id", {_columns(THREAD_SPAN_COLUMNS)} '
        f"FROM process_spans({uuid_literal(process_id, 'process_id')}, 'thread') "
        f'WHERE "begin" <= {timestamp_literal(time_range.end_ns)} '
        f'AND "end" >= {timestamp_literal(time_range.begin_ns)}'
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


def processes_sql(limit: int, *, search: str | None = None, offset: int = 0) -> str:
    """The most recently started processes, newest first.

    Args:
        limit: rows wanted, 1-100000.
        search: keep processes whose id or exe contains this text (case-insensitive).
        offset: rows skipped first, 0-1000000 (paging).

    Raises:
        InvalidRequest: a bad limit, offset or search text.
    """
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 100_000:
        raise InvalidRequest(f"limit must be an integer from 1 to 100000: {limit!r}")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= 1_000_000:
        raise InvalidRequest(f"offset must be an integer from 0 to 1000000: {offset!r}")
    where = ""
    if search:
        text = search_literal(search)
        where = f"WHERE strpos(lower(process_id), {text}) > 0 OR strpos(lower(exe), {text}) > 0 "
    return (
        "SELECT process_id, exe, username, computer, start_time, "
        "last_block_end_time AS last_time "
        f"FROM processes {where}ORDER BY start_time DESC LIMIT {limit}"
        + (f" OFFSET {offset}" if offset else "")
    )


#: Longest search text accepted (a search box, not a document).
MAX_SEARCH = 200


def search_literal(text: str) -> str:
    """A search text as a lower-case SQL string literal (matched with ``strpos``, so ``%`` and ``_``
    are plain characters).

    Raises:
        InvalidRequest: longer than :data:`MAX_SEARCH` characters or holding control characters.
    """
    if len(text) > MAX_SEARCH or any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise InvalidRequest(f"search must be at most {MAX_SEARCH} printable characters")
    return sql_string(text.lower())


def thread_span_count_sql(stream_id: str) -> str:
    """How many rows ``thread_spans`` holds for one thread (within the range headers)."""
    return f"SELECT count(*) AS n FROM view_instance('thread_spans', {uuid_literal(stream_id, 'stream_id')})"


def async_span_count_sql(process_id: str) -> str:
    """How many async spans begin in the process (``begin`` events, within the range headers)."""
    return (
        f"SELECT count(*) AS n FROM view_instance('async_events', {uuid_literal(process_id, 'process_id')}) "
        "WHERE event_type = 'begin'"
    )


def log_entry_count_sql(process_id: str) -> str:
    """How many log entries the process has (within the range headers)."""
    return f"SELECT count(*) AS n FROM view_instance('log_entries', {uuid_literal(process_id, 'process_id')})"


#: Log levels of ``log_entries.level``: 1 fatal ... 6 trace.
LOG_LEVELS = ("fatal", "error", "warn", "info", "debug", "trace")


def log_entries_sql(
    process_id: str, time_range: TimeRange, *, max_level: int = 6, search: str | None = None, limit: int = 100
) -> str:
    """The process's log entries in the range, newest first.

    Args:
        max_level: keep entries with ``level <= max_level`` (1 fatal ... 6 trace).
        search: keep entries whose message contains this text (case-insensitive).
        limit: rows wanted, 1-10000.

    Raises:
        InvalidRequest: a bad level, limit or search text.
    """
    if not isinstance(max_level, int) or isinstance(max_level, bool) or not 1 <= max_level <= 6:
        raise InvalidRequest(f"level must be from 1 (fatal) to 6 (trace): {max_level!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        raise InvalidRequest(f"limit must be an integer from 1 to 10000: {limit!r}")
    where = [
        f'"time" >= {timestamp_literal(time_range.begin_ns)}',
        f'"time" <= {timestamp_literal(time_range.end_ns)}',
    ]
    if max_level < 6:
        where.append(f"level <= {max_level}")
    if search:
        where.append(f"strpos(lower(msg), {search_literal(search)}) > 0")
    return (
        'SELECT "time", level, target, msg '
        f"FROM view_instance('log_entries', {uuid_literal(process_id, 'process_id')}) "
        f"WHERE {' AND '.join(where)} "
        f'ORDER BY "time" DESC LIMIT {limit}'
    )
