"""generate_trace: source + engine against the devserver; the trace is decoded and compared with
exactly what the server holds."""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from contracts.request import SpanTypes
from tests.engine.decode import decode
from tests.engine.perfetto_import import import_trace
from tests.engine.test_async_lanes import peak
from tests.support.devserver import expected_async_events, expected_thread_spans, small_lake, start_devserver
from worker import pipeline
from worker.devserver import DevServer, Lake, LakeProcess
from worker.engine import TraceEncoder
from worker.errors import EmptyRange, InvalidRequest, ProcessNotFound, RangeTooLong, TraceTooLarge
from worker.pipeline import Cancelled, Progress, TraceSpec, generate_trace
from worker.source import FlightSqlConfig, FlightSqlSource


@pytest.fixture(scope="module")
def lake() -> Lake:
    return small_lake(seed=11)


@pytest.fixture(scope="module", params=["micromegas", "friendly"])
def server(request: pytest.FixtureRequest, lake: Lake) -> Iterator[DevServer]:
    with start_devserver(lake, mode=request.param) as srv:
        yield srv


@contextlib.asynccontextmanager
async def _source(server: DevServer) -> AsyncIterator[FlightSqlSource]:
    source = FlightSqlSource(FlightSqlConfig(server.url, concurrency=3))
    try:
        yield source
    finally:
        await source.aclose()


async def _trace(server: DevServer, spec: TraceSpec, progress: list[Progress] | None = None) -> bytes:
    async with _source(server) as source:
        chunks = [
            c
            async for c in generate_trace(
                source, spec, on_progress=progress.append if progress is not None else None
            )
        ]
    return b"".join(chunks)


def _thread_rows(
    lake: Lake, p: LakeProcess, begin: int | None, end: int | None
) -> Counter[tuple[int, int, str]]:
    rows: Counter[tuple[int, int, str]] = Counter()
    for stream in p.thread_streams:
        for batch in expected_thread_spans(lake, stream.stream_id, begin, end):
            b = batch.column("begin").cast(pa.int64()).to_pylist()
            e = batch.column("end").cast(pa.int64()).to_pylist()
            n = batch.column("name").cast(pa.utf8()).to_pylist()
            rows.update(zip(b, e, n, strict=True))
    return rows


def _async_span_ids(lake: Lake, p: LakeProcess, begin: int, end: int) -> int:
    ids: set[int] = set()
    for batch in expected_async_events(lake, p.process_id, begin, end):
        ids.update(batch.column("span_id").to_pylist())
    return len(ids)


@pytest.mark.parametrize("cut", [False, True])
async def test_every_thread_span_lands_exactly_once(server: DevServer, lake: Lake, cut: bool) -> None:
    p = lake.processes[0]
    begin, end = (None, None)
    if cut:
        third = (p.end_ns - p.begin_ns) // 3
        begin, end = p.begin_ns + third, p.begin_ns + 2 * third
    spec = TraceSpec(p.process_id, begin, end, SpanTypes.THREAD, chunk_size=64 * 1024)
    decoded = decode(await _trace(server, spec))
    assert decoded.problems == []
    thread_tracks = {uuid for uuid, d in decoded.descriptors.items() if d.HasField("thread")}
    got = Counter((s.begin, s.end, s.name) for s in decoded.slices if s.track in thread_tracks)
    expected = _thread_rows(lake, p, begin, end)
    if cut:  # spans crossing the range edges are clipped to it
        assert begin is not None and end is not None
        clipped: Counter[tuple[int, int, str]] = Counter()
        for (b, e, n), k in expected.items():
            clipped[(max(b, begin), min(e, end), n)] += k
        expected = clipped
        assert any(s.cut for s in decoded.slices)
    assert got == expected
    assert len(thread_tracks) == p.thread_count


