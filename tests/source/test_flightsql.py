"""FlightSqlSource against the development Flight SQL server over loopback, in both modes.

Every span the server holds lands exactly once, in order; ranges cut as documented; strings plain
or dictionary-encoded with 16- or 32-bit keys; optional columns missing; many threads; auth; TLS.
Failure modes (server down, killed mid-stream, injection) are in test_flightsql_failures.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from tests.support.devserver import (
    expected_async_events,
    expected_thread_spans,
    self_signed_cert,
    start_devserver,
)
from tests.support.source import open_source
from worker.devserver import DevServer, Lake, LakeConfig, LakeProcess, SchemaOptions
from worker.errors import ProcessNotFound, SourceUnavailable, Unauthenticated
from worker.model import ThreadInfo, TimeRange
from worker.source import FlightSqlSource

MODES = ["micromegas", "friendly"]


@pytest.fixture(scope="module")
def lake() -> Lake:
    return Lake(LakeConfig(seed=7, processes=("small", "wide")))


@pytest.fixture(scope="module", params=MODES)
def server(request: pytest.FixtureRequest, lake: Lake) -> Iterator[DevServer]:
    with start_devserver(lake, mode=request.param) as srv:
        yield srv


def _full_range(p: LakeProcess) -> TimeRange:
    return TimeRange(p.begin_ns, p.end_ns)


async def _spans_by_thread(
    source: FlightSqlSource, threads: list[ThreadInfo], time_range: TimeRange
) -> dict[str, pa.Table]:
    """Each thread's spans, checking order of threads, end markers and begin order on the way."""
    batches: dict[str, list[pa.RecordBatch]] = {}
    order: list[str] = []
    ended: list[str] = []
    async for thread, batch in source.thread_spans(threads, time_range):
        if batch is None:
            ended.append(thread.stream_id)
            continue
        assert not ended or ended[-1] != thread.stream_id, "batch after the end marker"
        if not order or order[-1] != thread.stream_id:
            order.append(thread.stream_id)
        batches.setdefault(thread.stream_id, []).append(batch)
    assert ended == [t.stream_id for t in threads]
    assert order == [t.stream_id for t in threads if t.stream_id in batches]
    tables = {}
    for sid, parts in batches.items():
        table = pa.Table.from_batches(parts)
        begins = table.column("begin").cast(pa.int64()).to_numpy()
        assert (begins[1:] >= begins[:-1]).all(), "spans not in begin order"
        tables[sid] = table
    return tables


async def test_process(server: DevServer, lake: Lake) -> None:
    p = lake.process_of_kind("small")
    async with open_source(server.url) as source:
        info = await source.process(p.process_id.upper())
    assert info.process_id == p.process_id
    assert info.exe == p.exe
    assert info.username == p.username and info.computer == p.computer
    assert info.first_time_ns is not None and info.last_time_ns is not None
    assert info.first_time_ns <= p.begin_ns + 1_000_000 and info.last_time_ns >= p.end_ns


async def test_unknown_process(server: DevServer) -> None:
    async with open_source(server.url) as source:
        with pytest.raises(ProcessNotFound):
            await source.process("00000000-0000-4000-8000-000000000000")


async def test_threads(server: DevServer, lake: Lake) -> None:
    p = lake.process_of_kind("small")
    async with open_source(server.url) as source:
        threads = await source.threads(p.process_id, _full_range(p))
    expected = sorted(p.thread_streams, key=lambda s: s.stream_id)
    assert [t.stream_id for t in threads] == [s.stream_id for s in expected]
    assert [t.thread_name for t in threads] == [s.thread_name or "" for s in expected]
    assert [t.thread_id for t in threads] == [s.thread_id or "" for s in expected]
    assert any(t.thread_id == "" for t in threads), "the lake has a thread without id"


