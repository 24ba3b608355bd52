"""Flight SQL calls per trace: statement tickets skip GetFlightInfo, counted against the server's own
count of DoGet streams, with the same spans; a read stalled mid-stream is ended by cancel.

The devserver answers GetFlightInfo as Micromegas does (one endpoint, the SQL as ticket), so
``direct_tickets=auto`` switches to DoGet-only after the first query.
"""

from __future__ import annotations

import asyncio
import time

import pyarrow as pa
import pyarrow.flight as fl
import pytest

from tests.support.chaos import ChaosProxy
from tests.support.devserver import start_devserver
from tests.support.source import open_source, whole_trace
from worker.devserver import Lake, LakeConfig
from worker.devserver import flightsql_messages as msg
from worker.errors import SourceBroken
from worker.source import FlightSqlConfig, FlightSqlSource, queries
from worker.source.tickets import is_statement_ticket, statement_partition


@pytest.fixture(scope="module")
def lake() -> Lake:
    return Lake(LakeConfig(seed=11, processes=("small",)))


@pytest.mark.parametrize("mode", ["micromegas", "friendly"])
async def test_direct_tickets_halve_the_calls_with_the_same_trace(lake: Lake, mode: str) -> None:
    p = lake.processes[0]
    queries_per_trace = 3  # process and threads, process_spans (a small process), async events
    with start_devserver(lake, mode=mode) as server:  # type: ignore[arg-type]
        async with open_source(server.url, direct_tickets="off") as off:
            before = server.streams_opened
            expected = await whole_trace(off, p.process_id)
            assert server.streams_opened - before == queries_per_trace
            assert dict(off.calls)["GetFlightInfo"] == queries_per_trace
            assert dict(off.calls)["DoGet"] == queries_per_trace
        async with open_source(server.url) as auto:
            await whole_trace(auto, p.process_id)  # learns from the first answer
            first = dict(auto.calls)
            before = server.streams_opened
            got = await whole_trace(auto, p.process_id)
            assert server.streams_opened - before == queries_per_trace
            calls = dict(auto.calls)
    assert got == expected
    assert first["GetFlightInfo"] == 1
    assert calls["GetFlightInfo"] == 1, "GetFlightInfo sent again after the server's ticket was learnt"
    assert calls["DoGet"] - first["DoGet"] == queries_per_trace


async def test_on_never_sends_get_flight_info(lake: Lake) -> None:
    p = lake.processes[0]
    with start_devserver(lake) as server:
        async with open_source(server.url, direct_tickets="on") as source:
            process = await source.process(p.process_id)
    assert process.process_id == p.process_id
    assert dict(source.calls).get("GetFlightInfo", 0) == 0
    assert dict(source.calls)["DoGet"] == 1


def _info(ticket: bytes, locations: list[str] | None = None, endpoints: int = 1) -> bytes:
    endpoint = fl.FlightEndpoint(ticket, locations or [])
    descriptor = fl.FlightDescriptor.for_command(b"x")
    data: bytes = fl.FlightInfo(pa.schema([]), descriptor, [endpoint] * endpoints, -1, -1).serialize()
    return data


def test_statement_ticket_recognised_only_when_exact() -> None:
    sql = queries.process_sql("34d7c06d-3163-4111-863e-c5fc09d22d51")
    ours = statement_partition(sql)
    # What a Micromegas-like server answers (the devserver's generated protobuf messages), serialized
    # by Arrow's own Flight classes; and our partition is what Arrow reads back as that answer.
    ticket = msg.pack(msg.TicketStatementQuery(statement_handle=sql.encode()))
    assert is_statement_ticket(ours, sql)
    assert is_statement_ticket(_info(ticket), sql)
    assert not is_statement_ticket(_info(ticket), sql + " ")  # another statement
    assert not is_statement_ticket(_info(b"opaque-handle-42"), sql)  # a server-side handle
    assert not is_statement_ticket(_info(ticket, ["grpc://elsewhere:1"]), sql)  # another host
    assert not is_statement_ticket(_info(ticket, endpoints=2), sql)  # several partitions
    assert not is_statement_ticket(b"\x1a\xff", sql)  # not a message


@pytest.mark.parametrize("tickets", ["off", "auto"])
async def test_stalled_read_is_cancelled_and_the_source_closes(lake: Lake, tickets: str) -> None:
    """The batch timeout ends a read stalled mid-stream, and closing the source does not wait for
    the server. Over ADBC (``off``) the connection's cancel ends it (a statement's cancel does not end
    a partition's stream); with direct tickets learnt (``auto``) the second query is a pyarrow.flight
    DoGet still waiting for its schema, left to its daemon thread."""
    p = lake.processes[0]
    with start_devserver(lake) as server, ChaosProxy(("127.0.0.1", server.port)) as proxy:
        url = f"grpc://127.0.0.1:{proxy.port}"
        source = FlightSqlSource(FlightSqlConfig(url, batch_timeout_s=0.5, direct_tickets=tickets))  # type: ignore[arg-type]
        try:
            await source.process(p.process_id)  # connected, tickets learnt
            proxy.set_mode("stall")
            with pytest.raises(SourceBroken):
                await source.process(p.process_id)
        finally:
            started = time.monotonic()
            await asyncio.wait_for(source.aclose(), timeout=20)
            closed_in = time.monotonic() - started
        assert proxy.mode == "stall"  # still stalled: nothing but the cancel ended the read
    assert closed_in < 10


@pytest.mark.timeout(60, method="thread")  # the failure this guards against is a close that never returns
async def test_closing_on_a_stalled_service_is_bounded_and_keeps_the_loop_free(lake: Lake) -> None:
    """The driver's close sends CloseSession and waits for the answer with no deadline: with the
    service stalled, ``aclose`` still returns within about the batch timeout, and the event loop
    keeps running while it waits (the idle connections close in threads of their own)."""
    p = lake.processes[0]
    with start_devserver(lake) as server, ChaosProxy(("127.0.0.1", server.port)) as proxy:
        source = FlightSqlSource(FlightSqlConfig(f"grpc://127.0.0.1:{proxy.port}", batch_timeout_s=0.5))
        await whole_trace(source, p.process_id)  # every connection it opened is idle now
        assert source.calls["connect"] >= 1
        proxy.set_mode("stall")
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        await source.aclose()
        closed_in = time.monotonic() - started
        ticker.cancel()
        assert proxy.mode == "stall"
    assert closed_in < 5
    assert ticks >= 10  # the loop ran during the ~0.5 s wait for the closes