async def test_async_lanes_over_the_wire(server: DevServer, lake: Lake) -> None:
    """Lanes on a devserver trace: strictly nested tracks, rows within peak concurrency, parents shown."""
    p = lake.processes[0]
    data = await _trace(server, TraceSpec(p.process_id, p.begin_ns, p.end_ns, SpanTypes.ASYNC))
    decoded = decode(data)
    assert decoded.problems == []
    tracks: dict[int, list[tuple[int, int]]] = {}
    for s in decoded.slices:
        tracks.setdefault(s.track, []).append((s.begin, s.end))
    for spans in tracks.values():  # no partial overlap: sorted by (begin, -end), a stack of ends
        open_ends: list[int] = []
        for b, e in sorted(spans, key=lambda x: (x[0], -x[1])):
            while open_ends and open_ends[-1] <= b:
                open_ends.pop()
            assert not open_ends or e <= open_ends[-1], (b, e, open_ends[-1])
            open_ends.append(e)
    rows = peak([(min(b for b, _ in v), max(e for _, e in v)) for v in tracks.values()])
    assert rows <= peak([(s.begin, s.end) for s in decoded.slices])
    placed = [s for s in decoded.slices if s.under is not None]
    assert placed and len(tracks) < len(decoded.slices)
    flows = {f for s in decoded.slices for f in s.flows}
    linked = [s for s in decoded.slices if s.term_flows]
    assert linked and all(s.term_flows[0] in flows and s.parent_span for s in linked)
    # As Perfetto's importer reads it (tests/engine/perfetto_import.py): no stat, every flow from a slice
    # to a slice, and the merged async rows within the peak number of spans open at once.
    imported = import_trace(data)
    assert not imported.stats and imported.dangling_flows == 0, imported.stats
    assert len(imported.flows) == len(linked) and len(imported.slices) == len(decoded.slices)
    assert imported.rows[
        ("merged", next(iter(decoded.descriptors[t].parent_uuid for t in tracks)), "async")
    ] <= peak([(s.begin, s.end) for s in decoded.slices])


async def test_async_spans(server: DevServer, lake: Lake) -> None:
    p = lake.processes[0]
    progress: list[Progress] = []
    spec = TraceSpec(p.process_id, p.begin_ns, p.end_ns, SpanTypes.ASYNC)
    decoded = decode(await _trace(server, spec, progress))
    assert decoded.problems == []
    # Each span with an event in the range is one slice (cut at the range edge when half outside).
    assert len(decoded.slices) == _async_span_ids(lake, p, p.begin_ns, p.end_ns)
    assert progress[-1].phase == "done" and progress[-1].percent == 100.0
    assert progress[-1].spans == len(decoded.slices)


async def test_both_and_progress(server: DevServer, lake: Lake) -> None:
    p = lake.processes[0]
    progress: list[Progress] = []
    data = await _trace(server, TraceSpec(p.process_id, None, None, SpanTypes.BOTH), progress)
    decoded = decode(data)
    assert decoded.problems == []
    phases = [x.phase for x in progress]
    assert phases[0] == "start" and phases[-1] == "done"
    assert phases.index("thread_spans") < phases.index("async_spans") < phases.index("finishing")
    assert [x.threads_done for x in progress] == sorted(x.threads_done for x in progress)
    assert progress[-1].threads_done == progress[-1].threads_total == p.thread_count
    assert progress[-1].bytes == len(data)
    percents = [x.percent for x in progress]
    assert percents == sorted(percents)


async def test_header_comes_before_span_queries(server: DevServer, lake: Lake) -> None:
    p = lake.processes[0]
    async with _source(server) as source:
        before = server.streams_opened
        gen = generate_trace(source, TraceSpec(p.process_id, None, None, SpanTypes.BOTH))
        first = await anext(gen)
        # Only the process and thread-list query has run (one, for the whole life): no span stream yet.
        assert server.streams_opened - before == 1
        assert first[:1] == b"\x0a"
        await gen.aclose()  # type: ignore[attr-defined]


async def test_empty_range(server: DevServer, lake: Lake) -> None:
    p = lake.processes[0]
    spec = TraceSpec(p.process_id, p.end_ns + 10**12, p.end_ns + 2 * 10**12, SpanTypes.BOTH)
    with pytest.raises(EmptyRange):
        await _trace(server, spec)


