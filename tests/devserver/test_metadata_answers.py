"""A statement over the metadata tables only (``processes``, ``streams``, ``blocks``: they never
change) is run once: its answer is kept and served again, the same rows, cut by the ``limit``
header, one answer per dictionary choice; statements that read a view are run each time."""

from __future__ import annotations

import pyarrow as pa

from worker.devserver import Lake, LakeConfig, SchemaOptions
from worker.devserver.headers import RequestHeaders
from worker.devserver.query import PlannedQuery, QueryEngine
from worker.source import queries


def _rows(planned: PlannedQuery) -> pa.Table:
    return pa.Table.from_batches(list(planned.batches()), planned.schema)


def test_metadata_answers_are_kept_and_served_again() -> None:
    lake = Lake(LakeConfig(processes=("small",)))
    engine = QueryEngine(lake, strict=True, schema_options=SchemaOptions())
    sql = queries.process_streams_sql(lake.processes[0].process_id)
    preserve = RequestHeaders(preserve_dictionary=True)

    first = engine.plan(sql, preserve)
    rows = _rows(first)
    assert rows["cpu"].to_pylist().count(True) == lake.processes[0].thread_count
    again = engine.plan(sql, preserve)
    assert again.table is not None
    assert again.table is first.table, "the same statement was run again"
    assert _rows(again).equals(rows)
    # What a server that never ran it answers.
    fresh = QueryEngine(lake, strict=True, schema_options=SchemaOptions())
    assert _rows(fresh.plan(sql, preserve)).equals(rows)

    limited = engine.plan(sql, RequestHeaders(preserve_dictionary=True, limit=2))
    assert _rows(limited).equals(rows.slice(0, 2))

    plain = engine.plan(sql, RequestHeaders())
    assert not any(pa.types.is_dictionary(t) for t in plain.schema.types)
    assert _rows(plain).equals(rows.cast(plain.schema))


def test_statements_reading_a_view_are_run_each_time() -> None:
    lake = Lake(LakeConfig(processes=("small",)))
    engine = QueryEngine(lake, strict=True, schema_options=SchemaOptions())
    sql = queries.async_span_count_sql(lake.processes[0].process_id)
    for _ in range(2):
        planned = engine.plan(sql, RequestHeaders())
        assert planned.table is None
        assert _rows(planned)["n"].to_pylist() == [lake.processes[0].async_span_count]
