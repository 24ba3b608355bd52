"""Micromegas's Arrow schemas (names, order and types), with switches to emulate older versions.

Source of truth: the upstream tables described in docs/DEVSERVER.md (``span_table.rs``,
``async_events_table.rs``, ``log_entries_table.rs``, ``blocks_view.rs``, ``processes_view.rs``,
``streams_view.rs``). Dictionary keys are Int32 since Micromegas v0.28 (Int16 before), and
``async_events.hash`` exists from v0.22; :class:`SchemaOptions` selects either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

__all__ = [
    "TS",
    "DictionaryKeys",
    "SchemaOptions",
    "async_events_schema",
    "blocks_schema",
    "log_entries_schema",
    "measures_schema",
    "process_spans_schema",
    "processes_schema",
    "streams_schema",
    "thread_spans_schema",
]

#: Every Micromegas time column: epoch nanoseconds, UTC.
TS = pa.timestamp("ns", tz="+00:00")
#: JSONB property maps (here: UTF-8 JSON text bytes), dictionary-encoded as upstream.
PROPERTIES = pa.dictionary(pa.int32(), pa.binary())

DictionaryKeys = Literal["int32", "int16", "plain"]


@dataclass(frozen=True)
class SchemaOptions:
    """How the view schemas look on this server.

    Attributes:
        dictionary_keys: ``"int32"`` (Micromegas >= 0.28), ``"int16"`` (older) or ``"plain"``
            (string columns as plain utf8, never dictionary-encoded).
        async_hash: whether ``async_events`` has the ``hash`` column (Micromegas >= 0.22).
        process_spans: whether the ``process_spans`` table function exists (False: naming it fails
            to plan, as on a Micromegas without it).
    """

    dictionary_keys: DictionaryKeys = "int32"
    async_hash: bool = True
    process_spans: bool = True

    def string(self) -> pa.DataType:
        """The type of a dictionary-encoded string column of the views."""
        if self.dictionary_keys == "plain":
            return pa.utf8()
        key = pa.int32() if self.dictionary_keys == "int32" else pa.int16()
        return pa.dictionary(key, pa.utf8())


def thread_spans_schema(options: SchemaOptions) -> pa.Schema:
    """``view_instance('thread_spans', stream_id)`` (span_table.rs)."""
    s = options.string()
    return pa.schema(
        [
            ("id", pa.int64()),
            ("parent", pa.int64()),
            ("depth", pa.uint32()),
            ("hash", pa.uint32()),
            ("begin", TS),
            ("end", TS),
            ("duration", pa.int64()),
            ("name", s),
            ("target", s),
            ("filename", s),
            ("line", pa.uint32()),
        ]
    )


#: ``process_spans``'s two leading columns: Int16 keys whatever the views use
#: (process_spans_table_function.rs builds them with ``StringDictionaryBuilder<Int16Type>``).
PROCESS_SPANS_STRING = pa.dictionary(pa.int16(), pa.utf8())


def process_spans_schema(options: SchemaOptions) -> pa.Schema:
    """``process_spans(process_id, span_types)`` (process_spans_table_function.rs): ``stream_id`` and
    ``thread_name`` (not nullable), then the ``thread_spans`` columns."""
    lead = [
        pa.field("stream_id", PROCESS_SPANS_STRING, nullable=False),
        pa.field("thread_name", PROCESS_SPANS_STRING, nullable=False),
    ]
    return pa.schema(lead + list(thread_spans_schema(options)))


def async_events_schema(options: SchemaOptions) -> pa.Schema:
    """``view_instance('async_events', process_id)`` (async_events_table.rs)."""
    s = options.string()
    fields: list[tuple[str, pa.DataType]] = [
        ("stream_id", s),
        ("block_id", s),
        ("time", TS),
        ("event_type", s),
        ("span_id", pa.int64()),
        ("parent_span_id", pa.int64()),
        ("depth", pa.uint32()),
    ]
    if options.async_hash:
        fields.append(("hash", pa.uint32()))
    fields += [("name", s), ("filename", s), ("target", s), ("line", pa.uint32())]
    return pa.schema(fields)


def log_entries_schema(options: SchemaOptions) -> pa.Schema:
    """``view_instance('log_entries', process_id)`` (log_entries_table.rs)."""
    s = options.string()
    return pa.schema(
        [
            ("process_id", s),
            ("stream_id", s),
            ("block_id", s),
            ("insert_time", TS),
            ("exe", s),
            ("username", s),
            ("computer", s),
            ("time", TS),
            ("target", s),
            ("level", pa.int32()),
            ("msg", pa.utf8()),
            ("properties", PROPERTIES),
            ("process_properties", PROPERTIES),
        ]
    )


def measures_schema(options: SchemaOptions) -> pa.Schema:
    """``view_instance('measures', process_id)`` (metrics_table.rs)."""
    s = options.string()
    return pa.schema(
        [
            ("process_id", s),
            ("stream_id", s),
            ("block_id", s),
            ("insert_time", TS),
            ("exe", s),
            ("username", s),
            ("computer", s),
            ("time", TS),
            ("target", s),
            ("name", s),
            ("unit", s),
            ("value", pa.float64()),
            ("properties", PROPERTIES),
            ("process_properties", PROPERTIES),
        ]
    )


def processes_schema() -> pa.Schema:
    """The ``processes`` table (processes_view.rs)."""
    return pa.schema(
        [
            ("process_id", pa.utf8()),
            ("exe", pa.utf8()),
            ("username", pa.utf8()),
            ("realname", pa.utf8()),
            ("computer", pa.utf8()),
            ("distro", pa.utf8()),
            ("cpu_brand", pa.utf8()),
            ("tsc_frequency", pa.int64()),
            ("start_time", TS),
            ("start_ticks", pa.int64()),
            ("insert_time", TS),
            ("parent_process_id", pa.utf8()),
            ("properties", PROPERTIES),
            ("last_update_time", TS),
            ("last_block_end_ticks", pa.int64()),
            ("last_block_end_time", TS),
        ]
    )


def streams_schema() -> pa.Schema:
    """The ``streams`` table (streams_view.rs)."""
    return pa.schema(
        [
            ("stream_id", pa.utf8()),
            ("process_id", pa.utf8()),
            ("dependencies_metadata", pa.binary()),
            ("objects_metadata", pa.binary()),
            ("tags", pa.list_(pa.field("tag", pa.utf8()))),
            ("properties", PROPERTIES),
            ("insert_time", TS),
            ("format", pa.utf8()),
            ("last_update_time", TS),
        ]
    )


def blocks_schema() -> pa.Schema:
    """The ``blocks`` table (blocks_view.rs), in upstream column order."""
    return pa.schema(
        [
            ("block_id", pa.utf8()),
            ("stream_id", pa.utf8()),
            ("process_id", pa.utf8()),
            ("begin_time", TS),
            ("begin_ticks", pa.int64()),
            ("end_time", TS),
            ("end_ticks", pa.int64()),
            ("nb_objects", pa.int32()),
            ("object_offset", pa.int64()),
            ("payload_size", pa.int64()),
            ("insert_time", TS),
            ("streams.dependencies_metadata", pa.binary()),
            ("streams.objects_metadata", pa.binary()),
            ("streams.tags", pa.list_(pa.field("tag", pa.utf8()))),
            ("streams.properties", PROPERTIES),
            ("streams.insert_time", TS),
            ("processes.start_time", TS),
            ("processes.start_ticks", pa.int64()),
            ("processes.tsc_frequency", pa.int64()),
            ("processes.exe", pa.utf8()),
            ("processes.username", pa.utf8()),
            ("processes.realname", pa.utf8()),
            ("processes.computer", pa.utf8()),
            ("processes.distro", pa.utf8()),
            ("processes.cpu_brand", pa.utf8()),
            ("processes.insert_time", TS),
            ("processes.parent_process_id", pa.utf8()),
            ("processes.properties", PROPERTIES),
            ("streams.format", pa.utf8()),
        ]
    )