@pytest.mark.parametrize("preserve", [True, False])
async def test_every_span_exactly_once(server: DevServer, lake: Lake, preserve: bool) -> None:
    p = lake.process_of_kind("small")
    async with open_source(server.url, preserve_dictionary=preserve, concurrency=2) as source:
        threads = await source.threads(p.process_id, _full_range(p))
        tables = await _spans_by_thread(source, threads, _full_range(p))
    for stream in p.thread_streams:
        table = tables[stream.stream_id]
        assert table.num_rows == stream.thread_span_count
        expected = pa.Table.from_batches(list(expected_thread_spans(lake, stream.stream_id)))
        for column in ("begin", "end", "depth", "line"):
            got_ints = table.column(column).combine_chunks().cast(pa.int64())
            assert got_ints.equals(expected.column(column).combine_chunks().cast(pa.int64())), column
        for column in ("name", "target", "filename"):
            got = table.column(column).cast(pa.utf8()).to_pylist()
            assert got == expected.column(column).cast(pa.utf8()).to_pylist(), column
        name_type = table.schema.field("name").type
        if preserve and server.mode == "micromegas":
            assert pa.types.is_dictionary(name_type)
        if not preserve and server.mode == "micromegas":
            assert not pa.types.is_dictionary(name_type)
        assert pc.min(pc.utf8_length(table.column("name").cast(pa.utf8()))).as_py() > 0


async def test_range_cuts_by_overlap(server: DevServer, lake: Lake) -> None:
    p = lake.process_of_kind("small")
    full = _full_range(p)
    third = (full.end_ns - full.begin_ns) // 3
    sub = TimeRange(full.begin_ns + third, full.begin_ns + 2 * third)
    async with open_source(server.url) as source:
        threads = await source.threads(p.process_id, full)
        everything = await _spans_by_thread(source, threads, full)
        cut = await _spans_by_thread(source, threads, sub)
    total = 0
    for sid, table in everything.items():
        begin = table.column("begin").cast(pa.int64())
        end = table.column("end").cast(pa.int64())
        overlap = pc.and_(pc.less_equal(begin, sub.end_ns), pc.greater_equal(end, sub.begin_ns))
        expected = table.filter(overlap)
        got = cut.get(sid)
        assert (got.num_rows if got is not None else 0) == expected.num_rows
        if got is not None:
            assert got.column("begin").equals(expected.column("begin"))
            total += got.num_rows
    assert 0 < total < sum(t.num_rows for t in everything.values())


