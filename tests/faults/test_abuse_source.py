"""Abuse of the source side: hypothesis-made Flight SQL answers to the span queries (wrong types,
missing columns, nulls, out-of-order and overlapping spans, negative and reversed times, unknown
event types, inconsistent depths) served over the real Flight SQL wire and fed through
FlightSqlSource and the pipeline. Each case ends in a clear BadSourceData (or EmptyRange) failure or
a trace that ``inspect`` finds clean; never another exception."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.errors import ErrorCode
from contracts.request import SpanTypes
from tests.support.devserver import small_lake
from tests.support.fuzz_flight import ScriptedSpans, scripted_spans_server
from worker.devserver import DevServer
from worker.errors import TraceWorkerError
from worker.inspect import inspect_trace
from worker.pipeline import TraceSpec, generate_trace
from worker.source import FlightSqlConfig, FlightSqlSource

TS = pa.timestamp("ns", tz="UTC")
#: Clear failures bad data may end in.
ALLOWED = {ErrorCode.BAD_SOURCE_DATA, ErrorCode.EMPTY_RANGE}


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[DevServer, ScriptedSpans]]:
    with scripted_spans_server(small_lake()) as pair:
        yield pair


def _column(draw: Any, kind: str, n: int, values: list[Any]) -> tuple[pa.Array | None, str]:
    """The column as the right type, a wrong type, with nulls, or missing (None)."""
    shape = draw(st.sampled_from(["ok", "ok", "ok", "nulls", "wrong", "missing"]))
    if shape == "missing":
        return None, shape
    if shape == "wrong":
        wrong = {"time": pa.utf8(), "int": pa.float64(), "str": pa.int64()}[kind]
        if wrong == pa.utf8():
            return pa.array([str(v) for v in values], wrong), shape
        if wrong == pa.float64():
            return pa.array([float(v) for v in values], wrong), shape
        return pa.array(list(range(n)), wrong), shape
    if shape == "nulls":
        mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
        values = [None if m else v for v, m in zip(values, mask, strict=True)]
    typ = {"time": TS, "int": draw(st.sampled_from([pa.int64(), pa.uint32(), pa.int8()])), "str": pa.utf8()}[
        kind
    ]
    if kind == "str" and draw(st.booleans()):
        return pa.array(values, pa.utf8()).dictionary_encode(), shape
    if kind == "int" and typ != pa.int64():
        lo, hi = (0, 2**32 - 1) if typ == pa.uint32() else (-128, 127)
        values = [None if v is None else min(max(v, lo), hi) for v in values]
    return pa.array(values, typ), shape


@st.composite
def _batches(draw: Any, columns: dict[str, str], base: int, extra: dict[str, Any]) -> list[pa.RecordBatch]:
    n = draw(st.integers(0, 40))
    times = st.one_of(
        st.integers(base - 10**9, base + 10**10),  # around the process, unordered
        st.integers(-(10**12), 10**12),  # negative and near the epoch
        st.integers(-(2**62), 2**62),
    )
    arrays, names = [], []
    for name, kind in columns.items():
        if kind == "time":
            values: list[Any] = draw(st.lists(times, min_size=n, max_size=n))
        elif kind == "int":
            values = draw(st.lists(st.integers(-5, 10), min_size=n, max_size=n))
        else:
            values = draw(st.lists(extra.get(name, st.text(max_size=12)), min_size=n, max_size=n))
        array, _ = _column(draw, kind, n, values)
        if array is not None:
            arrays.append(array)
            names.append(name)
    if not names:
        return []
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=2)))
    bounds = [0, *cuts, n]
    return [batch.slice(a, b - a) for a, b in itertools.pairwise(bounds)]


THREAD = {"begin": "time", "end": "time", "name": "str", "target": "str", "filename": "str", "line": "int",
          "depth": "int"}  # fmt: skip
ASYNC = {"stream_id": "str", "time": "time", "event_type": "str", "span_id": "int", "parent_span_id": "int",
         "depth": "int", "name": "str", "target": "str", "filename": "str", "line": "int"}  # fmt: skip


async def _generate(server: DevServer, span_types: SpanTypes) -> bytes:
    process = server.lake.processes[0]
    source = FlightSqlSource(FlightSqlConfig(url=server.url))
    try:
        spec = TraceSpec(process.process_id, None, None, span_types, max_spans=100_000)
        return b"".join([chunk async for chunk in generate_trace(source, spec)])
    finally:
        await source.aclose()


def _fuzz(scripted: tuple[DevServer, ScriptedSpans], examples: int) -> None:
    server, script = scripted
    base = server.lake.processes[0].begin_ns
    outcomes: dict[str, int] = {}
    event_types = st.sampled_from(["begin", "end", "instant", "", "BEGIN"])

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(
        _batches(THREAD, base, {}),
        _batches(ASYNC, base, {"event_type": event_types, "stream_id": st.sampled_from(["s1", "s2"])}),
        st.sampled_from(list(SpanTypes)),
    )
    def case(threads: list[pa.RecordBatch], events: list[pa.RecordBatch], span_types: SpanTypes) -> None:
        script.thread_spans, script.async_events = threads, events
        try:
            data = asyncio.run(_generate(server, span_types))
        except TraceWorkerError as exc:
            assert exc.code in ALLOWED, f"{type(exc).__name__}: {exc}"
            assert str(exc)
            outcomes[exc.code.value] = outcomes.get(exc.code.value, 0) + 1
            return
        report = inspect_trace(io.BytesIO(data))
        assert report.ok, report.defects[:5]
        outcomes["trace"] = outcomes.get("trace", 0) + 1

    case()
    print(f"source fuzz outcomes: {outcomes}")
    assert outcomes.get("bad_source_data", 0) > 0 and outcomes.get("trace", 0) > 0


def test_flightsql_answer_fuzz(scripted: tuple[DevServer, ScriptedSpans]) -> None:
    _fuzz(scripted, examples=150)


@pytest.mark.long
@pytest.mark.timeout(1800)
def test_flightsql_answer_fuzz_long(scripted: tuple[DevServer, ScriptedSpans]) -> None:
    _fuzz(scripted, examples=3000)
