"""Planning and executing one SQL statement against the lake with DataFusion, streaming.

Each statement gets its own ``SessionContext`` (cheap: the metadata tables are small) with the
``view_instance`` table function bound to that request's headers. Execution:

1. A probe plan runs with ``view_instance`` returning empty tables: it validates the SQL (errors
   become INVALID_ARGUMENT), yields the result schema and records which views are read.
2. A statement over one ``thread_spans`` / ``async_events`` / ``log_entries`` / ``measures`` instance
   whose plan only projects, filters, sorts by the view's generation order and limits is **row-local**: it
   runs once per generated block, in block order, and the results are concatenated. Memory stays
   bounded by one block whatever the process size (DataFusion cannot stream a Python-generated
   table: pyarrow datasets built from readers are materialised).
3. Anything else (aggregates, joins, other sort orders) runs once over materialised views, cut to
   the header range first. A statement that reads no view (only ``processes`` / ``streams`` /
   ``blocks``, which never change) runs the probe's plan at once, and its answer is kept: the same
   statement is answered from it next time, without DataFusion.

With the lake held in memory (``--in-memory``, :mod:`worker.devserver.memory`) the views are read
from memory instead of generated, and a statement of a known shape (:mod:`worker.devserver.shapes`:
the per-thread and async-event SQL) skips steps 1-3 after its first occurrence: its rows are a
``searchsorted`` cut of the held table, projected and limited, streamed by Arrow's C++.

In both paths the header range (``query_range_begin``/``_end``) is pushed into the generator,
which skips whole blocks outside it; DataFusion then applies the statement's own WHERE. A view with
no row in the range is served by a prebuilt zero-row provider (a pyarrow dataset without fragments
has zero partitions, and DataFusion refuses to plan a sort over it), so such statements answer
zero rows with the view's columns.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
from datafusion import Expr, LogicalPlan, SessionConfig, SessionContext, Table, udtf

from worker.devserver import process_spans, views
from worker.devserver.headers import RequestHeaders
from worker.devserver.lake import Lake
from worker.devserver.memory import Bounds, MemoryLake
from worker.devserver.schemas import (
    SchemaOptions,
    async_events_schema,
    log_entries_schema,
    measures_schema,
    process_spans_schema,
    thread_spans_schema,
)
from worker.devserver.shapes import Shape, parse_shape
from worker.devserver.tables import MetadataTables, property_get_udf

__all__ = ["PlannedQuery", "QueryEngine", "hydrated"]

#: The column a view's blocks are ordered by across blocks (None: blocks overlap in every column).
_BLOCK_ORDER: dict[str, str | None] = {
    "thread_spans": "begin",
    "async_events": "time",
    "log_entries": "time",
    "measures": "time",
    "process_spans": None,  # thread after thread, then async: no single order
}
#: Table functions whose scans may run block by block.
_GENERATED = ("view_instance", "process_spans")
#: Rows per table a row-local ``process_spans`` statement runs over (its blocks are grouped, so a
#: small process is one DataFusion execution, not one per thread).
_GROUP_ROWS = 65_536
_ROW_LOCAL_NODES = {"Projection", "Filter", "SubqueryAlias", "TableScan", "Sort"}
_INT = re.compile(r"Int64\((\d+)\)")
#: Metadata statements' answers kept (all dropped when full: the worker's vary by process id only).
_METADATA_ANSWERS = 1024

Generator = Callable[[str, str], Iterator[pa.RecordBatch]]


def hydrated(schema: pa.Schema) -> pa.Schema:
    """``schema`` with dictionary columns replaced by their value type (Micromegas's default)."""
    return pa.schema(
        [f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in schema],
        metadata=schema.metadata,
    )


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.equals(schema):
        return batch
    return pa.record_batch(
        [col.cast(f.type) for col, f in zip(batch.columns, schema, strict=True)], schema=schema
    )


#: Bytes aimed at per streamed batch: under gRPC's common 16 MiB message limit, whatever the client.
_BATCH_BYTES = 8 * 2**20


def _batch_rows(table: pa.Table, wire: pa.Schema, most: int) -> int:
    """Rows per batch (at most ``most``) so that a batch on the wire stays near :data:`_BATCH_BYTES`."""
    row = 0.0
    for column, sent in zip(table.columns, wire, strict=True):
        if (
            pa.types.is_dictionary(column.type)
            and not pa.types.is_dictionary(sent.type)
            and column.num_chunks
        ):
            values = column.chunk(0).dictionary  # decoded on the wire: offsets + mean value length
            row += 4 + (values.nbytes / len(values) if len(values) else 0)
        elif pa.types.is_dictionary(column.type):
            row += column.type.index_type.bit_width / 8
        elif pa.types.is_primitive(column.type):
            row += column.type.bit_width / 8
        else:
            row += column.nbytes / max(1, len(column)) + 4
    return int(min(most, max(4096, _BATCH_BYTES // max(row, 1.0))))


def _provider(provided: pa.Table | Table) -> Table:
    """A Table over a pyarrow dataset: the only provider safe to build inside a UDTF."""
    return provided if isinstance(provided, Table) else Table(ds.dataset(provided))


def _relabel(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` under ``schema`` (same types; field nullability and metadata may differ)."""
    return batch if batch.schema.equals(schema) else pa.RecordBatch.from_arrays(batch.columns, schema=schema)


@dataclass
class _Calls:
    """``view_instance`` / ``process_spans`` calls seen while planning: (view, instance id, span
    types; "" for views)."""

    seen: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedQuery:
    """A validated statement: its wire schema and how to produce its batches."""

    schema: pa.Schema
    batches: Callable[[], Iterator[pa.RecordBatch]]
    streamed: bool  # row-local, block by block (for tests and docs)
    #: The whole answer as a table of wire-ready batches (in-memory known shapes): written to the
    #: stream by Arrow's C++ without a Python call per batch.
    table: pa.Table | None = None


class QueryEngine:
    """Plans and runs statements for one server configuration.

    Args:
        lake: The data.
        strict: Micromegas behaviour: ``thread_spans`` refuses a statement without a header range.
        schema_options: Dictionary key width / plain strings, ``async_events.hash`` presence.
        memory: The lake held in memory (``--in-memory``): views are read from it, and statements of a
            known shape (:mod:`worker.devserver.shapes`) are answered by slicing it, without DataFusion.
    """

    def __init__(
        self,
        lake: Lake,
        *,
        strict: bool,
        schema_options: SchemaOptions,
        memory: MemoryLake | None = None,
    ) -> None:
        self.lake = lake
        self.memory = memory
        #: Wire schemas of known shapes, keyed by (statement with literals blanked, preserve_dictionary).
        self._shape_schemas: dict[tuple[str, bool], pa.Schema] = {}
        #: Statements answered from memory without DataFusion (tests check the fast path is taken).
        self.known_shapes = 0
        #: Answers of statements that read only the (immutable) metadata tables, by statement and
        #: preserve_dictionary.
        self._metadata_answers: dict[tuple[str, bool], PlannedQuery] = {}
        self._count_lock = threading.Lock()
        self.strict = strict
        self.options = schema_options
        self.tables = MetadataTables(lake)
        self._schemas = {
            "thread_spans": thread_spans_schema(schema_options),
            "async_events": async_events_schema(schema_options),
            "log_entries": log_entries_schema(schema_options),
            "measures": measures_schema(schema_options),
        }
        #: Zero-row providers, built here: DataFusion cannot plan a sort over a dataset without
        #: fragments (what an empty view gives), and no provider can be built inside the UDTF.
        self._empty = {view: _empty_provider(schema) for view, schema in self._schemas.items()}
        self._spans_schema = process_spans_schema(schema_options)
        self._empty["process_spans"] = _empty_provider(self._spans_schema)
        #: What known shapes may read (process_spans only where the server has it).
        self._shape_views = dict(self._schemas)
        if schema_options.process_spans:
            self._shape_views["process_spans"] = self._spans_schema

    def _schema(self, view: str) -> pa.Schema:
        return self._spans_schema if view == "process_spans" else self._schemas[view]

    # -- view_instance -------------------------------------------------------------------------

    def _check(self, view: str, instance: str, headers: RequestHeaders) -> None:
        if view not in self._schemas:
            raise ValueError(f"unknown view set {view!r}; known: {sorted(self._schemas)}")
        if instance == "global":
            raise ValueError(f"the global view is not implemented for {view.replace('_', ' ')}")
        if view == "thread_spans" and self.strict and headers.range_ns is None:
            raise ValueError("query range mandatory for thread spans view")

    def _check_process_spans_range(self, headers: RequestHeaders) -> None:
        """Upstream's process_spans reads thread spans through view_instance, which needs the range."""
        if self.strict and headers.range_ns is None:
            raise ValueError("Failed to query thread spans: query range mandatory for thread spans view")

    def _rows(
        self, view: str, instance: str, headers: RequestHeaders, span_types: str = ""
    ) -> Iterator[pa.RecordBatch]:
        if view == "process_spans":
            return process_spans.process_spans(
                self.lake,
                instance,
                span_types,
                schema=self._spans_schema,
                thread_rows=lambda stream_id: self._rows("thread_spans", stream_id, headers),
                async_rows=lambda process_id: self._rows("async_events", process_id, headers),
            )
        if self.memory is not None and self.memory.holds(view):
            return self.memory.rows(view, instance, headers.range_ns)
        begin, end = headers.range_ns if headers.range_ns is not None else (None, None)
        gen = {
            "thread_spans": views.thread_spans,
            "async_events": views.async_events,
            "log_entries": views.log_entries,
            "measures": views.measures,
        }[view]
        return gen(self.lake, instance, self.options, begin, end)

    def _context(
        self, provide: Callable[[str, str, str], pa.Table | Table], headers: RequestHeaders
    ) -> SessionContext:
        ctx = SessionContext(SessionConfig().with_information_schema(False))
        for name in ("processes", "streams", "blocks"):
            ctx.register_record_batches(name, [getattr(self.tables, name).to_batches()])
        ctx.register_udf(property_get_udf())

        @udtf("view_instance")
        def view_instance(view: Expr, instance: Expr) -> Table:
            v, i = Expr(view).python_value().as_py(), Expr(instance).python_value().as_py()
            if not isinstance(v, str) or not isinstance(i, str):
                raise ValueError("view_instance takes two string literals: (view_set_name, instance_id)")
            self._check(v, i, headers)
            return _provider(provide(v, i, ""))

        ctx.register_udtf(view_instance)
        if self.options.process_spans:

            @udtf("process_spans")
            def process_spans_udtf(process_id: Expr, span_types: Expr) -> Table:
                p, t = Expr(process_id).python_value().as_py(), Expr(span_types).python_value().as_py()
                if not isinstance(p, str):
                    raise ValueError(
                        f"First argument to process_spans must be a string (the process ID), given {p!r}"
                    )
                t = process_spans.check_span_types(t)
                if t != "async":
                    self._check_process_spans_range(headers)
                return _provider(provide("process_spans", p, t))

            ctx.register_udtf(process_spans_udtf)
        return ctx

    # -- planning ------------------------------------------------------------------------------

    def plan(self, sql: str, headers: RequestHeaders, params: dict[str, Any] | None = None) -> PlannedQuery:
        """Validate ``sql`` and decide how to run it.

        Raises:
            ValueError: the statement does not plan (the message says why).
        """
        if self.memory is not None and params is None:
            shape = parse_shape(sql, self._shape_views)
            if shape is not None:
                return self._known_shape(sql, shape, headers)
        key = (sql, headers.preserve_dictionary)
        if params is None:
            with self._count_lock:
                known = self._metadata_answers.get(key)
            if known is not None:
                return _limited(known, headers.limit)
        df, calls, wire = self._probe(sql, headers, params)
        if not calls.seen:
            # Only the metadata tables are read: the probe's plan is the statement's. They never
            # change, so the answer is kept (a failure to run it is left to the stream, as before).
            if params is not None:
                return PlannedQuery(wire, lambda: self._drain(df, headers, wire), False)
            try:
                table = pa.Table.from_batches(list(self._drain(df, RequestHeaders(), wire)), wire)
            except Exception:  # reported by the stream, which runs the plan again
                return PlannedQuery(wire, lambda: self._drain(df, headers, wire), False)
            known = PlannedQuery(wire, lambda: iter(table.to_batches()), False, table)
            with self._count_lock:
                if len(self._metadata_answers) >= _METADATA_ANSWERS:
                    self._metadata_answers.clear()
                self._metadata_answers[key] = known
            return _limited(known, headers.limit)
        fetch = self._row_local(df.logical_plan(), calls)
        if fetch is not False:
            scan = calls.seen[0]
            limit = _min_limit(fetch, headers.limit)
            return PlannedQuery(wire, lambda: self._per_block(sql, params, headers, scan, wire, limit), True)
        return PlannedQuery(wire, lambda: self._whole(sql, params, headers, wire), False)

    def _probe(
        self, sql: str, headers: RequestHeaders, params: dict[str, Any] | None
    ) -> tuple[Any, _Calls, pa.Schema]:
        """Plan ``sql`` over empty views: the DataFrame, the views it reads and the wire schema."""
        calls = _Calls()

        def probe(view: str, instance: str, span_types: str) -> pa.Table:
            calls.seen.append((view, instance, span_types))
            return self._schema(view).empty_table()

        df = self._sql(self._context(probe, headers), sql, params)
        schema: pa.Schema = df.schema()
        return df, calls, schema if headers.preserve_dictionary else hydrated(schema)

    def _known_shape(self, sql: str, shape: Shape, headers: RequestHeaders) -> PlannedQuery:
        """Answer a known shape from memory: a range cut, a projection and a limit, no DataFusion.
        The first statement of each shape is still planned by DataFusion, for its checks and its
        exact result schema (kept for the next ones)."""
        assert self.memory is not None
        if shape.view != "process_spans":
            self._check(shape.view, shape.instance, headers)
        else:  # (the worker's shape: its thread spans)
            self._check_process_spans_range(headers)
        key = (shape.key, headers.preserve_dictionary)
        wire = self._shape_schemas.get(key)
        if wire is None:
            wire = self._probe(sql, headers, None)[2]
            self._shape_schemas[key] = wire
        with self._count_lock:
            self.known_shapes += 1
        if shape.view == "process_spans":
            table = self._held_process_spans(shape, headers)
        else:
            held = self.memory.held(shape.view, shape.instance)
            table = held.cut(shape.bounds.meet(Bounds.header(shape.view, headers.range_ns))).select(
                list(shape.columns)
            )
        limit = _min_limit(shape.limit, headers.limit)
        if limit is not None:
            table = table.slice(0, limit)
        batches = table.to_batches(max_chunksize=_batch_rows(table, wire, self.memory.batch_rows))
        if all(f.type == t for f, t in zip(wire, table.schema.types, strict=True)):
            ready = pa.Table.from_batches([_relabel(b, wire) for b in batches], wire)
            return PlannedQuery(wire, lambda: iter(ready.to_batches()), True, ready)
        # Strings hydrated batch by batch, so memory stays bounded by one batch.
        return PlannedQuery(wire, lambda: (_conform(b, wire) for b in batches), True)

    def _held_process_spans(self, shape: Shape, headers: RequestHeaders) -> pa.Table:
        """``process_spans(id, 'thread')`` from memory: each thread's held rows cut as
        ``thread_spans`` is, thread after thread by stream id, projected."""
        assert self.memory is not None
        bounds = shape.bounds.meet(Bounds.header("thread_spans", headers.range_ns))
        parts = []
        for stream_id, name in process_spans.thread_list(self.lake, shape.instance):
            cut = self.memory.held("thread_spans", stream_id).cut(bounds)
            if cut.num_rows:
                parts.append(process_spans.with_thread(cut, self._spans_schema, stream_id, name))
        table = pa.concat_tables(parts) if parts else self._spans_schema.empty_table()
        return table.select(list(shape.columns))

    @staticmethod
    def _sql(ctx: SessionContext, sql: str, params: dict[str, Any] | None) -> Any:
        try:
            return ctx.sql(sql, param_values=params) if params else ctx.sql(sql)
        except Exception as exc:  # DataFusion planning errors: the client's statement is at fault
            raise ValueError(_clean(str(exc))) from exc

    def _row_local(self, plan: LogicalPlan, calls: _Calls) -> int | bool | None:
        """The overall row limit if the plan is row-local over one generated view, else False."""
        if len(calls.seen) != 1:
            return False
        order = _BLOCK_ORDER[calls.seen[0][0]]
        fetch: int | None = None
        node = plan
        variant = node.to_variant()
        if type(variant).__name__ == "Limit":
            skip = variant.skip()
            if skip is not None and _int(skip) != 0:
                return False
            limit = variant.fetch()
            fetch = None if limit is None else _int(limit)
            if limit is not None and fetch is None:
                return False
            node = node.inputs()[0]
        stack = [node]
        scans = 0
        while stack:
            node = stack.pop()
            variant = node.to_variant()
            kind = type(variant).__name__
            if kind not in _ROW_LOCAL_NODES:
                return False
            if kind == "TableScan":
                scans += 1
                if not str(variant.table_name()).startswith(_GENERATED):
                    return False
            if kind == "Sort":
                keys = variant.sort_exprs()
                first = str(keys[0].expr()) if keys else ""
                if order is None or not keys[0].ascending() or not re.search(rf"\b{order}\)?$", first):
                    return False
                if variant.get_fetch_val() is not None:
                    return False
            stack.extend(node.inputs())
        return fetch if scans == 1 else False

    # -- execution -----------------------------------------------------------------------------

    def _per_block(  # noqa: PLR0917
        self,
        sql: str,
        params: dict[str, Any] | None,
        headers: RequestHeaders,
        scan: tuple[str, str, str],
        wire: pa.Schema,
        limit: int | None,
    ) -> Iterator[pa.RecordBatch]:
        current: list[pa.Table] = []
        ctx = self._context(lambda _v, _i, _t: current[-1], headers)
        left = limit
        view, instance, span_types = scan
        blocks = self._rows(view, instance, headers, span_types)
        tables = _grouped(blocks, _GROUP_ROWS) if view == "process_spans" else _tables(blocks)
        for table in tables:
            if left is not None and left <= 0:
                return
            current[:] = [table]
            reader = pa.RecordBatchReader.from_stream(self._sql(ctx, sql, params))
            for produced in reader:
                batch = produced if left is None else produced.slice(0, left)
                if batch.num_rows == 0:
                    continue
                if left is not None:
                    left -= batch.num_rows
                yield _conform(batch, wire)
                if left is not None and left <= 0:
                    return

    def _whole(
        self, sql: str, params: dict[str, Any] | None, headers: RequestHeaders, wire: pa.Schema
    ) -> Iterator[pa.RecordBatch]:
        def materialise(view: str, instance: str, span_types: str) -> pa.Table | Table:
            rows = self._rows(view, instance, headers, span_types)
            table = pa.Table.from_batches(list(rows), self._schema(view))
            return table if table.num_rows else self._empty[view]

        yield from self._drain(self._sql(self._context(materialise, headers), sql, params), headers, wire)

    @staticmethod
    def _drain(df: Any, headers: RequestHeaders, wire: pa.Schema) -> Iterator[pa.RecordBatch]:
        """A planned statement's batches, conformed to ``wire``, up to the header's row limit."""
        left = headers.limit
        for produced in pa.RecordBatchReader.from_stream(df):
            batch = produced if left is None else produced.slice(0, left)
            if left is not None:
                left -= batch.num_rows
            if batch.num_rows:
                yield _conform(batch, wire)
            if left is not None and left <= 0:
                return


def _limited(planned: PlannedQuery, limit: int | None) -> PlannedQuery:
    """A kept answer (``planned.table``) cut to the header's row limit."""
    assert planned.table is not None
    if limit is None or limit >= planned.table.num_rows:
        return planned
    table = planned.table.slice(0, limit)
    return PlannedQuery(planned.schema, lambda: iter(table.to_batches()), False, table)


def _tables(blocks: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """Each non-empty block as a table (nothing to project, filter or sort in an empty one)."""
    for block in blocks:
        if block.num_rows:
            yield pa.Table.from_batches([block])


def _grouped(blocks: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Consecutive non-empty blocks as tables of about ``rows`` rows (a block is never split)."""
    held: list[pa.RecordBatch] = []
    count = 0
    for block in blocks:
        if not block.num_rows:
            continue
        if held and count + block.num_rows > rows:
            yield pa.Table.from_batches(held)
            held, count = [], 0
        held.append(block)
        count += block.num_rows
    if held:
        yield pa.Table.from_batches(held)


def _empty_provider(schema: pa.Schema) -> Table:
    """A provider of no rows with ``schema`` that DataFusion plans like any table (one partition)."""
    return SessionContext().from_arrow(schema.empty_table()).into_view()


_PYERR = re.compile(r"PyErr \{ type: <class '\w+'>, value: \w+\((['\"])(.*?)\1\)")


def _clean(message: str) -> str:
    """DataFusion wraps errors raised in ``view_instance`` with a traceback: keep our message."""
    m = _PYERR.search(message)
    return m.group(2) if m else message


def _int(expr: Any) -> int | None:
    m = _INT.search(str(expr))
    return int(m.group(1)) if m else None


def _min_limit(a: int | bool | None, b: int | None) -> int | None:
    values = [v for v in (a, b) if isinstance(v, int) and not isinstance(v, bool)]
    return min(values) if values else None