async def test_limits(server: DevServer, lake: Lake) -> None:
    p = lake.processes[0]
    with pytest.raises(TraceTooLarge):
        await _trace(server, TraceSpec(p.process_id, None, None, SpanTypes.THREAD, max_spans=1000))
    with pytest.raises(TraceTooLarge):
        await _trace(server, TraceSpec(p.process_id, None, None, SpanTypes.THREAD, max_bytes=10_000))
    with pytest.raises(RangeTooLong):
        await _trace(server, TraceSpec(p.process_id, None, None, SpanTypes.THREAD, max_range_ns=1000))
    with pytest.raises(InvalidRequest):
        await _trace(server, TraceSpec(p.process_id, p.end_ns, p.begin_ns, SpanTypes.THREAD))
    with pytest.raises(ProcessNotFound):
        await _trace(server, TraceSpec("00000000-0000-4000-8000-000000000000", None, None, SpanTypes.BOTH))


async def test_should_stop(server: DevServer, lake: Lake) -> None:
    p = lake.processes[0]
    calls = 0

    async def stop() -> bool:
        nonlocal calls
        calls += 1
        return True

    async with _source(server) as source:
        with pytest.raises(Cancelled):
            async for _ in generate_trace(
                source, TraceSpec(p.process_id, None, None, SpanTypes.BOTH), should_stop=stop
            ):
                pass
    assert calls == 1