async def test_async_events_in_range(server: DevServer, lake: Lake) -> None:
    p = lake.process_of_kind("small")
    full = _full_range(p)
    half = TimeRange(full.begin_ns, full.begin_ns + (full.end_ns - full.begin_ns) // 2)
    async with open_source(server.url) as source:
        for time_range in (full, half):
            got = pa.Table.from_batches([b async for b in source.async_events(p.process_id, time_range)])
            expected = pa.Table.from_batches(
                list(expected_async_events(lake, p.process_id, time_range.begin_ns, time_range.end_ns))
            )
            assert got.num_rows == expected.num_rows > 0
            times = got.column("time").combine_chunks().cast(pa.int64())
            assert pc.min(times).as_py() >= time_range.begin_ns
            assert pc.max(times).as_py() <= time_range.end_ns
            assert (times.to_numpy()[1:] >= times.to_numpy()[:-1]).all()
            # Same events (span id, type, time), whatever the order of equal times.
            keys = ["span_id", "event_type", "time"]

            def rows(t: pa.Table, keys: list[str] = keys) -> pa.Table:
                cols = {k: t.column(k).combine_chunks() for k in keys}
                cols["event_type"] = cols["event_type"].cast(pa.utf8())
                cols["time"] = cols["time"].cast(pa.int64())
                return pa.table(cols).sort_by([(k, "ascending") for k in keys])

            assert rows(got).equals(rows(expected))
            assert "hash" not in got.schema.names


async def test_many_threads(server: DevServer, lake: Lake) -> None:
    p = lake.process_of_kind("wide")
    assert p.thread_count == 64
    async with open_source(server.url, concurrency=4) as source:
        threads = await source.threads(p.process_id, _full_range(p))
        tables = await _spans_by_thread(source, threads, _full_range(p))
    assert len(threads) == 64
    assert sum(t.num_rows for t in tables.values()) == p.thread_span_count


async def test_stopping_early_releases_everything(server: DevServer, lake: Lake) -> None:
    p = lake.process_of_kind("wide")
    async with open_source(server.url, concurrency=4) as source:
        threads = await source.threads(p.process_id, _full_range(p))
        spans = source.thread_spans(threads, _full_range(p))
        first = await anext(spans)
        assert first[1] is not None
        await spans.aclose()  # type: ignore[attr-defined]
        # The source still works afterwards (connections went back to the pool).
        again = await source.threads(p.process_id, _full_range(p))
    assert again == threads


async def test_ping(server: DevServer) -> None:
    async with open_source(server.url) as source:
        await source.ping()


async def test_process_list(server: DevServer, lake: Lake) -> None:
    async with open_source(server.url) as source:
        listed = await source.processes(limit=10)
    assert {p.process_id for p in listed} == {p.process_id for p in lake.processes}
    assert all(p.exe for p in listed)


@pytest.mark.parametrize("keys", ["int16", "int32", "plain"])
async def test_dictionary_key_widths(lake: Lake, keys: str) -> None:
    p = lake.process_of_kind("small")
    options = SchemaOptions(dictionary_keys=keys, async_hash=False)  # type: ignore[arg-type]
    with start_devserver(lake, mode="micromegas", schema_options=options) as srv:
        async with open_source(srv.url, preserve_dictionary=True) as source:
            threads = await source.threads(p.process_id, _full_range(p))
            tables = await _spans_by_thread(source, threads, _full_range(p))
            events = pa.Table.from_batches(
                [b async for b in source.async_events(p.process_id, _full_range(p))]
            )
    name_type = next(iter(tables.values())).schema.field("name").type
    if keys == "plain":
        assert not pa.types.is_dictionary(name_type)
    else:
        assert pa.types.is_dictionary(name_type)
        assert name_type.index_type == (pa.int16() if keys == "int16" else pa.int32())
    assert sum(t.num_rows for t in tables.values()) == p.thread_span_count
    assert events.num_rows > 0


# "off": every query over ADBC; "on": every query one DoGet over pyarrow.flight.
TICKETS = ["off", "on"]


@pytest.mark.parametrize("tickets", TICKETS)
async def test_auth(lake: Lake, tickets: str) -> None:
    p = lake.process_of_kind("small")
    with start_devserver(lake, token="s3cret") as srv:
        async with open_source(srv.url, token="s3cret", direct_tickets=tickets) as source:
            assert (await source.process(p.process_id)).exe == p.exe
            assert (await source.process(p.process_id)).exe == p.exe  # on a connection used before
        for token in (None, "wrong"):
            async with open_source(srv.url, token=token, direct_tickets=tickets) as source:
                with pytest.raises(Unauthenticated):
                    await source.process(p.process_id)


@pytest.mark.parametrize("tickets", TICKETS)
async def test_tls(lake: Lake, tickets: str) -> None:
    p = lake.process_of_kind("small")
    cert, key = self_signed_cert()
    with start_devserver(lake, tls=(cert, key)) as srv:
        assert srv.url.startswith("grpc+tls://")
        async with open_source(srv.url, tls_ca_pem=cert, direct_tickets=tickets) as source:
            assert (await source.process(p.process_id)).exe == p.exe
        async with open_source(srv.url, tls_skip_verify=True, direct_tickets=tickets) as source:
            assert (await source.process(p.process_id)).exe == p.exe
        # A system bundle's shape: UTF-8 comments between the blocks (Fedora's and RHEL's name
        # "NetLock Arany (Class Gold) F\u0151tan\u00fas\u00edtv\u00e1ny"), other CAs, CRLF.
        other, _ = self_signed_cert("other")
        bundle = b"# NetLock Arany (Class Gold) F\xc5\x91tan\xc3\xbas\xc3\xadtv\xc3\xa1ny\n" + other + cert
        bundle = bundle.replace(b"\n", b"\r\n")
        async with open_source(srv.url, tls_ca_pem=bundle, direct_tickets=tickets) as source:
            assert (await source.process(p.process_id)).exe == p.exe
        # System roots do not know this certificate.
        async with open_source(srv.url, direct_tickets=tickets) as source:
            with pytest.raises(SourceUnavailable):
                await source.process(p.process_id)
