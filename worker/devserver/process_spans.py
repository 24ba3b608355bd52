"""``process_spans(process_id, span_types)``: every span of a process in one result, as upstream.

Upstream (``rust/analytics/src/lakehouse/process_spans_table_function.rs``) runs its thread-list
query (``get_process_thread_list``: the process's ``cpu`` streams, ``ORDER BY stream_id``), then
``SELECT * FROM view_instance('thread_spans', '<stream_id>')`` per thread under the request's range
headers, and sends each thread's rows in turn, thread after thread in that order, prefixed with two
``Dictionary(Int16, Utf8)`` columns: ``stream_id`` and ``thread_name`` (the display name
``"{thread-name}-{thread-id}"``, the id alone when unnamed, the stream id when there is no id).
With ``'async'`` or ``'both'`` come then the async spans: begin and end events paired on
``span_id`` (an inner join, so spans without both events in the range are left out), kept when
``begin < end``, ordered by ``begin``, with ``stream_id = ''`` and ``thread_name = 'async'``.

Here the thread rows come from the same place as ``view_instance('thread_spans', ...)`` (generated
on the fly or held in memory), and the async pairing does what upstream's SQL does, with Arrow
compute over the process's ``async_events`` rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from worker.devserver.lake import Lake, LakeStream

__all__ = ["SPAN_TYPES", "check_span_types", "display_name", "process_spans", "thread_list", "with_thread"]

#: The second argument's accepted values.
SPAN_TYPES = ("thread", "async", "both")

Rows = Callable[[str], Iterator[pa.RecordBatch]]


def check_span_types(value: object) -> str:
    """The span types argument, or ValueError with upstream's message."""
    if not isinstance(value, str):
        raise ValueError(
            "Second argument to process_spans must be a string ('thread', 'async', or 'both'), "
            f"given {value!r}"
        )
    if value not in SPAN_TYPES:
        raise ValueError(f"span_types must be 'thread', 'async', or 'both', given: {value}")
    return value


def display_name(stream: LakeStream) -> str:
    """Upstream's thread display name (process_streams.rs ``get_process_thread_list``)."""
    name = stream.thread_name or ""
    shown_id = stream.thread_id or stream.stream_id
    return f"{name}-{shown_id}" if name else shown_id


def thread_list(lake: Lake, process_id: str) -> list[tuple[str, str]]:
    """``(stream_id, display name)`` of the process's ``cpu`` streams, ordered by stream id."""
    process = lake.process(process_id)
    if process is None:
        return []
    streams = [s for s in process.streams if "cpu" in s.tags]
    return [(s.stream_id, display_name(s)) for s in sorted(streams, key=lambda s: s.stream_id)]


def _lead(rows: int, stream_id: str, thread_name: str) -> list[pa.Array]:
    zeros = pa.array(np.zeros(rows, dtype=np.int16))
    return [pa.DictionaryArray.from_arrays(zeros, pa.array([v], pa.utf8())) for v in (stream_id, thread_name)]


def _augment(batch: pa.RecordBatch, schema: pa.Schema, stream_id: str, thread_name: str) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays(
        _lead(batch.num_rows, stream_id, thread_name) + batch.columns, schema=schema
    )


def with_thread(spans: pa.Table, schema: pa.Schema, stream_id: str, thread_name: str) -> pa.Table:
    """One thread's ``thread_spans`` rows as ``process_spans`` rows (``schema``): the two columns
    in front (zero-copy for the rest)."""
    return pa.Table.from_arrays(_lead(spans.num_rows, stream_id, thread_name) + spans.columns, schema=schema)


def process_spans(
    lake: Lake,
    process_id: str,
    span_types: str,
    *,
    schema: pa.Schema,
    thread_rows: Rows,
    async_rows: Rows,
) -> Iterator[pa.RecordBatch]:
    """The rows of ``process_spans(process_id, span_types)`` (see the module docstring).

    Args:
        schema: The result schema (``process_spans_schema`` of the server's options).
        thread_rows: A stream's ``thread_spans`` rows under the request's range headers.
        async_rows: The process's ``async_events`` rows under the request's range headers.

    Raises:
        ValueError: ``async_events`` has no ``hash`` (Micromegas before 0.22: upstream's pairing
            fails too).
    """
    if span_types in ("thread", "both"):
        for stream_id, name in thread_list(lake, process_id):
            for batch in thread_rows(stream_id):
                if batch.num_rows:
                    yield _augment(batch, schema, stream_id, name)
    if span_types in ("async", "both"):
        events = list(async_rows(process_id))
        if events:
            spans = _async_spans(pa.Table.from_batches(events), pa.schema(list(schema)[2:]))
            for batch in spans.to_batches():
                yield _augment(batch, schema, "", "async")


def _async_spans(events: pa.Table, spans_schema: pa.Schema) -> pa.Table:
    """Upstream's async pairing with Arrow compute (DataFusion cannot run inside a table function);
    upstream's SQL over ``view_instance('async_events', '<process_id>')`` (here ``ae``)::

        SELECT b.span_id AS id, b.parent_span_id AS parent, b.depth, b.hash,
               b.time AS "begin", e.time AS "end",
               arrow_cast(e.time, 'Int64') - arrow_cast(b.time, 'Int64') AS duration,
               b.name, b.target, b.filename, b.line
        FROM (SELECT * FROM ae WHERE event_type = 'begin') b
        INNER JOIN (SELECT * FROM ae WHERE event_type = 'end') e ON b.span_id = e.span_id
        WHERE b.time < e.time ORDER BY b.time

    Each begin takes the first end of its span id (the lake has at most one)."""
    if "hash" not in events.schema.names:
        raise ValueError("Failed to query async spans: Schema error: No field named b.hash.")
    kind = events["event_type"].cast(pa.utf8())
    begins = events.filter(pc.equal(kind, "begin"))
    ends = events.filter(pc.equal(kind, "end"))
    at = pc.index_in(begins["span_id"], value_set=ends["span_id"])
    end = ends["time"].take(at)
    keep = pc.fill_null(pc.less(begins["time"], end), False)
    begins, end = begins.filter(keep), end.filter(keep)
    begin = begins["time"]
    columns = {
        "id": begins["span_id"],
        "parent": begins["parent_span_id"],
        "depth": begins["depth"],
        "hash": begins["hash"],
        "begin": begin,
        "end": end,
        "duration": pc.subtract(end.cast(pa.int64()), begin.cast(pa.int64())),
        "name": begins["name"],
        "target": begins["target"],
        "filename": begins["filename"],
        "line": begins["line"],
    }
    table = pa.table([columns[f.name].cast(f.type) for f in spans_schema], schema=spans_schema)
    # ORDER BY b.time; ties by span id, so the order never depends on the pairing above.
    return table.take(pc.sort_indices(table, [("begin", "ascending"), ("id", "ascending")]))