async def test_the_encoder_thread_works_ahead_of_the_loop(
    server: DevServer, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the loop handles a batch's result, the next engine call is already on the encoder
    pool: the pool does not wait for the loop between batches. Calls run there one at a time, in
    order (a small call may run on the loop when nothing is queued: which ones depends on timing),
    and the trace is the same as one generated without the look-ahead."""
    # The small process's batches (~2,000 rows) are under the inline threshold: put them on the pool.
    monkeypatch.setattr(pipeline, "_INLINE_ROWS", 1024)
    p = lake.processes[0]
    spec = TraceSpec(p.process_id, None, None, SpanTypes.THREAD)
    reference = await _trace(server, spec)
    monkeypatch.setattr("worker.pipeline._GROUP_ROWS", 0)  # one engine call per batch, as large threads
    threads: list[str] = []
    second_call = threading.Event()
    running, most, count_lock = [0], [0], threading.Lock()

    def spy(name: str) -> None:
        original = getattr(TraceEncoder, name)

        def call(self: TraceEncoder, *args: object) -> list[bytes]:
            threads.append(threading.current_thread().name)
            if len(threads) == 2:
                second_call.set()
            with count_lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            try:
                result: list[bytes] = original(self, *args)
            finally:
                with count_lock:
                    running[0] -= 1
            return result

        monkeypatch.setattr(TraceEncoder, name, call)

    spy("add_thread_spans")
    spy("end_thread")
    handled: list[bool] = []

    def progress(report: Progress) -> None:
        if report.phase == "thread_spans":
            handled.append(True)
            if len(handled) == 2:  # the first batch's result: the second call must have started
                assert second_call.wait(timeout=60)

    async with _source(server) as source:
        chunks = [c async for c in generate_trace(source, spec, on_progress=progress)]
    assert len(handled) > 2
    encoders = set(threads) - {"MainThread"}
    assert encoders and all(name.startswith("encoder") for name in encoders), set(threads)
    assert most[0] == 1  # never two calls on the encoder at once
    assert b"".join(chunks) == reference


@pytest.mark.parametrize("group_rows", [0, 2500, None])
async def test_small_threads_go_to_the_engine_together_and_large_ones_stream(
    server: DevServer, lake: Lake, monkeypatch: pytest.MonkeyPatch, group_rows: int | None
) -> None:
    """Whole threads are held up to _GROUP_ROWS rows in all and taken by one ``add_threads`` call;
    a thread that outgrows it streams batch by batch. The bytes are the same either way."""
    p = lake.processes[0]
    spec = TraceSpec(p.process_id, None, None, SpanTypes.BOTH, chunk_size=4096)
    reference = await _trace(server, spec)  # (the default: this process's threads in one group)
    calls: Counter[str] = Counter()
    grouped: list[int] = []

    def spy(name: str) -> None:
        original = getattr(TraceEncoder, name)

        def call(self: TraceEncoder, *args: object) -> list[bytes]:
            calls[name] += 1
            if name == "add_threads":
                grouped.append(len(args[0]))  # type: ignore[arg-type]
            result: list[bytes] = original(self, *args)
            return result

        monkeypatch.setattr(TraceEncoder, name, call)

    for name in ("add_thread_spans", "end_thread", "add_threads"):
        spy(name)
    if group_rows is not None:
        monkeypatch.setattr("worker.pipeline._GROUP_ROWS", group_rows)
    assert await _trace(server, spec) == reference
    rows = [s.thread_span_count for s in p.thread_streams]
    if group_rows is None:  # every thread of the process in one call
        assert grouped == [len(rows)] and calls["add_thread_spans"] == 0
    elif group_rows == 0:  # none held: thread after thread
        assert grouped == [] and calls["end_thread"] >= len(rows)
    else:  # small ones held together, the others streamed
        assert sum(grouped) == sum(1 for r in rows if r < group_rows) and calls["add_thread_spans"] > 0


async def test_count_matches_name_column(server: DevServer, lake: Lake) -> None:
    """Names survive dictionary and plain transport alike (micromegas mode hydrates without the header)."""
    p = lake.processes[0]
    decoded = decode(await _trace(server, TraceSpec(p.process_id, None, None, SpanTypes.THREAD)))
    names = Counter(s.name for s in decoded.slices)
    expected: Counter[str] = Counter()
    for stream in p.thread_streams:
        for batch in expected_thread_spans(lake, stream.stream_id):
            counts = pc.value_counts(batch.column("name").cast(pa.utf8())).to_pylist()
            expected.update({c["values"]: c["counts"] for c in counts})
    assert names == expected


async def test_finish_holding_many_log_entries_is_not_run_on_the_event_loop(
    server: DevServer, lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``finish`` encodes the log entries and measures the encoder still holds for canonical order
    (up to a canonical batch, 65,535 rows of any size): with more of them than ``_INLINE_ROWS`` it
    must run on the encoder pool, as any other engine call that large, not on the event loop."""
    p = lake.processes[0]
    assert p.log_entry_count > 10
    monkeypatch.setattr(pipeline, "_INLINE_ROWS", 10)  # the process's log entries are "many"
    where: list[str] = []
    original = TraceEncoder.finish

    def finish(self: TraceEncoder) -> list[bytes]:
        where.append(threading.current_thread().name)
        result: list[bytes] = original(self)
        return result

    monkeypatch.setattr(TraceEncoder, "finish", finish)
    spec = TraceSpec(p.process_id, None, None, SpanTypes.THREAD, logs=True)
    await _trace(server, spec)
    assert len(where) == 1 and where[0] != threading.main_thread().name, where


async def test_a_group_of_many_small_threads_is_not_encoded_on_the_loop() -> None:
    """16,384 rows in 4,096 threads (0.7 MiB) took ~0.8 s of ``add_threads`` inline: the engine pays
    per thread, so each thread counts toward the inline bound; the small process's group (5 threads,
    11k rows) stays inline."""
    asked: list[int] = []

    class Run:
        threads_done = 0
        encoder = SimpleNamespace(add_threads=None)

        async def push(self, method: object, *args: object, rows: int) -> list[list[bytes]]:
            asked.append(rows)
            return []

    batch = pa.record_batch({"x": pa.array([1, 2, 3, 4])})
    await pipeline._thread_group(Run(), [(f"s{i}", [batch]) for i in range(4096)], 16_384)  # type: ignore[arg-type]
    await pipeline._thread_group(Run(), [(f"s{i}", [batch]) for i in range(5)], 11_000)  # type: ignore[arg-type]
    assert asked[0] > pipeline._INLINE_ROWS >= asked[1]
