"""A devserver whose span queries answer with batches a test chooses (e.g. hypothesis-made).

The process and thread queries keep their real answers (so the pipeline gets that far); the
``view_instance('thread_spans' | 'async_events' | 'log_entries' | 'measures', ...)`` queries return
the :class:`ScriptedSpans` list of the same name instead, over the real
Flight SQL wire (DoGet streams), so the source's decoding and checks run as in production. A
``process_spans`` query answers every thread's scripted batches in turn, each with its
``stream_id`` in front, as upstream does::

    with scripted_spans_server(small_lake()) as (server, script):
        script.thread_spans = [batch, ...]   # one schema for all batches

:attr:`ScriptedSpans.threads`, when set, answers the thread list query too (a hostile service's
million-thread answer, say).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from worker.devserver import DevServer, Lake
from worker.devserver.query import PlannedQuery

__all__ = ["ScriptedSpans", "scripted_spans_server"]


@dataclass
class ScriptedSpans:
    """What the span queries answer (every thread gets the same thread-span batches)."""

    thread_spans: list[pa.RecordBatch] = field(default_factory=list)
    async_events: list[pa.RecordBatch] = field(default_factory=list)
    #: The thread list query's answer; None: the lake's real threads.
    threads: list[pa.RecordBatch] | None = None
    log_entries: list[pa.RecordBatch] = field(default_factory=list)
    measures: list[pa.RecordBatch] = field(default_factory=list)


class _Engine:
    """Wraps the devserver's query engine; only span queries are answered from the script."""

    def __init__(self, real: Any, script: ScriptedSpans) -> None:
        self._real = real
        self._script = script

    def plan(self, sql: str, headers: Any, params: Any = None) -> PlannedQuery:
        if self._script.threads is not None and "'thread-name'" in sql:
            threads = list(self._script.threads)
            if " AS cpu" in sql:  # the process query that carries the thread list (whole life)
                threads = [self._with_process(batch) for batch in threads]
            return PlannedQuery(threads[0].schema, threads.__iter__, True)
        if "process_spans(" in sql:
            return self._process_spans(sql)
        for view, batches in (
            ("thread_spans", self._script.thread_spans),
            ("async_events", self._script.async_events),
            ("log_entries", self._script.log_entries),
            ("measures", self._script.measures),
        ):
            if f"view_instance('{view}'" in sql:
                planned = list(batches)
                schema = planned[0].schema if planned else pa.schema([])
                return PlannedQuery(schema, planned.__iter__, True)
        return self._real.plan(sql, headers, params)  # type: ignore[no-any-return]

    def _with_process(self, threads: pa.RecordBatch) -> pa.RecordBatch:
        """Scripted thread-list rows as rows of the process query that carries the thread list."""
        process = self._real.lake.processes[0]
        n = threads.num_rows
        ts = pa.timestamp("ns", tz="+00:00")
        extra = {
            "process_id": pa.array([process.process_id] * n, pa.utf8()),
            "exe": pa.array([process.exe] * n, pa.utf8()),
            "first_time": pa.array([process.begin_ns] * n, pa.int64()).cast(ts),
            "last_time": pa.array([process.end_ns] * n, pa.int64()).cast(ts),
            "cpu": pa.array([True] * n, pa.bool_()),
        }
        return pa.RecordBatch.from_arrays(
            [*extra.values(), *threads.columns], names=[*extra, *threads.schema.names]
        )

    def _process_spans(self, sql: str) -> PlannedQuery:
        streams = sorted(
            s.stream_id for p in self._real.lake.processes if p.process_id in sql for s in p.thread_streams
        )
        planned = [
            pa.RecordBatch.from_arrays(
                [pa.array([stream_id] * batch.num_rows, pa.utf8()), *batch.columns],
                names=["stream_id", *batch.schema.names],
            )
            for stream_id in streams
            for batch in self._script.thread_spans
        ]
        schema = planned[0].schema if planned else pa.schema([])
        return PlannedQuery(schema, planned.__iter__, True)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def scripted_spans_server(lake: Lake) -> Iterator[tuple[DevServer, ScriptedSpans]]:
    """A started in-process devserver (Micromegas mode) with scripted span answers."""
    script = ScriptedSpans()
    with DevServer(lake).start() as server:
        inner = server._server
        assert inner is not None
        inner.engine = _Engine(inner.engine, script)  # type: ignore[assignment]
        yield server, script
