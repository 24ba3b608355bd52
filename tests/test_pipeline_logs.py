"""Logs and metrics over the real wire: generate_trace against the devserver (both modes); every log
entry and measure in the range is in the decoded trace once, with its time, priority, text and value."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pyarrow as pa
import pytest

from contracts.request import SpanTypes
from tests.engine.decode import decode
from tests.engine.decode_logs import decode_logs
from tests.support.devserver import small_lake, start_devserver
from worker.devserver import DevServer, Lake, log_entries, measures
from worker.devserver.schemas import SchemaOptions
from worker.engine.counters import counter_name
from worker.errors import TraceTooLarge
from worker.pipeline import Progress, TraceSpec, generate_trace
from worker.source import FlightSqlConfig, FlightSqlSource

PLAIN = SchemaOptions(dictionary_keys="plain")


@pytest.fixture(scope="module")
def lake() -> Lake:
    return small_lake(seed=5)


@pytest.fixture(scope="module", params=["micromegas", "friendly"])
def server(request: pytest.FixtureRequest, lake: Lake) -> Iterator[DevServer]:
    with start_devserver(lake, mode=request.param) as srv:
        yield srv


@contextlib.asynccontextmanager
async def _source(server: DevServer) -> AsyncIterator[FlightSqlSource]:
    source = FlightSqlSource(FlightSqlConfig(server.url, concurrency=2))
    try:
        yield source
    finally:
        await source.aclose()


async def _trace(server: DevServer, spec: TraceSpec, progress: list[Progress] | None = None) -> bytes:
    async with _source(server) as source:
        gen = generate_trace(source, spec, on_progress=progress.append if progress is not None else None)
        return b"".join([c async for c in gen])


def _expected_logs(lake: Lake, pid: str, begin: int, end: int) -> Counter[tuple[int, int, str]]:
    out: Counter[tuple[int, int, str]] = Counter()
    for batch in log_entries(lake, pid, PLAIN, begin, end):
        t = batch.column("time").cast(pa.int64()).to_pylist()
        lv = batch.column("level").to_pylist()
        msg = batch.column("msg").to_pylist()
        out.update((ti, 8 - li, mi) for ti, li, mi in zip(t, lv, msg, strict=True))
    return out


def _expected_measures(lake: Lake, pid: str, begin: int, end: int) -> Counter[tuple[str, str, int, float]]:
    out: Counter[tuple[str, str, int, float]] = Counter()
    for batch in measures(lake, pid, PLAIN, begin, end):
        target, name, unit, value = (batch.column(c).to_pylist() for c in ("target", "name", "unit", "value"))
        t = batch.column("time").cast(pa.int64()).to_pylist()
        shown = [counter_name(tg, n) for tg, n in zip(target, name, strict=True)]
        out.update(zip(shown, unit, t, value, strict=True))
    return out


@pytest.mark.parametrize("span_types", [SpanTypes.BOTH, SpanTypes.ASYNC])
async def test_every_log_entry_and_measure_in_range_once(
    server: DevServer, lake: Lake, span_types: SpanTypes
) -> None:
    p = lake.processes[0]
    third = (p.end_ns - p.begin_ns) // 3
    begin, end = p.begin_ns + third, p.begin_ns + 2 * third
    progress: list[Progress] = []
    spec = TraceSpec(p.process_id, begin, end, span_types, logs=True, metrics=True)
    data = await _trace(server, spec, progress)
    assert decode(data).problems == []
    got = decode_logs(data)
    assert got.problems == []
    want_logs = _expected_logs(lake, p.process_id, begin, end)
    assert sum(want_logs.values()) > 50
    assert Counter((g.ts, g.prio, g.body) for g in got.logs) == want_logs
    want = _expected_measures(lake, p.process_id, begin, end)
    assert sum(want.values()) > 500
    have: Counter[tuple[str, str, int, float]] = Counter()
    for uuid, points in got.counters.items():
        desc = got.descriptors[uuid]
        assert [t for t, _ in points] == sorted(t for t, _ in points)
        have.update((desc.name, desc.counter.unit_name, t, v) for t, v in points)
    assert have == want
    phases = [x.phase for x in progress]
    assert phases.index("log_entries") < phases.index("measures") < phases.index("done")
    assert progress[-1].percent == 100.0


async def test_without_the_flags_the_trace_has_no_logs_or_counters(server: DevServer, lake: Lake) -> None:
    p = lake.processes[0]
    data = await _trace(server, TraceSpec(p.process_id, None, None, SpanTypes.THREAD))
    got = decode_logs(data)
    assert got.logs == [] and got.counters == {}


async def test_limits_fail_clearly(server: DevServer, lake: Lake) -> None:
    p = lake.processes[0]
    with pytest.raises(TraceTooLarge, match="more than 10 log entries"):
        await _trace(
            server, TraceSpec(p.process_id, None, None, SpanTypes.ASYNC, logs=True, max_log_entries=10)
        )
    with pytest.raises(TraceTooLarge, match="more than 10 measures"):
        await _trace(
            server, TraceSpec(p.process_id, None, None, SpanTypes.ASYNC, metrics=True, max_measures=10)
        )
